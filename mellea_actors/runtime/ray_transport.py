"""The Ray engine, caller side: :class:`RayEngine` (Ray and the Ray generation supervisors),
:class:`RaySession` (one session's channels to them) and :class:`RayTransport` (the
``ChatTransport`` the session's own generation supervisor relays through).

Placement (see also :mod:`~mellea_actors.runtime.ray_worker`): the generation supervisors run
in Ray async actors, the *Ray generation supervisors* — each runs, per session, a real
``GenerationSupervisor`` with the session's transports and host pool, and decides every
restart, busy retry, failover and breaker change of its streams. The caller's process keeps
the thunk actors, readers, validators and chunkers, and its own generation supervisor as a
relay: with :class:`RayCallerPolicy` (it retries only a :class:`RayActorLostError` before any
text), :data:`CALLER_BREAKERS` (never open) and no pool.

* **Ray supervisors.** One :class:`RayEngine` per process and Ray address, shared by every
  session that uses it (reference-counted): it starts N Ray supervisors (``workers=``, else
  ``MELLEA_ACTORS_RAY_WORKERS``, else one per alive node — on a one-node cluster one per CPU,
  capped at 2), named ``mellea-actors-<pid>-<engine>-w<n>`` in the Ray namespace
  ``mellea_actors``, with ``max_restarts=-1`` (Ray brings a dead one back; its constructor
  reruns) and ``num_cpus=0`` (they wait on sockets). When the last session closes, they are
  killed (no restart) and, if this engine started Ray (``ray.init`` was not called yet and no
  address was given: a local Ray, quiet, ``num_cpus=2``, no dashboard), Ray is shut down. A Ray
  the user started is never shut down; from a cluster at an address the engine only
  disconnects.
* **Addresses** (``ray_address``, else ``RAY_ADDRESS``): None — the Ray this process joined
  already (``ray.init``), else a local one started here; ``"auto"`` — the cluster running on
  this machine (Ray's own lookup); ``"HOST:PORT"`` — the cluster whose GCS listens there;
  ``"ray://HOST:PORT"`` — a Ray Client server. Anything else is an ``InvalidInputError``. An
  explicit address is probed with a TCP connect first (:data:`PROBE_TIMEOUT`): nothing
  listening, or ``"auto"`` finding no cluster, is a :class:`RayUnreachableError` (a
  ``ConnectionError`` naming the address) raised by ``start_session`` before any request —
  not Ray's own minute of reconnecting. A process already connected to one cluster refuses a
  ``"HOST:PORT"`` naming another (one process joins one cluster). Through Ray Client, which
  cannot hold streaming calls, the channels *poll* (``poll``: one call per item) instead of
  pumping; everything else is the same.
* **Choosing a Ray supervisor.** Per generation (and per retry after a death), the alive one
  with the fewest streams in flight; one that died is avoided until it answers again
  (``ray_worker_restarted``). The host is chosen there, by its pool.
* **Channels and batches.** A :class:`RaySession` opens one channel per Ray supervisor (a
  ``pump`` streaming call; see :mod:`~mellea_actors.runtime.ray_worker`), which *is* the
  session's supervision on that actor; it carries the deltas of all the session's streams
  there, per window (``window`` s after an item's first entry, or ``max_deltas`` deltas, or a
  stream's first delta, whichever first; :data:`WINDOW` — or ``MELLEA_ACTORS_RAY_WINDOW_MS``
  when the engine starts — and :data:`MAX_DELTAS`), and the Ray side's supervision records
  and hosts view. An item is a few columns of plain values with one entry per stream, that
  stream's deltas of the window joined into one text. One reader task per channel, on the
  session's loop, re-emits the records into the session's log (with ``ray_actor_id``,
  ``node_id`` and ``ray_actor``), replays each entry into its stream's sink — one ``add`` and
  one ``flush`` per entry — and completes the stream's ``stream_chat`` with its FINAL / ERROR
  (the Ray side's last word: not retried here). So the caller parses no HTTP and no JSON, and
  its cost per entry is the sink's, not per delta. Starts are plain calls, batched per loop
  iteration, each carrying the session's :class:`~mellea_actors.runtime.ray_worker.SessionConfig`
  (the session starts there with the first). Each channel counts its ``items``, ``entries``
  and ``deltas``.
* **Hosts.** ``session.hosts.add`` / ``remove`` update the session's registry (the
  configuration of channels opened later), then go to every Ray supervisor with a channel
  (:meth:`RaySession.add_host`); :meth:`RaySession.host_views` sums their views (in flight
  summed, the worst state), :meth:`RaySession.describe` gives each Ray supervisor with its
  hosts for the actor tree.
* **Cancellation.** Cancelling the task in :meth:`RaySession.stream_chat` (``thunk.cancel()``,
  a "fail" verdict, leaving ``async for``, session close) sends the Ray supervisor
  ``cancel(caller_id, stream_id)`` over the channel's control link and as a Ray call (or drops
  the start if it was not sent yet): its supervisor cancels the stream's task, whose socket
  closes. Closing the session's channels cancels the pumps (each Ray supervisor ends the
  session there) and waits for the readers.
* **A Ray supervisor's death** (``ray.kill``, a crash, its node lost) fails its channels'
  pumps, so every stream on it sees it: a :class:`RayActorLostError` (a transient
  ``StreamDroppedError``): before any delta the caller's supervisor sends the generation again
  (its only retry), and this engine sends it to another Ray supervisor; after text it is the
  reader's error, naming the Ray actor and node. Every step is logged to the session's
  supervision log (``ray_worker_started``, ``ray_stream`` with the Ray supervisor chosen,
  ``ray_worker_died``, ``ray_worker_restarted``, ``ray_workers_stopped``), each with
  ``ray_actor_id`` and ``node_id``.

Ray is imported only when an engine starts: without it, :func:`ray_module` raises
:class:`RayNotInstalledError` naming the extra (``pip install 'mellea_actors[ray]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mellea_actors.errors import (
    BackendError,
    BackendUnavailableError,
    InvalidInputError,
    MelleaActorsError,
    StreamDroppedError,
)
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.runtime.host_pool import (
    TAGS_EVERY,
    HostRegistry,
    HostSpec,
    HostView,
    default_capacity,
)
from mellea_actors.runtime.ray_worker import (
    ERROR,
    FINAL,
    HostsNews,
    Item,
    News,
    RayGenerationSupervisor,
    SessionConfig,
    TransportSettings,
)
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.transport.ollama_http import FinalObject, normalize_host

if TYPE_CHECKING:
    from mellea_actors.runtime.log import SupervisionLog
    from mellea_actors.transport.chat_request import GenerationRequest
    from mellea_actors.transport.ollama_http import DeltaSink

__all__ = [
    "CALLER_BREAKERS",
    "RAY_NAMESPACE",
    "RayActorLostError",
    "RayCallerPolicy",
    "RayEngine",
    "RayNotInstalledError",
    "RaySession",
    "RayTransport",
    "RayUnreachableError",
    "caller_policy",
    "ray_module",
]

RAY_NAMESPACE = "mellea_actors"
WINDOW = 0.01
"""Seconds a channel's item may wait after its first entry (a stream's first delta never
waits). Read when a RayTransport is made (``MELLEA_ACTORS_RAY_WINDOW_MS`` overrides it). 10 ms,
the least the design allows: 20 ms measured 0 to 10 % less CPU per chunk in the caller (fewer
Ray items, each 0.5 to 1 ms of Ray's CPU in the caller) for 7 ms more delay at p50
(bench/ray_streams.py, bench/README.md)."""
MAX_DELTAS = 512
"""Deltas (and ends) per channel item at most: the item leaves at once when it holds them."""
MAX_DEFAULT_WORKERS = 2
PROBE_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to an explicit Ray address before any ``ray.init``."""

_log = logging.getLogger(__name__)
_engine_ids = itertools.count(1)
_transport_ids = itertools.count(1)
_channel_ids = itertools.count(1)


class RayNotInstalledError(InvalidInputError, ImportError):
    """``engine="ray"`` without Ray installed (also an ``ImportError``)."""


class RayUnreachableError(MelleaActorsError, ConnectionError):
    """``engine="ray"`` with a Ray address at which no cluster answers (also a
    ``ConnectionError``): raised by ``start_session`` itself, before any request."""


def _parse_address(address: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of ``"ray://HOST:PORT"`` (scheme ``"ray://"``) or
    ``"HOST:PORT"`` (a GCS address, scheme ``""``); None for ``"auto"``; otherwise an
    :class:`InvalidInputError`."""
    if address == "auto":
        return None
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address[len(scheme) :]
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(
            f"ray_address must be None, 'auto', 'ray://HOST:PORT' (Ray Client) or 'HOST:PORT' "
            f"(the cluster's GCS), got {address!r}"
        )
    return scheme, host, int(port)


def _probe(address: str, timeout: float) -> None:
    """Fail now, with :class:`RayUnreachableError`, if nothing listens at ``address``."""
    parsed = _parse_address(address)
    if parsed is None:
        return
    _, host, port = parsed
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise RayUnreachableError(
            f"no Ray cluster answers at {address!r} ({host}:{port}: "
            f"{exc.strerror or type(exc).__name__}); start one (ray start --head) or pass "
            "ray_address=None for a local Ray"
        ) from exc


def _same_host_port(a: str, b: str) -> bool:
    def resolve(address: str) -> tuple[str, int] | None:
        parsed = _parse_address(address)
        if parsed is None:
            return None
        with contextlib.suppress(OSError):
            return socket.gethostbyname(parsed[1]), parsed[2]
        return parsed[1], parsed[2]

    return resolve(a) == resolve(b)


def ray_module() -> Any:
    """``import ray``, or :class:`RayNotInstalledError` naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise RayNotInstalledError(
            "engine='ray' (or MELLEA_ACTORS_ENGINE=ray) needs Ray: pip install 'mellea_actors[ray]'"
        ) from exc
    return ray


@dataclass(eq=False)
class _Worker:
    """One Ray generation supervisor as the engine sees it (fields under the engine's lock)."""

    name: str
    handle: Any
    actor_id: str = ""
    node_id: str = ""
    pid: int = 0
    control: tuple[str, int, str] | None = None
    """The worker's control port ``(ip, port, token)`` (:mod:`~.ray_worker`, "Control link")."""
    in_flight: int = 0
    down: bool = False
    deaths: int = 0
    streams: set[str] = field(default_factory=set)

    def describe(self) -> str:
        return f"Ray actor {self.name} (id {self.actor_id}) on node {self.node_id[:12]}"


class RayEngine:
    """Ray and the Ray generation supervisors of this process (see the module docstring)."""

    _engines: dict[str | None, RayEngine] = {}
    _engines_lock = threading.Lock()

    @classmethod
    def acquire(
        cls, address: str | None = None, *, workers: int | None = None, log: SupervisionLog
    ) -> RayEngine:
        """The engine for ``address`` (started now if needed), one reference more (any thread)."""
        if address is not None and not isinstance(address, str):
            raise InvalidInputError(
                f"ray_address must be None, 'auto', 'ray://HOST:PORT' or 'HOST:PORT', got "
                f"{address!r}"
            )
        if address is not None:
            _parse_address(address)  # InvalidInputError now, before anything starts
        window = _window_from_env()
        if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
        ):
            raise InvalidInputError(f"ray_workers must be an int >= 1, got {workers!r}")
        ray_module()
        with cls._engines_lock:
            engine = cls._engines.get(address)
            if engine is None or engine._stopped:
                engine = cls(address, workers)
                engine.window = window
                cls._engines[address] = engine
            engine._users += 1
            engine._logs.add(log)
        try:
            engine._start(log)
        except BaseException:
            engine.release(log)
            raise
        return engine

    def __init__(self, address: str | None, workers: int | None) -> None:
        self.address = address
        self.id = f"{os.getpid()}-{next(_engine_ids)}"
        self._wanted = workers
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._users = 0
        self._logs: weakref.WeakSet[SupervisionLog] = weakref.WeakSet()
        self._started_ray = False
        self.client = False
        """Connected through Ray Client (``ray://``): channels poll (no streaming calls)."""
        self.window: float | None = None
        """``MELLEA_ACTORS_RAY_WINDOW_MS`` when the engine started (s), else None: WINDOW."""
        self._started = False
        self._stopped = False

    # lifecycle ---------------------------------------------------------------------------------
    def _start(self, log: SupervisionLog) -> None:
        with self._start_lock:
            if self._started:
                for w in self.workers():
                    self._emit_worker(log, "ray_worker_started", w, reason="shared by sessions")
                return
            ray = ray_module()
            self._connect(ray)
            count, nodes = self._placement(ray)
            remote = ray.remote(RayGenerationSupervisor)
            handles = []
            for n in range(count):
                name = f"mellea-actors-{self.id}-w{n}"
                options: dict[str, Any] = {
                    "name": name,
                    "namespace": RAY_NAMESPACE,
                    "num_cpus": 0,
                    "max_restarts": -1,
                    "max_task_retries": 0,
                    "max_concurrency": 100_000,
                    "lifetime": None,
                }
                if len(nodes) > 1:
                    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                    options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                        nodes[n % len(nodes)], soft=True
                    )
                handles.append((name, remote.options(**options).remote(name)))
            wheres = ray.get([h.where.remote() for _, h in handles], timeout=60)
            with self._lock:
                for (name, handle), where in zip(handles, wheres, strict=True):
                    self._workers.append(
                        _Worker(
                            name,
                            handle,
                            actor_id=where["actor_id"],
                            node_id=where["node_id"],
                            pid=where["pid"],
                            control=where.get("control"),
                        )
                    )
            self._started = True
            for w in self.workers():
                self._emit_worker(log, "ray_worker_started", w, reason=f"pid {w.pid}")

    def _connect(self, ray: Any) -> None:
        """Join (or start) Ray: ``ray_address``, else ``RAY_ADDRESS``, else a local Ray; an
        explicit address is probed first (:class:`RayUnreachableError` within
        :data:`PROBE_TIMEOUT` s, not Ray's own minute of retries)."""
        address = self.address or os.environ.get("RAY_ADDRESS", "").strip() or None
        probe = address is not None
        if address is not None and address != self.address:  # RAY_ADDRESS: whatever Ray takes
            try:
                _parse_address(address)
            except InvalidInputError:  # e.g. "local": Ray's own business, not probed
                probe = False
        if ray.is_initialized():  # the user's own Ray (or a session's): use it
            if self.address is not None:
                _probe(self.address, PROBE_TIMEOUT)
            self.client = _client_mode()
            current = "" if self.client else str(ray.get_runtime_context().gcs_address or "")
            if (
                address is not None
                and self.address is not None  # RAY_ADDRESS is the user's concern here
                and not address.startswith("ray://")
                and address != "auto"
                and current
                and not _same_host_port(address, current)
            ):
                raise InvalidInputError(
                    f"this process is connected to the Ray cluster at {current} already; "
                    f"ray_address={address!r} names another one (one process joins one "
                    "cluster: call ray.shutdown() first, or pass ray_address=None)"
                )
            return
        if probe and address is not None:
            _probe(address, PROBE_TIMEOUT)
        if address is None:
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                namespace=RAY_NAMESPACE,
            )
        elif address.startswith("ray://"):  # Ray Client: its builder takes few arguments
            ray.init(address=address, namespace=RAY_NAMESPACE, logging_level=logging.WARNING)
        else:  # a cluster someone else runs: ray.shutdown() only disconnects from it
            try:
                ray.init(
                    address=address,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                    namespace=RAY_NAMESPACE,
                )
            except ConnectionError as exc:  # "auto" with nothing running, a dead GCS, ...
                raise RayUnreachableError(
                    f"no Ray cluster found at ray_address={address!r}: {exc}"
                ) from exc
        self._started_ray = True
        self.client = _client_mode()

    def _placement(self, ray: Any) -> tuple[int, list[str]]:
        """How many workers, and the alive nodes to spread them over."""
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        wanted = self._wanted
        if wanted is None:
            env = os.environ.get("MELLEA_ACTORS_RAY_WORKERS", "").strip()
            if env:
                try:
                    wanted = int(env)
                except ValueError:
                    wanted = 0
                if wanted < 1:
                    raise InvalidInputError(
                        f"MELLEA_ACTORS_RAY_WORKERS must be an int >= 1, got {env!r}"
                    )
        if wanted is None:
            if len(nodes) > 1:
                wanted = len(nodes)
            else:
                cpus = int(ray.cluster_resources().get("CPU", 1))
                wanted = max(1, min(cpus, MAX_DEFAULT_WORKERS))
        return wanted, nodes

    def release(self, log: SupervisionLog | None = None) -> None:
        """One reference less; the last one stops the workers (and Ray, if we started it)."""
        with self._engines_lock:
            self._users -= 1
            if log is not None:
                self._logs.discard(log)
            if self._users > 0:
                return
            self._stopped = True
            if RayEngine._engines.get(self.address) is self:
                del RayEngine._engines[self.address]
        self._stop(log)

    def _stop(self, log: SupervisionLog | None) -> None:
        ray = ray_module()
        with self._lock:
            workers, self._workers = self._workers, []
        if ray.is_initialized():
            closing = [w.handle.close.remote() for w in workers if not w.down]
            with contextlib.suppress(Exception):
                ray.wait(closing, num_returns=len(closing), timeout=2)
            for w in workers:
                with contextlib.suppress(Exception):
                    ray.kill(w.handle, no_restart=True)
        if log is not None:
            log.emit(
                "ray_workers_stopped",
                actor=f"ray-engine-{self.id}",
                kind="ray_engine",
                reason=f"{len(workers)} workers killed"
                + ("; Ray shut down (started by this engine)" if self._started_ray else ""),
            )
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    # workers -----------------------------------------------------------------------------------
    def workers(self) -> list[_Worker]:
        with self._lock:
            return list(self._workers)

    def _choose(self, avoid: set[_Worker] | None = None) -> _Worker:
        """The alive worker with the fewest streams, not one of ``avoid`` (those that died
        under this generation) while there is another."""
        with self._lock:
            if not self._workers:
                raise StreamDroppedError("the Ray engine was stopped (its session closed)")
            alive = [w for w in self._workers if not w.down and not (avoid and w in avoid)]
            alive = alive or [w for w in self._workers if not (avoid and w in avoid)]
            choice = min(alive or self._workers, key=lambda w: w.in_flight)
            choice.in_flight += 1
            return choice

    def _done(self, worker: _Worker) -> None:
        with self._lock:
            worker.in_flight -= 1

    def _emit_worker(
        self, log: SupervisionLog | None, event: str, w: _Worker, **fields: Any
    ) -> None:
        targets = [log] if log is not None else list(self._logs)
        for target in targets:
            target.emit(
                event,
                actor=w.name,
                kind="ray_worker",
                parent=f"ray-engine-{self.id}",
                ray_actor_id=w.actor_id,
                node_id=w.node_id,
                **fields,
            )

    def _lost(self, worker: _Worker, log: SupervisionLog, reason: str, thunk: str) -> None:
        """A call to ``worker`` failed because the actor died: avoid it until it answers."""
        with self._lock:
            first = not worker.down
            worker.down = True
            worker.deaths += 1
        self._emit_worker(log, "ray_worker_died", worker, reason=reason, thunk=thunk)
        if not first:
            return
        try:
            future = worker.handle.where.remote().future()
        except Exception:  # Ray is going down
            return
        future.add_done_callback(lambda f: self._back(worker, f))

    def _back(self, worker: _Worker, future: Any) -> None:
        """Ray restarted the worker (its ``where()`` answered): use it again."""
        try:
            where = future.result()
        except Exception:
            return  # killed for good (session closed, or no restarts left)
        with self._lock:
            worker.down = False
            worker.pid = where["pid"]
            worker.node_id = where["node_id"]
            worker.control = where.get("control")
        self._emit_worker(None, "ray_worker_restarted", worker, reason=f"pid {where['pid']}")


