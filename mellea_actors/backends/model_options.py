"""`ModelOption` keys and their resolution into one Ollama ``/api/chat`` request.

:func:`resolve_options` merges option layers (backend defaults, session defaults, per-call),
maps Mellea's ``@@@…@@@`` sentinels to Ollama names, validates everything with pydantic
(``ollama.Options`` with unknown names forbidden, strict types) and returns a frozen
:class:`ResolvedOptions`. Every problem is an ``InvalidInputError`` naming the option and the
value, raised before any request is sent.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import ollama
import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from mellea_actors.errors import InvalidInputError

__all__ = [
    "DEFAULT_STREAM_TIMEOUT",
    "OLLAMA_OPTION_NAMES",
    "SENTINEL_TO_KEY",
    "ModelOption",
    "ResolvedOptions",
    "resolve_options",
]

_log = logging.getLogger(__name__)

DEFAULT_STREAM_TIMEOUT = 120.0
"""Seconds without a chunk before a stream fails, unless ``STREAM_TIMEOUT`` says otherwise."""


class ModelOption:
    """Backend-agnostic model option keys (same string values as Mellea 0.7.0).

    Use them as keys of a ``model_options`` dict; raw Ollama option names (``num_predict``,
    ``top_k``, ``repeat_penalty`` …, see ``ollama.Options``) may be mixed in and pass through.
    Per-call options override session defaults. How each key reaches Ollama
    (:data:`SENTINEL_TO_KEY`)::

        key                          value type                       Ollama request
        ---------------------------  -------------------------------  -----------------------------
        MAX_NEW_TOKENS               int                              options.num_predict
        SEED                         int                              options.seed
        CONTEXT_WINDOW               int                              options.num_ctx
        STOP_SEQUENCES               list[str]                        options.stop
        TEMPERATURE ("temperature")  float                            options.temperature
        STREAM                       bool (default False)             stream
        STREAM_TIMEOUT               float > 0 or None (default 120)  client-side chunk timeout
        SYSTEM_PROMPT                str or None                      a leading system message
                                                                      (none when None or "")
        THINKING                     bool or "low"/"medium"/"high"    think
        TOOLS, TOOL_CHOICE           must be empty                    (tools are not supported)
        LOGITS, RAW_LOGITS           must be falsy                    (not available from Ollama)

    Raw aliases accepted as in Mellea's Ollama backend: ``system`` (= SYSTEM_PROMPT),
    ``think`` (= THINKING), ``stream`` (= STREAM), ``tools`` (= TOOLS).
    """

    TOOLS = "@@@tools@@@"
    """Tools to expose for tool calling (unsupported here: must be empty)."""
    TOOL_CHOICE = "tool_choice"
    """Which tool the model should use (unsupported here: must be empty or "none")."""
    MAX_NEW_TOKENS = "@@@max_new_tokens@@@"
    """Maximum number of tokens to generate (Ollama ``num_predict``)."""
    SYSTEM_PROMPT = "@@@system_prompt@@@"
    """The system prompt; ``None`` or ``""`` means no system message."""
    TEMPERATURE = "temperature"
    """Sampling temperature."""
    CONTEXT_WINDOW = "@@@context_window@@@"
    """Context window size in tokens (Ollama ``num_ctx``)."""
    THINKING = "@@@thinking@@@"
    """Reasoning mode: ``True``/``False`` or ``"low"``/``"medium"``/``"high"`` (``think``)."""
    SEED = "@@@seed@@@"
    """Random seed for reproducible generation."""
    STREAM = "@@@stream@@@"
    """Stream the response chunk by chunk."""
    STREAM_TIMEOUT = "@@@stream_timeout@@@"
    """Seconds without a chunk (first one included) before the stream fails; ``None`` disables.
    Defaults to 120."""
    STOP_SEQUENCES = "@@@stop_sequences@@@"
    """A ``list[str]``; generation stops when the model emits one of them (Ollama ``stop``)."""
    LOGITS = "@@@logits@@@"
    """Request processed logits (not available from Ollama)."""
    RAW_LOGITS = "@@@raw_logits@@@"
    """Request raw logits (not available from Ollama)."""

    @staticmethod
    def replace_keys(options: Mapping[str, Any], from_to: Mapping[str, str]) -> dict[str, Any]:
        """A copy of ``options`` with keys renamed by ``from_to``.

        A ``None`` value counts as absent; when the destination key already has a value, that
        value is kept (and the conflict is logged). Source keys never survive.
        """
        out = dict(options)
        for old in list(out):
            new = from_to.get(old)
            if not new or new == old:
                continue
            if out.get(new) is not None:
                _log.warning(
                    "model option %r = %r ignored: %r is already set to %r",
                    old,
                    out[old],
                    new,
                    out[new],
                )
            else:
                out[new] = out[old]
            del out[old]
        return out

    @staticmethod
    def remove_special_keys(model_options: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``model_options`` without the ``@@@…@@@`` sentinel keys."""
        return {k: v for k, v in model_options.items() if not k.startswith("@@@")}

    @staticmethod
    def merge_model_options(
        persistent_opts: Mapping[str, Any], overwrite_opts: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """``persistent_opts`` updated with ``overwrite_opts`` (which win on conflicts)."""
        merged = dict(persistent_opts)
        if overwrite_opts is not None:
            merged.update(overwrite_opts)
        return merged


_SENTINEL_NAMES: dict[str, str] = {
    value: name
    for name, value in vars(ModelOption).items()
    if name.isupper() and isinstance(value, str)
}

SENTINEL_TO_KEY: Mapping[str, str] = {
    ModelOption.MAX_NEW_TOKENS: "num_predict",
    ModelOption.SEED: "seed",
    ModelOption.CONTEXT_WINDOW: "num_ctx",
    ModelOption.STOP_SEQUENCES: "stop",
    ModelOption.TEMPERATURE: "temperature",
    ModelOption.STREAM: "stream",
    ModelOption.STREAM_TIMEOUT: "stream_timeout",
    ModelOption.SYSTEM_PROMPT: "system_prompt",
    ModelOption.THINKING: "think",
    ModelOption.TOOLS: "tools",
    ModelOption.TOOL_CHOICE: "tool_choice",
    ModelOption.LOGITS: "logits",
    ModelOption.RAW_LOGITS: "raw_logits",
}
"""Every ``ModelOption`` key → its name in the request (an Ollama option or a
:class:`ResolvedOptions` field); ``tools``/``tool_choice``/``logits``/``raw_logits`` are only
checked to be empty."""

_RAW_ALIASES: Mapping[str, str] = {
    "system": "system_prompt",
    "think": "think",
    "stream": "stream",
    "tools": "tools",
}

OLLAMA_OPTION_NAMES: frozenset[str] = frozenset(ollama.Options.model_fields)
"""The raw Ollama option names that pass through (the fields of ``ollama.Options``)."""


class _StrictOllamaOptions(ollama.Options):
    """``ollama.Options`` with unknown names forbidden and no type coercion (no bool → int)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ResolvedOptions(BaseModel):
    """Everything one generation request needs, validated.

    Attributes:
        stream: stream the response.
        stream_timeout: seconds without a chunk before the stream fails (``None``: never).
        system_prompt: the system message's content (``None``: no system message).
        think: Ollama's ``think`` parameter.
        ollama_options: the validated Ollama ``options`` (only the ones set).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream: StrictBool = False
    stream_timeout: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] | None = (
        DEFAULT_STREAM_TIMEOUT
    )
    system_prompt: StrictStr | None = None
    think: StrictBool | Literal["low", "medium", "high"] | None = None
    ollama_options: dict[str, Any] = Field(default_factory=dict)


