"""The base of the runtime's own actors: identity, log records, dispatch, failure reporting.

Every actor of the engine (thunk, generation supervisor, root supervisor, stream, validator) is a
:class:`RuntimeActor`. What they share is written here once:

* **Identity**: ``actor_id`` (unique in its system, e.g. ``thunk-<request id>``), ``kind``,
  ``parent_id``, and :attr:`thunk_id` (the request id its records carry, if any). ``str(actor)``
  is its id.
* **Log records**: :meth:`emit` writes one supervision-log record with that identity;
  :meth:`emit_child` writes one on behalf of a child that is not an actor (a generator task, a
  circuit breaker), with this actor as its parent.
* **Dispatch**: a handler method is marked ``@handles(MessageType)``; ``on_receive`` calls the
  handler of the message's exact type and raises ``TypeError`` for any other message (the asker
  gets it; a ``tell`` crashes the actor, which is reported).
* **Failures**: a handler that raised while answering an ``ask`` is logged ``ask_failed`` (the
  asker got the error, the actor lives on); :meth:`tell_parent` reports to the supervisor
  without raising if it is gone.

Threading: everything here runs on the actor's :class:`~mellea_actors.runtime.loop.ActorLoop`
thread, as every handler does (see :mod:`mellea_actors.runtime.loop`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pykka

from mellea_actors.runtime.loop import ActorLoop, LoopActor

if TYPE_CHECKING:
    from mellea_actors.runtime.log import SupervisionLog

__all__ = ["RuntimeActor", "handles"]

F = TypeVar("F", bound=Callable[..., Any])


def handles(*message_types: type) -> Callable[[F], F]:
    """Mark a method of a :class:`RuntimeActor` as the handler of these message types."""

    def mark(method: F) -> F:
        method._handles = message_types  # type: ignore[attr-defined]
        return method

    return mark


class RuntimeActor(LoopActor):
    """A LoopActor with the runtime's identity, logging and dispatch (see the module docstring).

    Args:
        actor_loop: the loop that serves it.
        log: the system's supervision log.
        actor_id: its id in the log and the actor tree.
        parent_id: its supervisor's id (None for a root).
        parent: its supervisor's ref, told of crashes by the subclasses that report them.
    """

    kind: ClassVar[str] = "actor"
    _handlers: ClassVar[dict[type, Callable[..., Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                for message_type in getattr(attr, "_handles", ()):
                    table[message_type] = attr
        cls._handlers = table

    def __init__(
        self,
        actor_loop: ActorLoop,
        *,
        log: SupervisionLog,
        actor_id: str,
        parent_id: str | None = None,
        parent: pykka.ActorRef[Any] | None = None,
    ) -> None:
        super().__init__(actor_loop)
        self.log = log
        self.actor_id = actor_id
        self.parent_id = parent_id
        self.parent = parent

    def __str__(self) -> str:
        return self.actor_id

    @property
    def thunk_id(self) -> str | None:
        """The request id this actor's records carry (None: none)."""
        return None

    # log ---------------------------------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        """One supervision-log record from this actor."""
        self.log.emit(
            event,
            actor=self.actor_id,
            kind=self.kind,
            parent=self.parent_id,
            thunk=self.thunk_id,
            **fields,
        )

    def emit_child(
        self, event: str, *, actor: str, kind: str, thunk: str | None = None, **fields: Any
    ) -> None:
        """One record on behalf of a child of this actor that is not an actor itself."""
        self.log.emit(event, actor=actor, kind=kind, parent=self.actor_id, thunk=thunk, **fields)

    # dispatch ----------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"{self} does not understand {type(message).__name__}")
        return handler(self, message)

    def on_ask_failure(self, message: Any, exc: BaseException) -> None:
        """The asker got the error and the actor lives on; the log still says so."""
        self.emit("ask_failed", reason=f"{type(message).__name__}: {exc!r}")

    # supervision -------------------------------------------------------------------------------
    def tell_parent(self, message: object) -> None:
        """Tell the supervisor (nothing happens if there is none, or it is gone)."""
        if self.parent is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self.parent.tell(message)

    def tell_self(self, message: object) -> None:
        """Queue a message to this actor (dropped if it already stopped)."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)