def _window_from_env() -> float | None:
    """``MELLEA_ACTORS_RAY_WINDOW_MS`` in seconds (0 to 1000 ms), None when unset."""
    raw = os.environ.get("MELLEA_ACTORS_RAY_WINDOW_MS", "").strip()
    if not raw:
        return None
    try:
        ms = float(raw)
    except ValueError:
        ms = -1.0
    if not 0 <= ms <= 1000:
        raise InvalidInputError(
            f"MELLEA_ACTORS_RAY_WINDOW_MS must be a number of milliseconds from 0 to 1000, got "
            f"{raw!r}"
        )
    return ms / 1000


def _client_mode() -> bool:
    """Whether this process reaches Ray through Ray Client (``ray://``)."""
    try:
        from ray.util.client import ray as client
    except ImportError:
        return False
    return bool(client.is_connected())


def _is_actor_death(exc: BaseException) -> bool:
    from ray import exceptions as rx

    return isinstance(exc, rx.RayActorError | rx.ActorUnavailableError | rx.WorkerCrashedError)


class RayActorLostError(StreamDroppedError):
    """A Ray generation supervisor died (``ray.kill``, a crash, its node lost) while it ran the
    generation. Before any text the caller's supervisor sends the generation again, to
    another Ray supervisor (:class:`RayCallerPolicy`); after text it is the reader's error,
    naming the Ray actor and node."""


