"""The verdict vocabulary of the fake validation checks used by the engine's unit tests.

``ValidationCheck`` (``mellea_actors.runtime.stream_contract``) leaves the verdict types to the
facade; these fakes use two tiny dataclasses instead of Mellea's results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    result: str  # "pass" | "fail" | "unknown"
    reason: str = ""


@dataclass(frozen=True)
class Final:
    passed: bool
    reason: str = ""


class VerdictVocabulary:
    """The verdict half of a ``ValidationCheck``, for fakes to inherit."""

    def is_fail(self, verdict: Any) -> bool:
        return isinstance(verdict, Verdict) and verdict.result == "fail"

    def final_passed(self, result: Any) -> bool:
        return isinstance(result, Final) and result.passed

    def unknown(self, reason: str) -> Any:
        return Verdict("unknown", reason)

    def fail(self, reason: str) -> Any:
        return Verdict("fail", reason)

    def final_failed(self, reason: str) -> Any:
        return Final(False, reason)
