"""Sampling strategies: generate, validate every requirement, retry on failure.

:class:`RejectionSamplingStrategy` (the default of ``instruct``/``act`` when requirements are
given, with a budget of 2) generates a sample, awaits it, validates it against every requirement
(concurrently), and returns the first sample that passes all of them. When the budget is spent it
returns a failed :class:`SamplingResult` whose ``result`` is the first sample (as Mellea does).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pydantic

from mellea_actors.core.backend import Backend
from mellea_actors.core.context_chain import Context
from mellea_actors.core.model_output import ModelOutputThunk
from mellea_actors.core.requirement import Requirement, ValidationResult
from mellea_actors.errors import InvalidInputError

__all__ = ["RejectionSamplingStrategy", "SamplingResult", "SamplingStrategy"]

_log = logging.getLogger("mellea_actors")

S = TypeVar("S")


@dataclass
class SamplingResult(Generic[S]):
    """The outcome of a sampling strategy.

    ``result`` is the chosen sample (computed), ``success`` whether it met every requirement.
    ``sample_generations[i]`` was validated as ``sample_validations[i]`` (pairs of requirement
    and result, in the order of the requirements).
    """

    result_index: int
    success: bool
    sample_generations: list[ModelOutputThunk[S]] = field(default_factory=list)
    sample_validations: list[list[tuple[Requirement, ValidationResult]]] = field(
        default_factory=list
    )
    sample_actions: list[Any] = field(default_factory=list)
    sample_contexts: list[Context] = field(default_factory=list)

    @property
    def result(self) -> ModelOutputThunk[S]:
        return self.sample_generations[self.result_index]

    @property
    def result_ctx(self) -> Context:
        return self.sample_contexts[self.result_index]

    @property
    def value(self) -> str | None:
        return self.result.value


class SamplingStrategy:
    """Base class: ``await sample(...)`` returns a :class:`SamplingResult`."""

    async def sample(
        self,
        action: Any,
        context: Context,
        backend: Backend,
        requirements: list[Requirement],
        *,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
    ) -> SamplingResult[Any]:
        raise NotImplementedError


class RejectionSamplingStrategy(SamplingStrategy):
    """Generate up to ``loop_budget`` samples; keep the first that passes every requirement."""

    def __init__(self, *, loop_budget: int = 2, requirements: list[Requirement] | None = None):
        if not isinstance(loop_budget, int) or isinstance(loop_budget, bool) or loop_budget < 1:
            raise InvalidInputError(f"loop_budget must be an int >= 1, got {loop_budget!r}")
        self.loop_budget = loop_budget
        self.requirements = requirements

    async def sample(
        self,
        action: Any,
        context: Context,
        backend: Backend,
        requirements: list[Requirement],
        *,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
    ) -> SamplingResult[Any]:
        reqs = list(self.requirements if self.requirements is not None else requirements)
        result: SamplingResult[Any] = SamplingResult(result_index=0, success=False)
        for attempt in range(self.loop_budget):
            mot, sample_ctx = await backend.generate_from_context(
                action, context, format=format, model_options=model_options
            )
            await mot.avalue()
            verdicts = await asyncio.gather(
                *(r.validate(backend, sample_ctx, model_options=model_options) for r in reqs)
            )
            result.sample_generations.append(mot)
            result.sample_validations.append(list(zip(reqs, verdicts, strict=True)))
            result.sample_actions.append(action)
            result.sample_contexts.append(sample_ctx)
            if all(bool(v) for v in verdicts):
                result.result_index = attempt
                result.success = True
                return result
            failed = [
                r.description or type(r).__name__
                for r, v in zip(reqs, verdicts, strict=True)
                if not v
            ]
            _log.info("sample %d/%d failed requirements: %s", attempt + 1, self.loop_budget, failed)
        _log.warning(
            "requirements not met after %d attempts; returning the first sample", self.loop_budget
        )
        return result