@dataclass(frozen=True)
class RayCallerPolicy(RestartPolicy):
    """The restart policy of a ``engine="ray"`` session's own (caller-side) generation
    supervisor: every restart, busy retry and failover is the Ray supervisor's decision, so
    here only a Ray actor's death before any text is retried (:class:`RayActorLostError`),
    up to ``max_restarts`` times with the session policy's backoff."""

    def should_retry_busy(self, error: BaseException, chunks: int, waited: float) -> bool:
        return False

    def should_restart(self, error: BaseException, restarts_so_far: int, chunks: int) -> bool:
        return (
            isinstance(error, RayActorLostError)
            and chunks == 0
            and restarts_so_far < self.max_restarts
        )


#: The caller-side breaker of a ``engine="ray"`` session never opens: the hosts' breakers
#: are the Ray supervisors' (a BackendUnavailableError arriving here is their final word).
CALLER_BREAKERS = BreakerPolicy(failure_threshold=sys.maxsize)


def caller_policy(policy: RestartPolicy | None) -> RayCallerPolicy:
    """The caller-side :class:`RayCallerPolicy` of a session whose policy is ``policy``."""
    policy = policy or RestartPolicy()
    fields = {f.name: getattr(policy, f.name) for f in dataclasses.fields(RestartPolicy)}
    return RayCallerPolicy(**fields)


