"""A pool of Ollama hosts behind one session (SPEC §11): routing, per-host state, the views.

A session started with several hosts (``base_url=[...]``, or ``OLLAMA_HOST="a,b"``) runs its
generations on a :class:`HostPool` owned by its generation supervisor. The supervisor chooses the
host when an *attempt* launches (never the facade): the request's own ``host`` is ignored for a
pooled session.

Routing (:meth:`HostPool.choose`): among the hosts that are *eligible* — not draining, breaker not
open, and known to have the model (a host whose ``/api/tags`` has not answered yet is assumed to
have it; a ``ModelNotFoundError`` from it corrects that and refreshes its tags) — the one whose
load *after* placing the attempt, ``(in_flight + 1) / (capacity * weight)``, is smallest (ties:
the larger effective capacity, then configuration order). So the split follows the capacities,
and a host past its capacity still gets work when every host is as full (Ollama queues it); only
a 503 "server busy" failover asks for a host with room (``in_flight < capacity``).

Per host: its own circuit breaker (:mod:`~mellea_actors.runtime.breaker`, kept by the
supervisor) and its own probes — the breaker's ``/api/version`` probe while it is open, and a tags
watcher that lists ``/api/tags`` when the host joins and every ``tags_every`` seconds (30 s).

States of a host (:class:`HostState`, shown in the actor tree and in ``host_state`` log records):

* ``up``: takes work;
* ``open``: its breaker is open (repeated connection failures): no work until a probe answers;
* ``half-open``: the probe answered; the host takes one attempt at a time until an attempt gets
  an answer from it (then ``up``); a connection failure trips it ``open`` again;
* ``draining``: being removed (``hosts.remove(url, drain=True)``): no new work; it leaves the
  pool (``host_removed``) when its last running attempt ends.

Ownership: a :class:`HostPool` and its :class:`PooledHost` records belong to one generation
supervisor and are read and written only on the actor loop thread, by its handlers and hooks.
Invariant: ``host.in_flight`` is the number of that supervisor's attempts launched on the host
whose ``GeneratorExited`` was not handled yet (acquired in ``_launch``, released exactly once in
``_on_exited``). The :class:`HostRegistry` is the only state shared with other threads: its
``specs`` (the configuration, changed under its lock by the system's ``add_host`` /
``remove_host``, read when a supervisor (re)starts) and its ``view`` (an immutable tuple of
:class:`HostView`, replaced whole by the supervisor after each change, read anywhere).
"""

from __future__ import annotations

import enum
import math
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mellea_actors.errors import BackendUnavailableError, InvalidInputError, ModelNotFoundError
from mellea_actors.transport.ollama_http import normalize_host

if TYPE_CHECKING:
    from mellea_actors.runtime.breaker import CircuitBreaker

__all__ = [
    "TAGS_EVERY",
    "HostPool",
    "HostRegistry",
    "HostSpec",
    "HostState",
    "HostView",
    "PooledHost",
    "default_capacity",
    "model_listed",
]

#: Seconds between two ``/api/tags`` refreshes of a host.
TAGS_EVERY = 30.0


def default_capacity() -> int:
    """A host's default capacity: Ollama's parallelism, ``OLLAMA_NUM_PARALLEL`` (4 if unset or
    not a positive integer) — what one Ollama runs at once before it queues (and, past its
    queue, answers 503 "server busy")."""
    raw = os.environ.get("OLLAMA_NUM_PARALLEL", "")
    try:
        value = int(raw)
    except ValueError:
        return 4
    return value if value >= 1 else 4


def model_listed(models: Collection[str], model: str) -> bool:
    """True if ``model`` is among ``models`` (``/api/tags`` names; ``m`` is ``m:latest``)."""
    names = set(models) | {m.removesuffix(":latest") for m in models}
    return model in names or f"{model}:latest" in names


@dataclass(frozen=True)
class HostSpec:
    """One host of a pool: its URL, its capacity (default :func:`default_capacity`) and an
    optional routing weight (its capacity counts ``weight`` times when choosing)."""

    url: str
    capacity: int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", normalize_host(self.url))
        if self.capacity is not None and (
            isinstance(self.capacity, bool) or not isinstance(self.capacity, int)
        ):
            raise InvalidInputError(f"capacity of {self.url} must be an int, got {self.capacity!r}")
        if self.capacity is not None and self.capacity < 1:
            raise InvalidInputError(f"capacity of {self.url} must be >= 1, got {self.capacity}")
        if (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, int | float)
            or not math.isfinite(self.weight)
            or self.weight <= 0
        ):
            raise InvalidInputError(f"weight of {self.url} must be > 0, got {self.weight!r}")

    @classmethod
    def of(cls, item: object, name: str = "base_url") -> HostSpec:
        """A spec from a URL string or a spec (anything else: InvalidInputError naming ``name``)."""
        if isinstance(item, HostSpec):
            return item
        if isinstance(item, str):
            return cls(normalize_host(item, name=name))
        raise InvalidInputError(
            f"{name} must hold host URLs (str) or HostSpec, got {type(item).__name__}: {item!r}"
        )


class HostState(enum.Enum):
    UP = "up"
    OPEN = "open"
    HALF_OPEN = "half-open"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class HostView:
    """An immutable snapshot of one pooled host (for introspection, from any thread)."""

    url: str
    state: str
    in_flight: int
    capacity: int
    weight: float
    models: tuple[str, ...] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state,
            "in_flight": self.in_flight,
            "capacity": self.capacity,
            "weight": self.weight,
            "models": None if self.models is None else list(self.models),
        }


