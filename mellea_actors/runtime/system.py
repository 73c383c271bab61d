"""The actor system behind a session: one loop thread, one generation supervisor, transports.

::

    ActorSystem  (id "system-…")
    └── RootSupervisor ("…/root"): restarts the generation supervisor if it crashes
        └── GenerationSupervisor ("…/generation-supervisor"), one circuit breaker per host
            ├── hosts                    (a pool only: one node per host, its url, state,
            │                             in_flight and capacity; see host_pool.py)
            ├── generator-<request id>   (asyncio task: streams from Ollama; restarted on
            │                             transient failures before any delta)
            └── thunk-<request id>       (ThunkActor: owns that generation's output; its crash
                                          is reported to the generation supervisor)
    stream-<request id>                  (StreamActor of a ``stream_with_chunking`` run)
    └── validator-<request id>-<n>       (ValidatorActor, one per requirement)
    ray-engine-…                         (engine="ray" only: the Ray generation supervisors,
    └── mellea-actors-…-w<n>              shared by the process's sessions; each with this
        └── host-<url>                    session's hosts there: state, in_flight, capacity;
                                          runtime/ray_transport.py, runtime/ray_worker.py)

``engine="ray"``: the generations are supervised in Ray — each Ray generation supervisor
(:mod:`~mellea_actors.runtime.ray_worker`) runs a real ``GenerationSupervisor`` per session, with
the session's transports and host pool; the thunks, readers, validators and chunkers stay here,
and this system's own generation supervisor relays through a
:class:`~mellea_actors.runtime.ray_transport.RayTransport` per host (no pool, no breaker; it
retries only what a Ray actor's death cut off before any text). Its ``hosts`` node sums the Ray
supervisors' views; :attr:`hosts` changes reach every one of them (``ray_session``).

Thread-safety: every public method may be called from any thread. The system's mutable state
lives on its loop thread, except the registries ``_thunks`` and ``stream_actors`` (dicts
mutated by single operations, atomic in CPython) used for introspection, and a pool's
:class:`~mellea_actors.runtime.host_pool.HostRegistry` (its own lock; see there).

A pool (``hosts=[...]``): the generation supervisor owns the routing; :attr:`hosts`
(:class:`Hosts`) adds and removes hosts by asking it (``AddHost`` / ``RemoveHost``), and keeps
the registry's configuration in step, so that a restarted supervisor starts with the hosts of
the moment.

Shutdown: :meth:`close` cancels every generation (closing its HTTP stream), waits (bounded) until
every thunk published its outcome, closes the HTTP clients and joins the loop thread. An ``atexit``
hook closes systems that are still open, so a process never exits with a stream left open, and
never hangs: the loop thread is a daemon and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import itertools
import os
import threading
import time
import warnings
import weakref
from collections.abc import Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pykka

from mellea_actors._arguments import check_timeout
from mellea_actors.errors import InvalidInputError, RuntimeClosedError
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.runtime.crossing import CallBatch, await_concurrent
from mellea_actors.runtime.generation_supervisor import GenerationSupervisor
from mellea_actors.runtime.host_pool import TAGS_EVERY, HostRegistry, HostSpec, HostView
from mellea_actors.runtime.log import SupervisionLog
from mellea_actors.runtime.loop import ActorLoop, ask_async, tell_here
from mellea_actors.runtime.messages import (
    AddHost,
    AwaitOutcome,
    CancelGeneration,
    GenerationRequest,
    RemoveHost,
    StartGeneration,
)
from mellea_actors.runtime.ray_transport import (
    CALLER_BREAKERS,
    RayEngine,
    RaySession,
    RayTransport,
    caller_policy,
)
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.runtime.root_supervisor import RootSupervisor
from mellea_actors.runtime.thunk_actor import ThunkActor, ThunkCell
from mellea_actors.runtime.thunk_handle import ThunkHandle
from mellea_actors.transport.ollama_http import OllamaTransport

if TYPE_CHECKING:
    from mellea_actors.observe.live_server import LiveView

__all__ = ["ActorSystem", "Hosts"]

_ids = itertools.count(1)

ENGINE_LOOPS = ("caller", "thread")
"""Where a session's engine runs (``engine_loop``): ``"caller"`` — on the running event loop of
the code that opens the session, when there is one (one thread, no GIL hand-offs; see
:class:`~mellea_actors.runtime.loop.ActorLoop`), else on a thread of its own; ``"thread"`` —
always on a thread of its own."""


def check_engine_loop(value: object, name: str = "engine_loop") -> str:
    """``value`` if it is one of :data:`ENGINE_LOOPS`, else InvalidInputError naming ``name``."""
    if value not in ENGINE_LOOPS:
        raise InvalidInputError(
            f"unknown {name} {value!r}: use 'caller' (the caller's running event loop when "
            "there is one) or 'thread' (a thread of the session's own)"
        )
    return str(value)


T = TypeVar("T")

#: The generations started by the coroutine that :meth:`ActorSystem.run_sync` runs (per task).
_started_in_scope: contextvars.ContextVar[list[ThunkHandle] | None] = contextvars.ContextVar(
    "mellea_actors_started_in_scope", default=None
)
_live_systems: weakref.WeakSet[ActorSystem] = weakref.WeakSet()


def _begin_generation(
    actor: ThunkActor, supervisor: pykka.ActorRef[Any], message: StartGeneration
) -> None:
    """On the loop: start the thunk actor, then have the supervisor start its generation —
    handled at once (``tell_here``), so that it stays ahead of whatever the caller sent after
    ``start_generation`` returned (a cancel, say), which is queued behind this callback."""
    actor.begin()
    try:
        tell_here(supervisor, message)
    except pykka.ActorDeadError:  # the session is closing: the thunk ends, nobody waits
        actor.stop_now()


class ActorSystem:
    """Runs generations on actors; see the module docstring."""

    def __init__(
        self,
        *,
        policy: RestartPolicy | None = None,
        breaker_policy: BreakerPolicy | None = None,
        log: SupervisionLog | None = None,
        max_in_flight: int | None = None,
        connect_timeout: float = 10.0,
        queue_timeout: float | None = 300.0,
        hosts: Sequence[HostSpec | str] | None = None,
        tags_every: float = TAGS_EVERY,
        engine: str = "local",
        ray_address: str | None = None,
        ray_workers: int | None = None,
        engine_loop: str = "caller",
    ) -> None:
        if engine not in ("local", "ray"):
            raise InvalidInputError(f"unknown engine {engine!r}: use 'local' or 'ray'")
        check_engine_loop(engine_loop)
        dashboard = _dashboard_from_env()  # a bad MELLEA_ACTORS_DASHBOARD fails before anything
        self._live_view: LiveView | None = None  # serve(); closed by close()
        self._queue_timeout = queue_timeout
        self._cancel_fn = self.cancel  # one bound method for every handle, not one each
        self._host_registry = None if hosts is None else HostRegistry(HostSpec.of(h) for h in hosts)
        self._tags_every = tags_every
        self._pid = os.getpid()
        self.id = f"system-{self._pid}-{next(_ids)}"
        self.log = log or SupervisionLog()
        # the Ray engine (engine="ray"): the generations are supervised in its Ray generation
        # supervisors; ray_session is this session's channels to them, the transports below
        # are RayTransports over it (runtime/ray_transport.py); None: in-process
        self.ray: RayEngine | None = None
        self.ray_session: RaySession | None = None
        self._ray_caller = engine == "ray"  # our supervisor relays (no pool, no breakers)
        self._max_in_flight = max_in_flight
        self._connect_timeout = connect_timeout
        # Ownership (see the module docstring): the transports are created and used on the loop
        # thread only; the two registries below are written by their actors (loop thread) with
        # single dict operations, and read by introspection from any thread (as snapshots).
        self._transports: dict[str, OllamaTransport | RayTransport] = {}
        self._thunks: dict[str, tuple[ThunkCell, pykka.ActorRef[Any]]] = {}
        self.stream_actors: dict[str, str] = {}
        """Live stream and validator actors (``id -> kind``), kept by themselves while alive."""
        self._request_ids = itertools.count(1)  # next() is atomic: any thread
        self._close_lock = threading.Lock()  # guards the transition to ``_closed``
        self._closed = False
        self._closed_reason = "is closed; open a new session"
        self._failed: str | None = None  # set once by the root (loop thread), read anywhere
        self._policy = policy
        self._breaker_policy = breaker_policy
        # engine="ray" keeps its relays on a thread of their own
        host = ActorLoop.host_here() if engine_loop == "caller" and engine == "local" else None
        self.loop = ActorLoop(name=f"mellea-actors-{self.id}", host=host).start()
        self._begins = CallBatch(self.loop.loop)  # start_generation's crossings (any thread)
        self.log.emit("system_started", actor=self.id, kind="system")
        self.root: pykka.ActorRef[RootSupervisor] = RootSupervisor.start(
            self.loop,
            actor_id=self.root_id,
            log=self.log,
            start_child=self._start_generation_supervisor,
            on_child_restarted=self._set_supervisor,
            on_gave_up=self._give_up,
        )
        self.supervisor: pykka.ActorRef[GenerationSupervisor] = self._start_generation_supervisor(
            self.root
        )
        adopted = self.root.proxy().adopt(self.supervisor)
        if not self.loop.hosted:  # hosted, the loop has not run yet: it is the first message
            adopted.get(timeout=10)
        _live_systems.add(self)
        if engine == "ray":  # last: nothing before it can fail with a Ray reference held
            try:
                self.ray = RayEngine.acquire(ray_address, workers=ray_workers, log=self.log)
                self.ray_session = RaySession(
                    self.ray,
                    log=self.log,
                    session_id=self.id,
                    settings=(connect_timeout, max_in_flight, queue_timeout),
                    policy=policy,
                    breaker_policy=breaker_policy,
                    hosts=self._host_registry,
                    tags_every=tags_every,
                )
            except BaseException:
                self.close()
                raise
            # ray.init registered Ray's own exit hook; ours must run before it (atexit is
            # LIFO), or closing a forgotten session at exit touches a Ray already shut down
            # (the process then dies of SIGSEGV after its work is done)
            atexit.unregister(_close_all_at_exit)
            atexit.register(_close_all_at_exit)
        if dashboard is not None:
            self._serve_from_env(*dashboard)

    def _start_generation_supervisor(
        self, parent: pykka.ActorRef[Any]
    ) -> pykka.ActorRef[GenerationSupervisor]:
        if self._ray_caller:  # engine="ray": the Ray supervisors decide, this one relays
            return GenerationSupervisor.start(
                self.loop,
                transport_for=self._transport_for,
                log=self.log,
                policy=caller_policy(self._policy),
                breaker_policy=CALLER_BREAKERS,
                actor_id=self.supervisor_id,
                parent_id=self.root_id,
                parent=parent,
                hosts=None,
                tags_every=self._tags_every,
                relay=True,
            )
        return GenerationSupervisor.start(
            self.loop,
            transport_for=self._transport_for,
            log=self.log,
            policy=self._policy,
            breaker_policy=self._breaker_policy,
            actor_id=self.supervisor_id,
            parent_id=self.root_id,
            parent=parent,
            hosts=self._host_registry,
            tags_every=self._tags_every,
        )

    def _set_supervisor(self, ref: pykka.ActorRef[Any]) -> None:
        self.supervisor = ref  # atomic swap, read by submit() on any thread

    def _give_up(self, reason: str) -> None:
        self._failed = reason

    # -- used by the facade ----------------------------------------------------------------
    def new_request_id(self) -> str:
        return f"{self.id.removeprefix('system-')}-{next(self._request_ids)}"

    def start_generation(self, request: GenerationRequest) -> ThunkHandle:
        """Start a thunk actor and its generation; return its handle at once (thread-safe)."""
        if self._closed:
            raise RuntimeClosedError(f"{self.id} {self._closed_reason}")
        if self._failed is not None:
            raise RuntimeClosedError(f"{self.id} gave up: {self._failed}; open a new session")
        supervisor = self.supervisor
        cell = ThunkCell(request.request_id)
        actor = ThunkActor(
            self.loop,
            cell,
            log=self.log,
            parent_id=self.supervisor_id,
            registry=self._thunks,
            supervisor=supervisor,
        )
        ref = actor.actor_ref
        self._thunks[request.request_id] = (cell, ref)
        self.log.capture_context(request.request_id)  # the caller's structlog contextvars
        # one thread crossing for both: the thunk actor's start, then the supervisor's message
        # (whatever is sent to the thunk after this line is handled after its on_start), and
        # one crossing for all the starts made while the loop had not run them yet
        try:
            self._begins.submit(_begin_generation, actor, supervisor, StartGeneration(request, ref))
        except RuntimeError as exc:  # the loop closed under our feet
            self._thunks.pop(request.request_id, None)
            raise RuntimeClosedError(f"{self.id} {self._closed_reason}") from exc
        handle = ThunkHandle(cell, ref, streamed=request.stream, cancel=self._cancel_fn)
        scope = _started_in_scope.get()
        if scope is not None:
            scope.append(handle)
        return handle

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine of the facade on the loop, blocking this thread (a sync method).

        Every generation the coroutine starts is cancelled unless the coroutine returns
        normally: if it raises, times out, or the caller's wait is interrupted (Ctrl-C), work
        whose thunk never reached the caller must not go on generating where nobody can stop
        it. Generations of a normal return (a thunk handed out) are left running.
        """
        if self._closed:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise RuntimeClosedError(f"{self.id} {self._closed_reason}")
        self.loop.refuse_blocking_call(coro)  # checked on ``coro``, not on the wrapper below
        return self.loop.run_sync(self._scoped(coro), timeout)

    async def _scoped(self, coro: Coroutine[Any, Any, T]) -> T:
        started: list[ThunkHandle] = []
        token = _started_in_scope.set(started)
        try:
            return await coro
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):  # run_sync cancels it for its caller
                reason = "the blocking call that started it was interrupted (Ctrl-C) or timed out"
            else:
                reason = f"the blocking call that started it raised {type(exc).__name__}"
            for handle in started:
                handle.request_cancel(reason)
            raise
        finally:
            _started_in_scope.reset(token)

    def cancel(self, request_id: str, reason: str = "cancelled by the user") -> None:
        """Ask the supervisor to cancel one generation (thread-safe, returns at once; from the
        runtime's loop, e.g. a stream actor's "fail", it is handled at once)."""
        with contextlib.suppress(pykka.ActorDeadError):
            tell_here(self.supervisor, CancelGeneration(request_id, reason))

    @property
    def hosts(self) -> Hosts:
        """The pool's hosts (see :class:`Hosts`)."""
        return Hosts(self)

    @property
    def pooled(self) -> bool:
        return self._host_registry is not None

    def add_host(
        self, url: str, *, capacity: int | None = None, weight: float = 1.0, timeout: float = 10.0
    ) -> HostView:
        """Add a host to the pool (thread-safe; from the loop thread it is only sent)."""
        registry = self._pool_registry("add a host")
        spec = HostSpec(HostSpec.of(url, "url").url, capacity, weight)
        if self._ray_caller:
            return self._ray_add_host(registry, spec, timeout)
        message = AddHost(spec.url, spec.capacity, spec.weight)
        if self.loop.in_loop_thread():
            self.supervisor.tell(message)
            view = HostView(spec.url, "up", 0, spec.capacity or 0, spec.weight, None)
        else:
            answer = self.supervisor.ask(message, timeout=timeout)
            assert isinstance(answer, HostView)
            view = answer
        with registry.lock:
            registry.specs[spec.url] = spec
        return view

    def remove_host(self, url: str, *, drain: bool = True, timeout: float = 10.0) -> None:
        """Remove a host from the pool (thread-safe; returns once it is draining, not drained:
        the log says ``host_removed`` when it left)."""
        registry = self._pool_registry("remove a host")
        normalized = HostSpec.of(url, "url").url
        if self._ray_caller:
            self._ray_remove_host(registry, normalized, drain, timeout)
            return
        message = RemoveHost(normalized, drain)
        if self.loop.in_loop_thread():
            self.supervisor.tell(message)
        else:
            self.supervisor.ask(message, timeout=timeout)
        with registry.lock:
            registry.specs.pop(normalized, None)

    def _ray_add_host(self, registry: HostRegistry, spec: HostSpec, timeout: float) -> HostView:
        """engine="ray": the registry (the configuration of sessions starting on a Ray
        supervisor) first, then every Ray supervisor that has this session."""
        with registry.lock:
            if spec.url in registry.specs:
                raise InvalidInputError(f"host {spec.url} is already in the pool")
            registry.specs[spec.url] = spec
        assert self.ray_session is not None
        coro = self.ray_session.add_host(spec, timeout)
        if self.loop.in_loop_thread():
            self.loop.spawn(coro)
            return HostView(spec.url, "up", 0, spec.capacity or 0, spec.weight, None)
        return self.loop.run_sync(coro, timeout=timeout + 1)

    def _ray_remove_host(
        self, registry: HostRegistry, url: str, drain: bool, timeout: float
    ) -> None:
        with registry.lock:
            if url not in registry.specs:
                listed = ", ".join(registry.specs)
                raise InvalidInputError(f"host {url} is not in the pool (hosts: {listed})")
            del registry.specs[url]
        assert self.ray_session is not None
        coro = self.ray_session.remove_host(url, drain, timeout)
        if self.loop.in_loop_thread():
            self.loop.spawn(coro)
        else:
            self.loop.run_sync(coro, timeout=timeout + 1)

    def _pool_registry(self, what: str) -> HostRegistry:
        if self._closed:
            raise RuntimeClosedError(f"{self.id} {self._closed_reason}")
        if self._host_registry is None:
            raise InvalidInputError(
                f"cannot {what}: this session was started with one host; start it with "
                "base_url=[...] (or a comma-separated OLLAMA_HOST) for a pool of hosts"
            )
        return self._host_registry

    def host_views(self) -> list[HostView]:
        """The pool's hosts now (empty without a pool; any thread)."""
        if self._host_registry is None:
            return []
        if self.ray_session is not None:  # the Ray supervisors' pools, aggregated
            return self.ray_session.host_views()
        return list(self._host_registry.view)

    @property
    def supervisor_id(self) -> str:
        return f"{self.id}/generation-supervisor"

    @property
    def root_id(self) -> str:
        return f"{self.id}/root"

    @property
    def closed(self) -> bool:
        return self._closed

    def live_thunks(self) -> list[str]:
        """Request ids of thunks whose generation has not ended yet."""
        return [rid for rid, (cell, _) in list(self._thunks.items()) if cell.outcome is None]

    def tree(self) -> dict[str, Any]:
        """The live actor tree, as nested dicts (``id``, ``kind``, ``children``)."""
        streams: dict[str, dict[str, Any]] = {}
        for actor_id, kind in list(self.stream_actors.items()):
            if kind == "stream":
                streams.setdefault(actor_id, {"id": actor_id, "kind": kind, "children": []})
        for actor_id, kind in list(self.stream_actors.items()):
            if kind != "stream":  # validator-<request id>-<n> belongs to stream-<request id>
                parent = "stream-" + actor_id.removeprefix("validator-").rsplit("-", 1)[0]
                node = {"id": actor_id, "kind": kind, "children": []}
                streams.setdefault(parent, {"id": parent, "kind": "stream", "children": []})
                streams[parent]["children"].append(node)
        thunks: list[dict[str, Any]] = [
            {"id": f"thunk-{rid}", "kind": "thunk", "status": cell.status.value, "children": []}
            for rid, (cell, _) in list(self._thunks.items())
        ]
        if self._host_registry is not None:
            hosts = [
                {"id": f"host-{v.url}", "kind": "host", **v.as_dict(), "children": []}
                for v in self.host_views()
            ]
            pool_node: dict[str, Any] = {
                "id": f"{self.supervisor_id}/hosts",
                "kind": "hosts",
                "children": hosts,
            }
            thunks.insert(0, pool_node)
        return {
            "id": self.id,
            "kind": "system",
            "children": [
                {
                    "id": self.root_id,
                    "kind": "root_supervisor",
                    "alive": self.root.is_alive(),
                    "children": [
                        {
                            "id": self.supervisor_id,
                            "kind": "generation_supervisor",
                            "alive": self.supervisor.is_alive(),
                            "children": thunks,
                        }
                    ],
                },
                *streams.values(),
                *(
                    []
                    if self.ray is None or self.ray_session is None
                    else [
                        {
                            "id": f"ray-engine-{self.ray.id}",
                            "kind": "ray_engine",
                            "children": self.ray_session.describe(),
                        }
                    ]
                ),
            ],
        }

    # -- the live view (mellea_actors.observe; docs/live_view.md) -------------------------------
    def serve(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> LiveView:
        """Serve this system's live view over HTTP (page, JSON API, ``/metrics``) until it
        closes; returns the running view (``.url``). Loopback by default; any other ``host``
        needs a ``token`` (ValueError before binding), which every request must then carry
        (``Authorization: Bearer <token>`` or ``?token=``). Thread-safe; one view per system."""
        return self._serve(host, port, token, explicit=True)

    @property
    def live_view(self) -> LiveView | None:
        """The running live view (:meth:`serve`, or ``MELLEA_ACTORS_DASHBOARD``), or None."""
        view = self._live_view
        return None if view is None or view.closed else view

    def _serve(self, host: str, port: int, token: str | None, *, explicit: bool) -> LiveView:
        from mellea_actors.observe import start_live_view  # its imports only when asked for

        with self._close_lock:  # close() cannot run in between: it always stops the view
            if self._closed:
                raise RuntimeClosedError(f"{self.id} {self._closed_reason}")
            running = self.live_view
            if running is not None:
                raise RuntimeError(
                    f"{self.id} already serves its live view at {running.url}; close that one "
                    "first (system.live_view.close())"
                )
            view = start_live_view(_LiveViewSource(self), host, port, token, explicit=explicit)
            self._live_view = view
        return view

    def _serve_from_env(self, host: str, port: int, token: str | None) -> None:
        try:
            self._serve(host, port, token, explicit=False)
        except OSError as exc:  # e.g. the port is taken (by another session): the session runs
            warnings.warn(
                f"{self.id}: MELLEA_ACTORS_DASHBOARD={host}:{port}: the live view could not "
                f"listen there ({exc}); the session runs without it",
                RuntimeWarning,
                stacklevel=3,
            )

    @property
    def engine(self) -> str:
        """``"ray"`` or ``"local"`` (in-process)."""
        return "local" if self.ray is None else "ray"

    def _transport_for(self, host: str) -> OllamaTransport | RayTransport:
        transport = self._transports.get(host)
        if transport is None:
            settings: dict[str, Any] = {
                "connect_timeout": self._connect_timeout,
                "max_in_flight": self._max_in_flight,
                "queue_timeout": self._queue_timeout,
            }
            transport = self._transports[host] = (
                OllamaTransport(host, **settings)
                if self.ray_session is None
                else RayTransport(host, self.ray_session)
            )
        return transport

    async def check_host(self, host: str, timeout: float = 5.0) -> list[str]:
        """Models available on ``host`` (raises BackendUnavailableError if it does not answer).

        Runs on the actor loop whatever loop awaits it.
        """
        future = self.loop.run_coroutine(self._transport_for_on_loop(host, timeout))
        return await await_concurrent(future)

    async def _transport_for_on_loop(self, host: str, timeout: float) -> list[str]:
        return await self._transport_for(host).list_models(timeout=timeout)

    # -- shutdown --------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Cancel every generation, stop every actor, join the loop thread (bounded by timeout).

        Idempotent, and once it starts it always completes: every step is bounded and a
        failing step does not stop the next. What could make it fail is checked first, before
        anything is closed (so a refused close leaves the session whole, and a later close()
        or the exit hook still closes it): a bad ``timeout`` (InvalidInputError), or a call
        from the runtime's own loop thread, e.g. inside a validator (RuntimeError).
        """
        check_timeout(timeout, "timeout", allow_none=False)
        if self.loop.in_loop_thread():
            raise RuntimeError(
                f"{self.id}.close() was called from its own loop thread (inside a validator, a "
                "chunker or an actor?); close the session from your own code"
            )
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _live_systems.discard(self)
        view, self._live_view = self._live_view, None
        if view is not None:  # first: nothing reads the system while it winds down
            with contextlib.suppress(Exception):
                view.close()
        with contextlib.suppress(Exception):  # children first, as in OTP
            self.supervisor.stop(timeout=timeout)
        with contextlib.suppress(Exception):
            self.root.stop(timeout=timeout)
        with contextlib.suppress(Exception):
            self.loop.run_sync(self._drain(timeout), timeout=timeout + 1)
        self.log.emit("system_stopped", actor=self.id, kind="system")
        self.loop.stop(timeout)
        if self.ray is not None:
            with contextlib.suppress(Exception):
                self.ray.release(self.log)

    async def _drain(self, timeout: float) -> None:
        """On the loop: wait until every thunk published its outcome, then close HTTP clients."""
        live = [ref for cell, ref in list(self._thunks.values()) if cell.outcome is None]
        if live:  # their generations were cancelled with the supervisor: they end in ms
            outcomes = [self.loop.spawn(ask_async(ref, AwaitOutcome())) for ref in live]
            _, late = await asyncio.wait(outcomes, timeout=timeout)
            for future in late:
                future.cancel()
        for cell, ref in list(self._thunks.values()):
            if cell.outcome is None:
                ref.stop(block=False)
        for transport in list(self._transports.values()):
            with contextlib.suppress(Exception):
                await transport.aclose()
        self._transports.clear()

    def __enter__(self) -> ActorSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hosts:
    """The hosts of a session (``session.hosts``): iterate for their :class:`HostView` (url,
    state, in_flight, capacity); ``add`` and ``remove`` change a pool while it runs.

    ``remove(url, drain=True)`` stops new work to the host and lets its running generations
    finish (it leaves when the last one ends, logged ``host_removed``); ``drain=False`` stops
    them now: those that delivered no text yet move to another host, the others fail with an
    error naming the host. A session started with one host (a str ``base_url``) is not a
    pool: it lists nothing, and ``add`` / ``remove`` raise ``InvalidInputError``.
    """

    def __init__(self, system: ActorSystem) -> None:
        self._system = system

    def add(self, url: str, *, capacity: int | None = None, weight: float = 1.0) -> HostView:
        return self._system.add_host(url, capacity=capacity, weight=weight)

    def remove(self, url: str, *, drain: bool = True) -> None:
        self._system.remove_host(url, drain=drain)

    @property
    def urls(self) -> list[str]:
        return [view.url for view in self._system.host_views()]

    def __iter__(self) -> Iterator[HostView]:
        return iter(self._system.host_views())

    def __len__(self) -> int:
        return len(self._system.host_views())

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and HostSpec.of(url, "url").url in self.urls

    def __repr__(self) -> str:
        return f"Hosts({[v.as_dict() for v in self._system.host_views()]!r})"


class _LiveViewSource:
    """What the live view reads (:class:`mellea_actors.observe.LiveSource`): snapshots taken
    on the server's threads, from state that is safe to read anywhere; nothing per chunk."""

    def __init__(self, system: ActorSystem) -> None:
        self._system = system

    @property
    def id(self) -> str:
        return self._system.id

    def tree(self) -> dict[str, Any]:
        return self._system.tree()

    def records(self) -> list[dict[str, Any]]:
        return self._system.log.stored()

    def streams(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        out = []
        for rid, (cell, _) in list(self._system._thunks.items()):
            first = cell.first_delta_at  # the cell's fields: written by the thunk actor only
            out.append(
                {
                    "thunk": rid,
                    "status": cell.status.value,
                    "tokens": len(cell.deltas),
                    "streaming_for": None if first is None else max(0.0, now - first),
                }
            )
        return out

    def hosts(self) -> list[dict[str, Any]]:
        return [view.as_dict() for view in self._system.host_views()]


def _dashboard_from_env() -> tuple[str, int, str | None] | None:
    """``MELLEA_ACTORS_DASHBOARD=HOST:PORT`` (loopback only), read when a system starts:
    (host, port, token) or None; ValueError naming the variable when it is wrong."""
    value = os.environ.get("MELLEA_ACTORS_DASHBOARD", "").strip()
    if not value:
        return None
    from mellea_actors.observe.live_source import (
        DASHBOARD_TOKEN_ENV,
        check_bind,
        parse_dashboard_env,
    )

    host, port = parse_dashboard_env(value)
    token = os.environ.get(DASHBOARD_TOKEN_ENV) or None
    check_bind(host, port, token, explicit=False)
    return host, port, token


def _forget_systems_in_child() -> None:
    """After ``os.fork()``, in the child: the systems are the parent's. Their loop threads
    were not copied, so nothing of theirs can run here, and the exit hook must not wait for
    them. Using one raises RuntimeClosedError saying to start a new session in the child."""
    for system in list(_live_systems):
        reason = (
            f"was created in process {system._pid}, before os.fork(); this child process "
            "must start its own session"
        )
        system._closed = True
        system._closed_reason = reason
        system.loop.abandon(reason)
        view, system._live_view = system._live_view, None
        if view is not None:  # its server thread is the parent's: drop the socket only
            view.abandon()
    _live_systems.clear()


os.register_at_fork(after_in_child=_forget_systems_in_child)


@atexit.register
def _close_all_at_exit() -> None:
    for system in list(_live_systems):
        with contextlib.suppress(Exception):
            system.close(timeout=3.0)