class _Listener:
    """One stream as its channel's reader sees it: the supervisor's sink, the future
    ``stream_chat`` awaits, and how many batches of text went to the sink."""

    __slots__ = ("delivered", "future", "sink")

    def __init__(self, sink: DeltaSink, future: asyncio.Future[FinalObject]) -> None:
        self.sink = sink
        self.future = future
        self.delivered = 0


class _Channel:
    """The channel of one session (:class:`RaySession`) to one Ray supervisor (the session's
    loop only): the actor's ``pump`` streaming call and the single reader task that dispatches
    each of its items' entries to the streams' sinks, and its news to the session's log and
    hosts view (module docstring, "Batches")."""

    def __init__(
        self,
        worker: _Worker,
        caller_id: str,
        config: SessionConfig,
        window: float,
        max_deltas: int,
        *,
        log: SupervisionLog,
        polling: bool = False,
    ) -> None:
        self.worker = worker
        self.caller_id = caller_id
        self.config = config
        self.log = log
        self.streams: dict[int, _Listener] = {}
        self.ids = itertools.count(1)  # stream ids, unique within this channel
        self.items = 0  # Ray items received
        self.entries = 0  # their entries (one per stream with news per item)
        self.deltas = 0  # the raw deltas they carried
        self.hosts: tuple[HostView, ...] | None = None
        """The session's hosts on that Ray supervisor, as its newest item or host change's
        answer said (replaced whole: read from any thread)."""
        self._hosts_seq = 0
        self.closed = False
        self._window = window
        self._max_deltas = max_deltas
        self._loop = asyncio.get_running_loop()
        self._starts: list[tuple[int, GenerationRequest]] = []
        self._started: asyncio.Future[bool] | None = None
        self._polling = polling
        self._generator: Any = (
            None
            if polling
            else worker.handle.pump.options(num_returns="streaming").remote(
                caller_id, config, window, max_deltas
            )
        )
        self._task = asyncio.get_running_loop().create_task(
            self._read(), name=f"ray-channel-{caller_id}"
        )
        self._link = None if worker.control is None else _Link(worker.control, caller_id)

    async def _read(self) -> None:
        failure: BaseException = StreamDroppedError(
            f"the channel to {self.worker.describe()} was closed"
        )
        try:
            if self._polling:  # Ray Client: one call per item
                poll = self.worker.handle.poll
                config: SessionConfig | None = self.config  # with the first poll only
                while item := await _client_safe(
                    poll.remote(self.caller_id, config, self._window, self._max_deltas)
                ):
                    config = None
                    self.dispatch(item)
            else:
                async for ref in self._generator:
                    self.dispatch(await ref)
            failure = StreamDroppedError(
                f"the channel to {self.worker.describe()} ended (the Ray supervisor closed)"
            )
        except Exception as exc:  # the actor died (or Ray failed): every stream on it sees it
            failure = exc
        finally:
            self.closed = True
            streams, self.streams = self.streams, {}
            for listener in streams.values():
                if not listener.future.done():
                    listener.future.set_exception(failure)

    def start(self, stream_id: int, request: GenerationRequest) -> asyncio.Future[bool]:
        """Start a stream on the Ray supervisor: the starts of one loop iteration go in one
        call."""
        if self._started is None:
            self._started = self._loop.create_future()
            self._started.add_done_callback(_retrieve)
            self._loop.call_soon(self._send_starts)
        self._starts.append((stream_id, request))
        return self._started

    def unstart(self, stream_id: int) -> bool:
        """Drop a start not sent yet (its stream was cancelled meanwhile); False if sent."""
        for n, start in enumerate(self._starts):
            if start[0] == stream_id:
                del self._starts[n]
                return True
        return False

    def _send_starts(self) -> None:
        starts, self._starts = self._starts, []
        future, self._started = self._started, None
        assert future is not None
        if not starts:
            future.set_result(True)
            return
        try:
            ref = self.worker.handle.start.remote(
                self.caller_id, self.config, starts, self._window, self._max_deltas
            )
        except Exception as exc:
            future.set_exception(exc)
            return
        self._loop.create_task(_resolve(ref, future, client=self._polling))

    def dispatch(self, item: Item) -> None:
        """Replay one item (:mod:`~mellea_actors.runtime.ray_worker`, "Items"): its news
        first (the Ray supervisor's records, re-emitted here), then per entry one ``add`` of
        its text and one ``flush`` into its stream's sink; then the ends (a stream's last
        text reaches its thunk before its end)."""
        ids, texts, deltas, thinks, ends, news = item
        self.items += 1
        self.entries += len(ids)
        self.deltas += deltas
        if news is not None:
            self._news(news)
        streams = self.streams
        if thinks is None:
            for stream_id, text in zip(ids, texts, strict=True):
                if not text:
                    continue
                listener = streams.get(stream_id)
                if listener is None:  # cancelled meanwhile
                    continue
                sink = listener.sink
                try:
                    sink.add(text, "")
                    sink.flush()
                except Exception as exc:  # the sink failed: that stream ends with its error
                    self._sink_failed(stream_id, listener, exc)
                    continue
                listener.delivered += 1
        else:
            for stream_id, text, think in zip(ids, texts, thinks, strict=True):
                if not text and not think:
                    continue
                listener = streams.get(stream_id)
                if listener is None:
                    continue
                sink = listener.sink
                try:
                    sink.add(text, think)
                    sink.flush()
                except Exception as exc:
                    self._sink_failed(stream_id, listener, exc)
                    continue
                listener.delivered += 1
        if ends is None:
            return
        for stream_id, end in ends:
            listener = streams.pop(stream_id, None)
            if listener is None or listener.future.done():
                continue
            if end[0] == FINAL:
                listener.future.set_result(FinalObject(*end[1:6]))
            else:
                error = end[1]
                error.recorded_remotely = True  # its generation_failed came with the records
                listener.future.set_exception(error)

    def _news(self, news: News) -> None:
        """The Ray supervisor's records, re-emitted into the session's log with the actor's
        Ray id and node (``thunk`` is the caller's request id: the same), and its hosts."""
        records, hosts = news
        if hosts is not None:
            self.set_hosts(hosts)
        if not records:
            return
        worker = self.worker
        emit = self.log.emit
        for record in records:
            fields = dict(record)
            event = fields.pop("event")
            fields.pop("ts", None)  # the caller's log stamps its own time
            fields["ray_actor_id"] = worker.actor_id
            fields["node_id"] = worker.node_id
            fields.setdefault("ray_actor", worker.name)
            emit(event, **fields)

    def set_hosts(self, hosts: HostsNews) -> None:
        """The session's hosts there, unless a newer view arrived already."""
        seq, views = hosts
        if seq > self._hosts_seq:
            self._hosts_seq = seq
            self.hosts = views

    def _sink_failed(self, stream_id: int, listener: _Listener, exc: Exception) -> None:
        del self.streams[stream_id]
        self.cancel(stream_id)
        if not listener.future.done():
            listener.future.set_exception(exc)

    def cancel(self, stream_id: int) -> None:
        """Stop one stream on the Ray supervisor (its socket closes now): through the control
        link (one hop), and through Ray (ordered after the start; there if the link is not)."""
        if self._link is not None:
            self._link.cancel(stream_id)
        with contextlib.suppress(Exception):
            self.worker.handle.cancel.remote(self.caller_id, stream_id)

    @property
    def reader(self) -> asyncio.Task[None]:
        return self._task

    def close(self) -> None:
        """Stop the pump (the Ray supervisor ends this session there) and the reader."""
        self.closed = True
        if self._link is not None:
            self._link.close()
        with contextlib.suppress(Exception):
            if self._polling:
                self.worker.handle.leave.remote(self.caller_id)
            else:
                ray_module().cancel(self._generator)
        self._task.cancel()

    def forget(self) -> None:
        """Drop the Ray streaming call (after the reader ended)."""
        self._generator = None


