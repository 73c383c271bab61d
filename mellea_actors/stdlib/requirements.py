"""Requirement helpers (Mellea's ``mellea.stdlib.requirements``): ``req``, ``check``,
``simple_validate``, ``reqify``.

The very objects of :mod:`mellea_actors.core.requirement`, re-exported (not copies), with
Mellea's semantics:

* ``req(description, validation_fn=None, ...)`` is ``Requirement(...)``; the description is
  rendered into ``Instruction`` prompts and validated (by ``validation_fn``, else by an LLM judge).
* ``check(...)`` is ``Requirement(..., check_only=True)``: validated, never shown to the model.
* ``simple_validate(fn, reason=None)`` turns ``fn(text) -> bool | (bool, reason)`` into a
  ``validation_fn`` over the newest model output of the context: a bool result carries
  ``reason``, a ``(bool, str)`` tuple its own reason; no computed model output in the context is
  a failure (``fn`` is not called); a return value that is none of these (nor a
  ``ValidationResult``) raises :class:`~mellea_actors.errors.InvalidInputError` (a
  ``ValueError``, as in Mellea).
* ``reqify(r)``: a ``str`` becomes ``Requirement(r)``, a ``Requirement`` is returned unchanged,
  anything else raises ``InvalidInputError`` (Mellea raises a bare ``Exception``).

Example::

    from mellea_actors.stdlib.requirements import check, req, simple_validate

    one_word = simple_validate(lambda x: len(x.split()) == 1, reason="more than one word")
    m.instruct(
        "Is the sky blue? Answer yes or no.",
        requirements=[
            req("Answer with one word", validation_fn=one_word),
            check("No trailing period", simple_validate(lambda x: not x.rstrip().endswith("."))),
        ],
    )

Only the four helpers and the names Mellea's module also offers from the core
(``Requirement``, ``ValidationResult``, ``default_output_to_bool``) are here; Mellea's
specialised requirements (Python execution, markdown, RAG, tools, aLoRA) are not part of
mellea_actors.
"""

from __future__ import annotations

from mellea_actors.core.requirement import (
    Requirement,
    ValidationResult,
    check,
    default_output_to_bool,
    req,
    reqify,
    simple_validate,
)

__all__ = [
    "Requirement",
    "ValidationResult",
    "check",
    "default_output_to_bool",
    "req",
    "reqify",
    "simple_validate",
]
