"""Validator actors: one per requirement per stream, judging the stream's chunks in order.

A :class:`ValidatorActor` owns one :class:`ValidationCheck` — for ``stream_with_chunking`` a
private shallow copy (``copy.copy``) of one requirement, wrapped by the facade — and answers
two asks:

* ``ValidateChunk(index, text)`` → the check's verdict on that chunk (a
  ``PartialValidationResult``);
* ``ValidateFinal()`` → the check's final validation of the complete output (a
  ``ValidationResult``).

Both are *deferred replies*: the handler only queues the request and returns an
``asyncio.Future``; one worker task per validator works through the queue **in arrival order**
(so a requirement that keeps state on ``self`` sees its chunks in order), one request at a time.
The actor keeps receiving while a check runs, so a slow check never blocks the loop, other
validators, or the generation: it only delays the replies of its own validator. Different
validators run concurrently.

Ownership (trio-style): the actor, its queue, its worker task and the check object all live on
the runtime's :class:`~mellea_actors.runtime.loop.ActorLoop` thread; nothing else touches the
check while the actor lives. Askers on any thread or loop get the reply through the pykka future.
The :class:`ValidationCheck` Protocol and the fault policies are part of the contract between
``stream_with_chunking``'s facade and its engine (:mod:`mellea_actors.runtime.stream_contract`);
what a fault means for a stream's user is stated by the facade
(:mod:`mellea_actors.stdlib.streaming`).

Deadline and faults. Each check call has a deadline of ``timeout`` seconds (counted from the
moment the worker starts that call, not from the ask; ``None``: no deadline). A check that
raises, answers with something that is not a verdict (:class:`InvalidVerdictError`, raised by
the check), or misses its deadline (:class:`ValidatorTimeoutError`; the call is cancelled) is a
*fault*. Every fault is logged as ``validator_failed``; then the fault policy decides:

* ``"fail"`` (default, fail-closed): the ask is answered with a :class:`ValidatorError`;
* ``"unknown"``: the ask is answered with ``check.unknown(reason)`` (an ``"unknown"`` verdict),
  or for the final validation ``check.final_failed(reason)`` (a failed result: a final result
  has no "unknown"), and the validator goes on with its next request.

A verdict for which ``check.is_fail`` is true is logged as ``verdict_fail`` (after the reply was
set, so logging never delays the cancellation that the verdict triggers).

Cancellation. ``StopValidation`` cancels the running check (the ``CancelledError`` lands inside
``stream_validate``/``validate``), drops the queued requests (their askers get
``pykka.ActorDeadError``) and stops the actor; its reply comes once the worker has really
finished (bounded by ``stop_timeout``), so the stopper knows no validation code runs any more.
``ref.stop()`` does the same without waiting. A check that blocks the thread (``time.sleep``)
cannot be interrupted by anything; checks must be coroutines that await.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from mellea_actors.errors import (
    InvalidInputError,
    InvalidVerdictError,
    ValidatorError,
    ValidatorTimeoutError,
)
from mellea_actors.runtime.actor_base import RuntimeActor, handles
from mellea_actors.runtime.loop import ActorLoop
from mellea_actors.runtime.messages import StopValidation, ValidateChunk, ValidateFinal
from mellea_actors.runtime.stream_contract import FAULT_POLICIES, FaultPolicy, ValidationCheck

if TYPE_CHECKING:
    from mellea_actors.runtime.log import SupervisionLog

__all__ = [  # the policy and the check's Protocol live in runtime.stream_contract
    "FAULT_POLICIES",
    "FaultPolicy",
    "InvalidVerdictError",
    "ValidationCheck",
    "ValidatorActor",
    "ValidatorError",
    "ValidatorTimeoutError",
]

_E = TypeVar("_E", bound="ValidatorError")


def _fault(cls: type[_E], message: str, validator: str, index: int | None) -> _E:
    err = cls(message)
    err.validator = validator
    err.chunk_index = index
    return err


class ValidatorActor(RuntimeActor):
    """Runs one check over a stream's chunks, in order; see the module docstring.

    Args:
        actor_loop: the loop that serves this actor (the stream's runtime loop).
        check: the check to run; the actor owns it from now on.
        timeout: the deadline of each check call in seconds (None: none).
        on_fault: the fault policy, ``"fail"`` or ``"unknown"``.
        log: the supervision log.
        actor_id / parent_id / thunk_id: identities for the supervision log.
        registry: a mapping the actor is listed in (``actor_id -> kind``) while it lives.
        stop_timeout: how long ``StopValidation`` waits for a cancelled check to unwind.

    State (``_queue``, ``_worker``, ``_current``, ``_stop_reason``, ``checked``) is owned by the
    actor and touched on the loop thread only: by its handlers, its hooks and its worker task.
    """

    kind = "validator"

    def __init__(
        self,
        actor_loop: ActorLoop,
        check: ValidationCheck,
        *,
        timeout: float | None,
        on_fault: FaultPolicy = "fail",
        log: SupervisionLog,
        actor_id: str,
        parent_id: str | None = None,
        thunk_id: str | None = None,
        registry: MutableMapping[str, str] | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(actor_loop, log=log, actor_id=actor_id, parent_id=parent_id)
        if on_fault not in FAULT_POLICIES:
            raise InvalidInputError(f"on_fault must be one of {FAULT_POLICIES}, got {on_fault!r}")
        self.check = check
        self.timeout = timeout
        self.on_fault: FaultPolicy = on_fault
        self.stop_timeout = stop_timeout
        self._thunk_id = thunk_id
        self._registry = registry
        # loop thread only:
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._current: asyncio.Future[Any] | None = None
        self._stop_reason = "stopped"
        self.checked = 0
        """Chunks judged so far (verdicts given, substitutes included)."""

    @property
    def thunk_id(self) -> str | None:
        """The request id of the attempt this validator judges (``thunk`` of its records)."""
        return self._thunk_id

    # lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        if self._registry is not None:
            self._registry[self.actor_id] = self.kind
        self._queue = asyncio.Queue()
        self._worker = self.actor_loop.spawn(self._work(), name=self.actor_id)
        self.emit("actor_started", check=self.check.label)

    def on_stop(self) -> None:
        self._teardown()
        self.emit("actor_stopped", reason=self._stop_reason, checked=self.checked)

    def on_crash(self, exc_info: Any) -> None:
        self._teardown()
        self.emit("actor_crashed", reason=repr(exc_info[1]))

    def _teardown(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        if self._current is not None and not self._current.done():
            self._current.cancel()
        queue = self._queue
        while queue is not None and not queue.empty():
            _, fut = queue.get_nowait()
            fut.cancel()  # the asker gets ActorDeadError ("dropped its deferred reply")
        if self._registry is not None:
            self._registry.pop(self.actor_id, None)

    # mailbox ---------------------------------------------------------------------------------
    @handles(ValidateChunk, ValidateFinal)
    def _on_request(self, message: ValidateChunk | ValidateFinal) -> asyncio.Future[Any]:
        """Queue the request for the worker; the reply is deferred until it was judged."""
        assert self._queue is not None
        fut: asyncio.Future[Any] = self.actor_loop.loop.create_future()
        self._queue.put_nowait((message, fut))
        return fut

    @handles(StopValidation)
    def _on_stop_validation(self, message: StopValidation) -> Any:
        return self._shutdown(message.reason)

    async def _shutdown(self, reason: str) -> int:
        self._stop_reason = reason
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.wait({worker}, timeout=self.stop_timeout)
            if not worker.done():
                self.emit(
                    "validator_stuck",
                    reason=f"its check ignored cancellation for {self.stop_timeout} s",
                )
        self.stop_now()  # runs on_stop now: stopped before this ask is answered
        return self.checked

    # the worker ------------------------------------------------------------------------------
    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            message, fut = await queue.get()
            if fut.done():
                continue
            self._current = fut
            try:
                if type(message) is ValidateChunk:
                    index: int | None = message.index
                    result = await self._judge(message.index, message.text)
                else:
                    index = None
                    result = await self._judge(None, None)
            except ValidatorError as exc:
                if not fut.done():
                    fut.set_exception(exc)
                continue
            except asyncio.CancelledError:
                if not fut.done():
                    fut.cancel()
                raise
            finally:
                self._current = None
            if not fut.done():
                fut.set_result(result)
            if index is not None and self.check.is_fail(result):
                reason = getattr(result, "reason", None)
                self.emit("verdict_fail", reason=reason, chunk_index=index)

    async def _judge(self, index: int | None, text: str | None) -> Any:
        """Run one check call under the deadline; apply the fault policy to a fault."""
        check = self.check
        what = "the final validation" if index is None else f"chunk {index}"
        deadline = asyncio.timeout(self.timeout)
        fault: ValidatorError
        loop = self.actor_loop.loop
        started = loop.time()
        try:
            async with deadline:
                if index is None:
                    result = await check.check_final()
                else:
                    assert text is not None
                    result = await check.check_chunk(index, text)
            if self.timeout is not None and loop.time() - started > self.timeout:
                # A check that blocked the loop past its deadline could not be cancelled; its
                # late answer does not count, so the deadline holds for every kind of check.
                raise TimeoutError
        except TimeoutError as exc:
            late = self.timeout is not None and loop.time() - started > self.timeout
            if deadline.expired() or late:
                fault = _fault(
                    ValidatorTimeoutError,
                    f"validator {self.actor_id} ({check.label}) did not answer {what} within "
                    f"{self.timeout} s",
                    self.actor_id,
                    index,
                )
            else:
                fault = self._raised(exc, what, index)
            fault.__cause__ = exc
        except ValidatorError as exc:
            fault = exc
            fault.validator = self.actor_id
            fault.chunk_index = index
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # user code: contained, whatever it raised
            fault = self._raised(exc, what, index)
            fault.__cause__ = exc
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit …: never
                return self._on_fault(fault, index, policy="fail")  # swallowed as "unknown"
        else:
            if index is not None:
                self.checked += 1
            return result
        return self._on_fault(fault, index)

    def _raised(self, exc: BaseException, what: str, index: int | None) -> ValidatorError:
        return _fault(
            ValidatorError,
            f"validator {self.actor_id} ({self.check.label}) raised {exc!r} on {what}",
            self.actor_id,
            index,
        )

    def _on_fault(
        self, fault: ValidatorError, index: int | None, policy: FaultPolicy | None = None
    ) -> Any:
        policy = policy or self.on_fault
        reason = str(fault)
        self.emit(
            "validator_failed",
            reason=reason,
            error_type=type(fault).__name__,
            chunk_index=index,
            policy=policy,
        )
        if policy == "fail":
            raise fault
        if index is None:
            return self.check.final_failed(f"validator failed (counted as failed): {reason}")
        self.checked += 1
        return self.check.unknown(f"validator failed (counted as unknown): {reason}")