class _Link:
    """A channel's control link to its worker (:mod:`~mellea_actors.runtime.ray_worker`,
    "Control link"): a TCP connection opened in the background (nothing waits for it; a
    cancel before it is up, or after it broke, goes through Ray alone)."""

    __slots__ = ("_task", "_writer")

    def __init__(self, control: tuple[str, int, str], caller_id: str) -> None:
        self._writer: asyncio.StreamWriter | None = None
        self._task = asyncio.get_running_loop().create_task(self._open(control, caller_id))

    async def _open(self, control: tuple[str, int, str], caller_id: str) -> None:
        host, port, token = control
        try:
            async with asyncio.timeout(5):
                _, writer = await asyncio.open_connection(host, port)  # TCP_NODELAY: asyncio's
        except (OSError, TimeoutError):
            return
        writer.write(f"{token} {caller_id}\n".encode())
        self._writer = writer

    def cancel(self, stream_id: int) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(Exception):
                writer.write(b"%d\n" % stream_id)

    def close(self) -> None:
        self._task.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: the streams that awaited it may all have left


async def _client_safe(ref: Any) -> Any:
    """Await a Ray Client ``ObjectRef`` without ever cancelling its ``concurrent.futures``
    future. Ray Client (2.x, ``ClientObjectRef.future``) sets the result of that future
    without checking whether it was cancelled: ``await ref`` cancelled (a channel closing while
    its ``poll`` waits, a timeout) makes its data thread log an ``InvalidStateError`` when the
    answer comes, and die with a traceback when the connection closes (its pending callbacks
    raise again). Shielded, a cancelled wait leaves the future to complete unobserved."""
    return await asyncio.shield(asyncio.wrap_future(ref.future()))