def _label(key: str) -> str:
    name = _SENTINEL_NAMES.get(key)
    if name is not None and key.startswith("@@@"):
        return f"ModelOption.{name}"
    return repr(key)


def _unknown(key: str) -> InvalidInputError:
    if key.startswith("@@@"):
        inner = {k.strip("@").lower(): k for k in _SENTINEL_NAMES if k.startswith("@@@")}
        close = difflib.get_close_matches(key.strip("@").lower(), list(inner), n=2, cutoff=0.6)
        hint = " or ".join(f"ModelOption.{_SENTINEL_NAMES[inner[c]]}" for c in close)
        return InvalidInputError(
            f"unknown ModelOption sentinel {key!r}" + (f" (did you mean {hint}?)" if hint else "")
        )
    candidates = sorted(OLLAMA_OPTION_NAMES | set(_RAW_ALIASES) | {ModelOption.TOOL_CHOICE})
    close = difflib.get_close_matches(key, candidates, n=3)
    hint = " or ".join(repr(c) for c in close)
    return InvalidInputError(
        f"unknown model option {key!r}"
        + (
            f" (did you mean {hint}?)"
            if hint
            else " (use a ModelOption constant or an ollama.Options field name)"
        )
    )


def _canonical(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidInputError(f"model option names must be str, got {key!r}")
    if key in SENTINEL_TO_KEY:
        return SENTINEL_TO_KEY[key]
    if key in _RAW_ALIASES:
        return _RAW_ALIASES[key]
    if key in OLLAMA_OPTION_NAMES:
        return key
    raise _unknown(key)


def _wrap(
    err: pydantic.ValidationError, labels: Mapping[str, str], values: Mapping[str, Any]
) -> InvalidInputError:
    # field -> (alternatives from union members, other messages)
    by_field: dict[str, tuple[list[str], list[str]]] = {}
    for e in err.errors():
        loc = e["loc"]
        field = str(loc[0]) if loc else "?"
        alternatives, others = by_field.setdefault(field, ([], []))
        where = "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int))
        msg = f"item {where}: {e['msg']}" if where else e["msg"]
        target = alternatives if any(isinstance(p, str) for p in loc[1:]) else others
        if msg not in target:
            target.append(msg)
    parts = []
    for field, (alternatives, others) in by_field.items():
        msgs = others + ([" or ".join(alternatives)] if alternatives else [])
        label = _label(labels.get(field, field))
        parts.append(f"model option {label} = {values.get(field)!r}: " + "; ".join(msgs))
    return InvalidInputError("; ".join(parts))


def resolve_options(*layers: Mapping[str, Any] | None) -> ResolvedOptions:
    """Merge option layers (later ones win) and validate them into a :class:`ResolvedOptions`.

    A key set to ``None`` in a later layer unsets it (for ``STREAM_TIMEOUT`` it disables the
    timeout; for ``SYSTEM_PROMPT`` it removes the system message). Within one layer, a
    ``ModelOption`` key and its raw Ollama name with different values are an error.

    Raises:
        InvalidInputError: a layer is not a mapping; an unknown name (with close matches
            suggested) or sentinel; an ill-typed value (message: the option, the value and
            pydantic's reason); non-empty tools; logits requested.
    """
    merged: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise InvalidInputError(
                f"model_options must be a mapping, got {type(layer).__name__}: {layer!r}"
            )
        seen: dict[str, tuple[str, Any]] = {}
        for key, value in layer.items():
            canonical = _canonical(key)
            if canonical in seen:
                other_key, other_value = seen[canonical]
                if other_value is not value and other_value != value:
                    raise InvalidInputError(
                        f"model options {_label(other_key)} = {other_value!r} and "
                        f"{_label(key)} = {value!r} set the same option differently"
                    )
            seen[canonical] = (key, value)
        for canonical, (key, value) in seen.items():
            merged[canonical] = value
            labels[canonical] = key

    for name in ("tools", "tool_choice"):
        value = merged.get(name)
        if value is not None and value != "none" and (not hasattr(value, "__len__") or value):
            raise InvalidInputError(
                f"tools are not supported by this backend (model option "
                f"{_label(labels[name])} = {value!r})"
            )
    for name in ("logits", "raw_logits"):
        if merged.get(name):
            raise InvalidInputError(
                f"model option {_label(labels[name])} = {merged[name]!r}: logits are not "
                "available from Ollama"
            )

    raw = {k: v for k, v in merged.items() if k in OLLAMA_OPTION_NAMES}
    try:
        validated = _StrictOllamaOptions.model_validate(raw)
    except pydantic.ValidationError as e:
        raise _wrap(e, labels, raw) from e
    ollama_options = validated.model_dump(exclude_none=True)
    if "stop" in ollama_options:
        ollama_options["stop"] = list(ollama_options["stop"])

    control: dict[str, Any] = {"ollama_options": ollama_options}
    if merged.get("stream") is not None:
        control["stream"] = merged["stream"]
    if "stream_timeout" in merged:
        control["stream_timeout"] = merged["stream_timeout"]
    if "system_prompt" in merged:
        control["system_prompt"] = merged["system_prompt"] or None
    if "think" in merged:
        control["think"] = merged["think"]
    try:
        return ResolvedOptions.model_validate(control)
    except pydantic.ValidationError as e:
        raise _wrap(e, labels, merged) from e