class PooledHost:
    """The pool's record of one host (loop thread only; see the module docstring)."""

    __slots__ = ("breaker", "capacity", "draining", "in_flight", "models", "trial", "url", "weight")

    def __init__(self, spec: HostSpec, breaker: CircuitBreaker) -> None:
        self.url = spec.url
        self.capacity = spec.capacity or default_capacity()
        self.weight = float(spec.weight)
        self.breaker = breaker
        self.in_flight = 0
        self.draining = False
        self.trial = False
        """Half-open: the breaker's probe answered, no attempt got an answer since."""
        self.models: frozenset[str] | None = None
        """The host's ``/api/tags`` names, None until they answered once."""

    @property
    def state(self) -> HostState:
        if self.draining:
            return HostState.DRAINING
        if self.breaker.is_open:
            return HostState.OPEN
        return HostState.HALF_OPEN if self.trial else HostState.UP

    def has_model(self, model: str) -> bool:
        return self.models is None or model_listed(self.models, model)

    def takes_work(self, model: str) -> bool:
        if self.draining or self.breaker.is_open or not self.has_model(model):
            return False
        return not (self.trial and self.in_flight)

    def view(self) -> HostView:
        models = None if self.models is None else tuple(sorted(self.models))
        return HostView(
            self.url, self.state.value, self.in_flight, self.capacity, self.weight, models
        )

    def describe(self, model: str) -> str:
        """Why this host can or cannot run ``model`` now (for error messages)."""
        if self.draining:
            return "draining (being removed)"
        if self.breaker.is_open:
            return f"circuit breaker open (last: {self.breaker.last_error})"
        if not self.has_model(model):
            listed = ", ".join(sorted(self.models or ())) or "none"
            return f"does not have model {model!r} (has: {listed})"
        return f"{self.state.value}, {self.in_flight}/{self.capacity} in flight"


class HostRegistry:
    """What a pooled system shares between threads: the configuration and the published view.

    ``specs`` is changed only under ``lock`` (by the system's ``add_host`` / ``remove_host``)
    and read by a (re)starting supervisor; ``view`` is written by the supervisor (loop thread),
    replaced whole, and read from any thread.
    """

    def __init__(self, specs: Iterable[HostSpec]) -> None:
        self.lock = threading.Lock()
        self.specs: dict[str, HostSpec] = {}
        for spec in specs:
            if spec.url in self.specs:
                raise InvalidInputError(f"host {spec.url} is listed twice in base_url")
            self.specs[spec.url] = spec
        if not self.specs:
            raise InvalidInputError("base_url is an empty list: name at least one Ollama host")
        self.view: tuple[HostView, ...] = ()

    def snapshot(self) -> list[HostSpec]:
        with self.lock:
            return list(self.specs.values())


class HostPool:
    """The hosts of one supervisor and the routing between them (see the module docstring)."""

    def __init__(
        self, registry: HostRegistry, breaker_for: Callable[[str], CircuitBreaker]
    ) -> None:
        self.registry = registry
        self._breaker_for = breaker_for
        self.hosts: dict[str, PooledHost] = {}  # configuration order
        for spec in registry.snapshot():
            self.add(spec)

    def __iter__(self) -> Iterator[PooledHost]:
        return iter(list(self.hosts.values()))

    def add(self, spec: HostSpec) -> PooledHost:
        host = self.hosts[spec.url] = PooledHost(spec, self._breaker_for(spec.url))
        self.publish()
        return host

    def get(self, url: str) -> PooledHost | None:
        return self.hosts.get(url)

    def discard(self, url: str) -> PooledHost | None:
        host = self.hosts.pop(url, None)
        self.publish()
        return host

    def publish(self) -> None:
        """Replace the registry's view (readers on other threads see one consistent tuple)."""
        self.registry.view = tuple(h.view() for h in self.hosts.values())

    def choose(
        self, model: str, exclude: Collection[str] = (), *, need_room: bool = False
    ) -> PooledHost | None:
        """The host for the next attempt of a ``model`` generation (None: no host can)."""
        best: PooledHost | None = None
        best_key: tuple[float, float] = (math.inf, 0.0)
        for host in self.hosts.values():
            if host.url in exclude or not host.takes_work(model):
                continue
            if need_room and host.in_flight >= host.capacity:
                continue
            effective = host.capacity * host.weight
            key = ((host.in_flight + 1) / effective, -effective)
            if key < best_key:
                best, best_key = host, key
        return best

    def acquire(self, host: PooledHost) -> None:
        host.in_flight += 1
        self.publish()

    def release(self, host: PooledHost) -> None:
        host.in_flight -= 1
        self.publish()

    def unavailable_error(
        self, model: str, errors: dict[str, str] | None = None, request_id: str | None = None
    ) -> BackendUnavailableError | ModelNotFoundError:
        """The one error of a generation no host of the pool can run: it names every host,
        what is wrong with each, and the last error each gave this generation (``errors``)."""
        errors = errors or {}
        what = f"generation {request_id}" if request_id else "the generation"
        parts = []
        for host in self.hosts.values():
            why = host.describe(model)
            if host.url in errors:
                why = f"{why}; failed it with: {errors[host.url]}"
            parts.append(f"{host.url} ({why})")
        for url, error in errors.items():
            if url not in self.hosts:
                parts.append(f"{url} (removed from the pool; failed it with: {error})")
        listed = "; ".join(parts) or "the pool has no hosts"
        urls = ", ".join(self.hosts) or None
        if self.hosts and not errors and not any(h.has_model(model) for h in self.hosts.values()):
            return ModelNotFoundError(
                f"no Ollama host of the pool has model {model!r}: {listed}", host=urls, model=model
            )
        return BackendUnavailableError(
            f"no Ollama host of the pool could run {what} for model {model!r}: {listed}",
            host=urls,
            model=model,
        )
