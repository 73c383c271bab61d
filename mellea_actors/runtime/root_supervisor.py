"""The root supervisor of a session's actor tree.

It supervises the generation supervisor: if that one crashes (its generations have already
failed with the crash as their error), the root starts a fresh one so that the session keeps
working; more than ``intensity_restarts`` such restarts within ``intensity_period`` seconds and it
gives up (``escalated``): the system is marked failed and new requests raise at once. Escalations
of the generation supervisor (restart intensity of generators exceeded) are logged here too.

State is owned by the loop thread; the system's ``supervisor`` reference is swapped by a callback
(an atomic attribute assignment read by any thread).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka

from mellea_actors._compat import make_actor_stop
from mellea_actors.runtime.actor_base import RuntimeActor, handles
from mellea_actors.runtime.loop import ActorLoop
from mellea_actors.runtime.messages import ChildCrashed, Escalated
from mellea_actors.runtime.restart_policy import RestartIntensity, RestartPolicy

if TYPE_CHECKING:
    from mellea_actors.runtime.log import SupervisionLog

__all__ = ["RootSupervisor"]


class RootSupervisor(RuntimeActor):
    """Restarts the generation supervisor; see the module docstring.

    State (``child``, the restart intensity) is owned by the loop thread.
    """

    kind = "root_supervisor"

    def __init__(
        self,
        actor_loop: ActorLoop,
        *,
        actor_id: str,
        log: SupervisionLog,
        start_child: Callable[[pykka.ActorRef[Any]], pykka.ActorRef[Any]],
        on_child_restarted: Callable[[pykka.ActorRef[Any]], None],
        on_gave_up: Callable[[str], None],
        policy: RestartPolicy | None = None,
    ) -> None:
        super().__init__(actor_loop, log=log, actor_id=actor_id)
        self._start_child = start_child
        self._on_child_restarted = on_child_restarted
        self._on_gave_up = on_gave_up
        self._intensity = RestartIntensity(policy or RestartPolicy(intensity_restarts=3))
        self.child: pykka.ActorRef[Any] | None = None

    def adopt(self, child: pykka.ActorRef[Any]) -> None:
        """Take the first generation supervisor (started by the system before the root runs)."""
        self.child = child

    def on_start(self) -> None:
        self.emit("actor_started")

    def on_stop(self) -> None:
        if self.child is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.child.tell(make_actor_stop())
        self.emit("actor_stopped")

    @handles(Escalated)
    def _on_escalated(self, message: Escalated) -> None:
        self.log.emit(
            "escalation_received",
            actor=self.actor_id,
            kind=self.kind,
            thunk=message.request_id,
            reason=f"{message.supervisor_id}: {message.reason}",
        )

    @handles(ChildCrashed)
    def _on_child_crashed(self, message: ChildCrashed) -> None:
        self.emit("child_crashed", reason=f"{message.kind} {message.child_id}: {message.reason}")
        if not self._intensity.record():
            reason = f"the generation supervisor crashed too often (last: {message.reason})"
            self.emit("escalated", reason=reason)
            self._on_gave_up(reason)
            return
        self.child = self._start_child(self.actor_ref)
        self._on_child_restarted(self.child)
        self.log.emit(
            "actor_restarted",
            actor=message.child_id,
            kind=message.kind,
            parent=self.actor_id,
            reason=message.reason,
        )