async def _resolve(ref: Any, future: asyncio.Future[bool], *, client: bool = False) -> None:
    try:
        result = await (_client_safe(ref) if client else ref)
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(bool(result))


_STATE_RANK = {"up": 0, "half-open": 1, "open": 2, "draining": 3}


class RaySession:
    """The caller side of one ``engine="ray"`` session (its actor loop, except
    :meth:`host_views` and :meth:`describe`, which read snapshots from any thread): its
    channels, one per Ray generation supervisor it uses, each the session's supervision
    there; the choice of a Ray supervisor per attempt; host changes sent to all of them."""

    def __init__(
        self,
        engine: RayEngine,
        *,
        log: SupervisionLog,
        session_id: str,
        settings: TransportSettings,
        policy: RestartPolicy | None = None,
        breaker_policy: BreakerPolicy | None = None,
        hosts: HostRegistry | None = None,
        tags_every: float = TAGS_EVERY,
        window: float | None = None,
        max_deltas: int | None = None,
    ) -> None:
        self.engine = engine
        self._log = log
        self._session_id = session_id
        self._settings = settings
        self._policy = policy
        self._breaker_policy = breaker_policy
        self._registry = hosts
        self._tags_every = tags_every
        if window is None:  # read now: the environment's (when the engine started), or WINDOW
            window = WINDOW if engine.window is None else engine.window
        self.window = window
        self.max_deltas = MAX_DELTAS if max_deltas is None else max_deltas
        self._died_under: dict[str, set[_Worker]] = {}
        """Request id -> the Ray supervisors that died during one of its attempts (its retry
        goes elsewhere); dropped when an attempt ends otherwise."""
        self._id = next(_transport_ids)
        self._channels: dict[_Worker, _Channel] = {}
        """Ray supervisor -> this session's channel to it (opened by the first stream there)."""
        self._closed = False

    @property
    def channels(self) -> list[_Channel]:
        return list(self._channels.values())

    def _config(self) -> SessionConfig:
        hosts = None if self._registry is None else tuple(self._registry.snapshot())
        return SessionConfig(
            self._session_id,
            self._settings,
            self._policy,
            self._breaker_policy,
            hosts,
            self._tags_every,
        )

    def _channel(self, worker: _Worker) -> _Channel:
        channel = self._channels.get(worker)
        if channel is None or channel.closed:
            caller_id = f"{self.engine.id}-s{self._id}-{next(_channel_ids)}"
            channel = _Channel(
                worker,
                caller_id,
                self._config(),
                self.window,
                self.max_deltas,
                log=self._log,
                polling=self.engine.client,
            )
            self._channels[worker] = channel
        return channel

    async def stream_chat(
        self, host: str, request: GenerationRequest, sink: DeltaSink
    ) -> FinalObject:
        """One generation, supervised by a Ray supervisor: its deltas into ``sink``; its end
        is what that supervisor decided (after its own restarts and failovers)."""
        rid = request.request_id
        if self._closed:
            raise StreamDroppedError("the session's Ray channels are closed", host=host)
        worker = self.engine._choose(self._died_under.get(rid))
        self._log.emit(
            "ray_stream",
            actor=worker.name,
            kind="ray_worker",
            thunk=request.request_id,
            ray_actor_id=worker.actor_id,
            node_id=worker.node_id,
            host=host,
        )
        listener: _Listener | None = None
        died = False
        channel: _Channel | None = None
        stream_id = 0
        try:
            channel = self._channel(worker)
            stream_id = next(channel.ids)
            listener = _Listener(sink, asyncio.get_running_loop().create_future())
            channel.streams[stream_id] = listener  # before start: its first item may be near
            started = await asyncio.shield(channel.start(stream_id, request))
            if not started and not listener.future.done():
                raise RayActorLostError(
                    f"the channel to {worker.describe()} closed before the stream started",
                    host=host,
                    model=request.model,
                )
            return await listener.future
        except asyncio.CancelledError:
            if channel is not None and not channel.unstart(stream_id):
                channel.cancel(stream_id)  # the Ray supervisor closes the socket now
            raise
        except BackendError:
            raise
        except Exception as exc:
            died = _is_actor_death(exc)
            delivered = 0 if listener is None else listener.delivered
            raise self._translate(exc, worker, host, request, delivered) from exc
        finally:
            if channel is not None:
                channel.streams.pop(stream_id, None)
            self.engine._done(worker)
            if not died:
                self._died_under.pop(rid, None)  # this attempt did not die: no retry follows

    def _translate(
        self,
        exc: Exception,
        worker: _Worker,
        host: str,
        request: GenerationRequest,
        delivered: int,
    ) -> BackendError:
        if not _is_actor_death(exc):
            return BackendError(
                f"the Ray call to {worker.describe()} failed: {exc!r}",
                host=host,
                model=request.model,
            )
        when = (
            f"after text was delivered ({delivered} batches; not retried)"
            if delivered
            else "before any text (the generation is sent again to another Ray supervisor)"
        )
        reason = f"{worker.describe()} died {when}: {type(exc).__name__}"
        self.engine._lost(worker, self._log, reason, request.request_id)
        if len(self._died_under) > 10_000:  # retries that never came (cancelled meanwhile)
            self._died_under.clear()
        self._died_under.setdefault(request.request_id, set()).add(worker)
        return RayActorLostError(
            f"the Ray generation supervisor {reason}", host=host, model=request.model
        )

    async def _await(self, ref: Any, timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            return await (_client_safe(ref) if self.engine.client else ref)

    async def call(self, method: str, host: str, timeout: float) -> Any:
        """``version`` / ``list_models`` of ``host``, asked by the least busy Ray supervisor."""
        worker = self.engine._choose()
        try:
            ref = getattr(worker.handle, method).remote(host, self._settings, timeout)
            try:
                kind, value = await self._await(ref, timeout + 5)
            except TimeoutError:
                raise BackendUnavailableError(
                    f"{worker.describe()} did not answer {method} for {host} within "
                    f"{timeout + 5} s",
                    host=host,
                ) from None
        except BackendError:
            raise
        except Exception as exc:
            if _is_actor_death(exc):
                self.engine._lost(worker, self._log, f"{worker.describe()} died", method)
            raise BackendError(
                f"the Ray call {method} to {worker.describe()} failed: {exc!r}", host=host
            ) from exc
        finally:
            self.engine._done(worker)
        if kind == ERROR:
            raise value
        return value

    # hosts ---------------------------------------------------------------------------------
    async def _broadcast(self, method: str, *args: Any, timeout: float) -> list[Any]:
        """Call ``method(caller_id, *args)`` on every Ray supervisor this session has a
        channel to; each answer is that session's hosts there (kept as the channel's view).
        An actor that died meanwhile is skipped (its session there died with it); the first
        ``(ERROR, exception)`` is raised."""
        channels = [c for c in self._channels.values() if not c.closed]
        refs = [getattr(c.worker.handle, method).remote(c.caller_id, *args) for c in channels]
        answers = await asyncio.gather(
            *(self._await(ref, timeout) for ref in refs), return_exceptions=True
        )
        values = []
        for channel, answer in zip(channels, answers, strict=True):
            if isinstance(answer, BaseException):
                if isinstance(answer, TimeoutError):
                    raise BackendUnavailableError(
                        f"a Ray generation supervisor did not answer {method} within {timeout} s"
                    )
                continue
            kind, value = answer
            if kind == ERROR:
                raise value
            if value is not None:
                channel.set_hosts(value)
            values.append(value)
        return values

    async def add_host(self, spec: HostSpec, timeout: float = 10.0) -> HostView:
        """``hosts.add`` on every Ray supervisor of this session (the registry, the
        configuration of the channels to come, was updated by the system)."""
        await self._broadcast("add_host", spec.url, spec.capacity, spec.weight, timeout=timeout)
        for view in self.host_views():
            if view.url == spec.url:
                return view
        return HostView(spec.url, "up", 0, spec.capacity or default_capacity(), spec.weight, None)

    async def remove_host(self, url: str, drain: bool, timeout: float = 10.0) -> None:
        """``hosts.remove`` on every Ray supervisor of this session."""
        await self._broadcast("remove_host", url, drain, timeout=timeout)

    def host_views(self) -> list[HostView]:
        """The session's hosts over its Ray supervisors (any thread): per host, the in-flight
        counts summed, the worst state (draining, open, half-open, up); a configured host no
        supervisor reported yet is ``up`` with nothing in flight."""
        specs = {} if self._registry is None else {s.url: s for s in self._registry.snapshot()}
        seen: dict[str, list[HostView]] = {}
        for channel in list(self._channels.values()):
            if channel.closed or channel.hosts is None:
                continue
            for view in channel.hosts:
                seen.setdefault(view.url, []).append(view)
        out = []
        for url, views in seen.items():
            if url not in specs and all(v.state != "draining" for v in views):
                continue  # removed since (its next item will say so)
            state = max((v.state for v in views), key=lambda s: _STATE_RANK.get(s, 0))
            models = next((v.models for v in views if v.models is not None), None)
            first = views[0]
            out.append(
                HostView(
                    url,
                    state,
                    sum(v.in_flight for v in views),
                    first.capacity,
                    first.weight,
                    models,
                )
            )
        for url, spec in specs.items():
            if url not in seen:
                out.append(
                    HostView(url, "up", 0, spec.capacity or default_capacity(), spec.weight, None)
                )
        return out

    def describe(self) -> list[dict[str, Any]]:
        """The Ray generation supervisors with this session's hosts on each (the actor tree)."""
        nodes = []
        for worker in self.engine.workers():
            channel = self._channels.get(worker)
            views: tuple[HostView, ...] | list[HostView] = ()
            if channel is not None and not channel.closed and channel.hosts is not None:
                views = channel.hosts
            elif self._registry is not None:
                views = [
                    HostView(s.url, "up", 0, s.capacity or default_capacity(), s.weight, None)
                    for s in self._registry.snapshot()
                ]
            nodes.append(
                {
                    "id": worker.name,
                    "kind": "ray_generation_supervisor",
                    "ray_actor_id": worker.actor_id,
                    "node_id": worker.node_id,
                    "in_flight": worker.in_flight,
                    "alive": not worker.down,
                    "session_here": channel is not None and not channel.closed,
                    "children": [
                        {"id": f"host-{v.url}", "kind": "host", **v.as_dict(), "children": []}
                        for v in views
                    ],
                }
            )
        return nodes

    async def aclose(self) -> None:
        """Close the channels (each Ray supervisor ends the session there, cancelling its
        streams)."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
        readers = [channel.reader for channel in channels if not channel.reader.done()]
        if readers:  # ended before Ray may disconnect (a live stream call at shutdown crashes)
            await asyncio.wait(readers, timeout=2)
        for channel in channels:
            channel.forget()


class RayTransport:
    """The ``ChatTransport`` of one Ollama host under ``engine="ray"`` (the session's actor
    loop only): what the caller's generation supervisor relays through; the session's
    :class:`RaySession` does the work."""

    def __init__(self, host: str, session: RaySession) -> None:
        self.host = normalize_host(host)
        self.session = session

    @property
    def window(self) -> float:
        """The session's channel window (s)."""
        return self.session.window

    async def stream_chat(self, request: GenerationRequest, sink: DeltaSink) -> FinalObject:
        return await self.session.stream_chat(self.host, request, sink)

    async def version(self, timeout: float = 5.0) -> str:
        result: str = await self.session.call("version", self.host, timeout)
        return result

    async def list_models(self, timeout: float = 5.0) -> list[str]:
        result: list[str] = await self.session.call("list_models", self.host, timeout)
        return result

    async def aclose(self) -> None:
        """Close the session's channels (once; the connections live in the Ray supervisors)."""
        await self.session.aclose()
