"""``MelleaSession`` and ``start_session``: the user's entry point.

A session owns an :class:`~mellea_actors.runtime.system.ActorSystem` (one event loop — hosted on
the loop that opened the session, else on a thread of its own —, a generation supervisor, one
thunk actor per generation), an :class:`OllamaBackend` and a context.

Async methods (``ainstruct``, ``aact``, ``aquery``, ``atransform``) without requirements return an
uncomputed thunk at once: generation has already started in the background. With requirements the
sampling strategy (rejection sampling, budget 2) runs and a computed thunk is returned.
``achat`` and ``avalidate`` return their results. Sync methods run the async twin on the
session's loop thread and block until it is done: they work from any thread, also one whose own
event loop is running (a notebook cell), but not from the session's loop thread itself.

Context: the session's ``ctx`` is replaced (never mutated) after each call. With a context that
is not a :class:`SimpleContext`, an async request issued while an earlier request of this session
is still unresolved logs the stale-context warning (the earlier turn may be missing from the new
request's history); sequential awaited calls log nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Literal, TypeVar

import pydantic

from mellea_actors._arguments import check_count, check_instance, check_text, check_timeout
from mellea_actors.backends.host_resolution import (
    MELLEA_DEFAULT_MODELS,
    MODEL_ENV,
    choose_default_model,
    configured_model,
    resolve_hosts,
)
from mellea_actors.backends.model_ids import ModelIdentifier, ollama_model_name
from mellea_actors.backends.model_options import ModelOption
from mellea_actors.backends.ollama import OllamaBackend
from mellea_actors.core.cblock import CBlock, Component
from mellea_actors.core.context_chain import Context
from mellea_actors.core.model_output import ModelOutputThunk
from mellea_actors.core.requirement import Requirement, ValidationResult, reqify
from mellea_actors.errors import BackendUnavailableError, InvalidInputError, ModelNotFoundError
from mellea_actors.runtime.breaker import BreakerPolicy
from mellea_actors.runtime.crossing import in_thread
from mellea_actors.runtime.host_pool import HostSpec, model_listed
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.runtime.system import ActorSystem, Hosts, check_engine_loop
from mellea_actors.stdlib.components import Instruction, Message, apply_user_variables
from mellea_actors.stdlib.context import ChatContext, SimpleContext
from mellea_actors.stdlib.mobject import Query, Transform
from mellea_actors.stdlib.sampling import (
    RejectionSamplingStrategy,
    SamplingResult,
    SamplingStrategy,
)

__all__ = ["DEFAULT_MODEL", "MelleaSession", "start_session"]

_log = logging.getLogger("mellea_actors")

T = TypeVar("T")

DEFAULT_MODEL = "smollm2:135m"
"""The model of ``start_session()`` when neither ``model_id`` nor ``MELLEA_ACTORS_MODEL`` names
one and the host has no Mellea default model (see
:func:`~mellea_actors.backends.host_resolution.choose_default_model`): the small model that the
project's local Ollama registers (``make run`` / ``make test``)."""

STALE_CONTEXT_WARNING = (
    "Not using a SimpleContext with asynchronous requests could cause unexpected results due to "
    "stale contexts. Ensure you await between requests."
)


class _Default:
    def __repr__(self) -> str:
        return "<default strategy: RejectionSamplingStrategy(loop_budget=2)>"


_DEFAULT_STRATEGY: Any = _Default()


def _requirement_list(requirements: object) -> list[Requirement | str]:
    """The ``requirements`` argument as a list (a lone str or Requirement is a mistake)."""
    if requirements is None:
        return []
    if isinstance(requirements, str | Requirement):
        raise InvalidInputError(
            "requirements must be a list of requirements, got a single "
            f"{type(requirements).__name__} {requirements!r} "
            f"(did you mean requirements=[{requirements!r}]?)"
        )
    if not isinstance(requirements, Sequence):
        raise InvalidInputError(
            f"requirements must be a list, got {type(requirements).__name__}: {requirements!r}"
        )
    return list(requirements)


class MelleaSession:
    """A session: a backend, a context and the actor system that runs its generations."""

    def __init__(self, backend: OllamaBackend, ctx: Context | None = None) -> None:
        self.backend = backend
        self.ctx: Context = ctx if ctx is not None else SimpleContext()
        self._system = backend.system
        # unresolved requests (non-simple ctx), and how many are being made right now (the
        # backend's call may let other tasks run before it returns the thunk); both under
        # _pending_lock
        self._pending: list[ModelOutputThunk[Any]] = []
        self._making = 0
        self._pending_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def system(self) -> ActorSystem:
        """The actor system of this session (supervision log, live actor tree)."""
        return self._system

    @property
    def hosts(self) -> Hosts:
        """The session's pool of Ollama hosts: ``add(url, capacity=…, weight=…)``,
        ``remove(url, drain=True)``, and iteration over each host's url, state, in-flight
        count and capacity (see :class:`~mellea_actors.runtime.system.Hosts`)."""
        return self._system.hosts

    def close(self, timeout: float = 10.0) -> None:
        """Cancel running generations, stop the session's actors and its loop thread."""
        self._system.close(timeout)

    cleanup = close

    def __enter__(self) -> MelleaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> MelleaSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await in_thread(self.close)

    def reset(self) -> None:
        """Start again from an empty context of the same kind."""
        self.ctx = self.ctx.reset_to_new()

    # -- stale-context detection ---------------------------------------------------------
    def _begin_request(self, ctx: Context) -> None:
        if isinstance(ctx, SimpleContext):
            return
        with self._pending_lock:
            self._pending = [m for m in self._pending if m._outcome() is None]
            stale = bool(self._pending) or self._making > 0
        if stale:
            _log.warning(STALE_CONTEXT_WARNING)

    async def _generate(
        self, action: Any, ctx: Context, **kwargs: Any
    ) -> tuple[ModelOutputThunk[Any], Context]:
        """The backend's ``generate_from_context``; with a context that shows its items, the
        request counts as unresolved from before the call (a request begun while this one is
        being made warns too) until its thunk is computed."""
        if isinstance(ctx, SimpleContext):
            return await self.backend.generate_from_context(action, ctx, **kwargs)
        with self._pending_lock:
            self._making += 1
        try:
            mot, new_ctx = await self.backend.generate_from_context(action, ctx, **kwargs)
        except BaseException:
            with self._pending_lock:
                self._making -= 1
            raise
        with self._pending_lock:  # from being made to unresolved, in one step
            self._making -= 1
            self._pending.append(mot)
        return mot, new_ctx

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._system.run_sync(coro)

    # -- act / instruct --------------------------------------------------------------------
    async def aact(
        self,
        action: Component[Any] | CBlock,
        *,
        requirements: Sequence[Requirement | str] | None = None,
        strategy: SamplingStrategy | None = _DEFAULT_STRATEGY,
        model_options: dict[str, Any] | None = None,
        format: type[pydantic.BaseModel] | None = None,
        return_sampling_results: bool = False,
        await_result: bool = False,
        tool_calls: bool = False,
    ) -> Any:
        """Run ``action``; see the module docstring for when the thunk is computed."""
        reqs = [reqify(r) for r in _requirement_list(requirements)]
        if strategy is not None and strategy is not _DEFAULT_STRATEGY:
            check_instance(strategy, SamplingStrategy, "strategy")
        ctx = self.ctx
        self._begin_request(ctx)
        if not reqs or strategy is None:
            mot, new_ctx = await self._generate(
                action, ctx, format=format, model_options=model_options, tool_calls=tool_calls
            )
            self.ctx = new_ctx
            if await_result or return_sampling_results:
                await mot.avalue()
            if return_sampling_results:
                return SamplingResult(
                    result_index=0,
                    success=True,
                    sample_generations=[mot],
                    sample_validations=[[]],
                    sample_actions=[action],
                    sample_contexts=[new_ctx],
                )
            return mot
        if strategy is _DEFAULT_STRATEGY:
            strategy = RejectionSamplingStrategy(loop_budget=2)
        result = await strategy.sample(
            action, ctx, self.backend, reqs, format=format, model_options=model_options
        )
        self.ctx = result.result_ctx
        return result if return_sampling_results else result.result

    def act(self, action: Component[Any] | CBlock, **kwargs: Any) -> Any:
        """Blocking :meth:`aact`; the returned thunk is computed."""
        kwargs.setdefault("await_result", True)
        return self._run(self.aact(action, **kwargs))

    async def ainstruct(
        self,
        description: str,
        *,
        requirements: Sequence[Requirement | str] | None = None,
        strategy: SamplingStrategy | None = _DEFAULT_STRATEGY,
        model_options: dict[str, Any] | None = None,
        format: type[pydantic.BaseModel] | None = None,
        user_variables: dict[str, str] | None = None,
        grounding_context: dict[str, Any] | None = None,
        icl_examples: list[Any] | None = None,
        prefix: str | None = None,
        output_prefix: str | None = None,
        images: list[Any] | None = None,
        return_sampling_results: bool = False,
        await_result: bool = False,
    ) -> Any:
        """Instruct the model; requirements are rendered into the prompt and then checked."""
        check_text(description, "description")
        instruction = Instruction(
            description,
            requirements=_requirement_list(requirements) or None,
            icl_examples=icl_examples,
            grounding_context=grounding_context,
            user_variables=user_variables,
            prefix=prefix,
            output_prefix=output_prefix,
            images=images,
        )
        return await self.aact(
            instruction,
            requirements=instruction.requirements,
            strategy=strategy,
            model_options=model_options,
            format=format,
            return_sampling_results=return_sampling_results,
            await_result=await_result,
        )

    def instruct(self, description: str, **kwargs: Any) -> Any:
        """Blocking :meth:`ainstruct`; the returned thunk is computed."""
        kwargs.setdefault("await_result", True)
        return self._run(self.ainstruct(description, **kwargs))

    def submit(self, description: str, **kwargs: Any) -> ModelOutputThunk[Any]:
        """Start an instruction from any thread and return its thunk at once (non-blocking).

        The thunk is uncomputed; wait with ``thunk.wait(timeout)`` or iterate
        ``thunk.iter_chunks(timeout)`` from the same or another plain thread. Requirements are
        not allowed here (sampling would have to block); use :meth:`instruct` for those.
        """
        if kwargs.get("requirements"):
            raise InvalidInputError("submit() takes no requirements; use instruct() for those")
        kwargs.setdefault("model_options", None)
        mot: ModelOutputThunk[Any] = self._run(self.ainstruct(description, **kwargs))
        return mot

    # -- chat ------------------------------------------------------------------------------
    async def achat(
        self,
        content: str,
        role: Literal["system", "user", "assistant", "tool"] = "user",
        *,
        images: list[Any] | None = None,
        user_variables: dict[str, str] | None = None,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
    ) -> Message:
        """Send a message; returns the assistant's reply (the context gains both messages)."""
        if user_variables:
            content = apply_user_variables(content, user_variables, "chat message")
        message = Message(role, content, images=images)
        ctx = self.ctx
        self._begin_request(ctx)
        mot, new_ctx = await self._generate(
            message, ctx, format=format, model_options=model_options
        )
        text = await mot.avalue()
        self.ctx = new_ctx
        if format is not None:
            return Message("assistant", text)
        parsed = mot.parsed_repr
        return parsed if isinstance(parsed, Message) else Message("assistant", text)

    def chat(
        self,
        content: str,
        role: Literal["system", "user", "assistant", "tool"] = "user",
        **kwargs: Any,
    ) -> Message:
        """Blocking :meth:`achat`."""
        return self._run(self.achat(content, role, **kwargs))

    # -- validate -------------------------------------------------------------------------------
    async def avalidate(
        self,
        reqs: Requirement | str | Sequence[Requirement | str],
        *,
        output: CBlock | ModelOutputThunk[Any] | str | None = None,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
    ) -> list[ValidationResult]:
        """Validate the context's last output (or ``output``) against ``reqs``, concurrently."""
        items = [reqs] if isinstance(reqs, Requirement | str) else list(reqs)
        requirements = [reqify(r) for r in items]
        if output is None:
            ctx = self.ctx
        else:
            block = CBlock(output) if isinstance(output, str) else output
            if isinstance(block, CBlock) and not isinstance(block, ModelOutputThunk):
                block = ModelOutputThunk(block.value)
            ctx = SimpleContext().add(block)
        results = await asyncio.gather(
            *(
                r.validate(self.backend, ctx, format=format, model_options=model_options)
                for r in requirements
            )
        )
        return list(results)

    def validate(
        self, reqs: Requirement | str | Sequence[Requirement | str], **kwargs: Any
    ) -> list[ValidationResult]:
        """Blocking :meth:`avalidate`."""
        return self._run(self.avalidate(reqs, **kwargs))

    # -- query / transform ---------------------------------------------------------------
    async def aquery(
        self,
        obj: Any,
        query: str,
        *,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
        await_result: bool = False,
    ) -> ModelOutputThunk[Any]:
        """Ask a question about ``obj``; returns an uncomputed thunk at once."""
        result: ModelOutputThunk[Any] = await self.aact(
            Query(obj, query),
            strategy=None,
            format=format,
            model_options=model_options,
            await_result=await_result,
        )
        return result

    def query(self, obj: Any, query: str, **kwargs: Any) -> ModelOutputThunk[Any]:
        """Blocking :meth:`aquery`; the returned thunk is computed."""
        kwargs.setdefault("await_result", True)
        return self._run(self.aquery(obj, query, **kwargs))

    async def atransform(
        self,
        obj: Any,
        transformation: str,
        *,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
        await_result: bool = False,
    ) -> ModelOutputThunk[Any]:
        """Transform ``obj`` as described; returns an uncomputed thunk at once."""
        result: ModelOutputThunk[Any] = await self.aact(
            Transform(obj, transformation),
            strategy=None,
            format=format,
            model_options=model_options,
            await_result=await_result,
        )
        return result

    def transform(self, obj: Any, transformation: str, **kwargs: Any) -> ModelOutputThunk[Any]:
        """Blocking :meth:`atransform`; the returned thunk is computed."""
        kwargs.setdefault("await_result", True)
        return self._run(self.atransform(obj, transformation, **kwargs))


# -- start_session ------------------------------------------------------------------------------
def start_session(
    backend_name: Literal["ollama"] = "ollama",
    model_id: str | ModelIdentifier | None = None,
    ctx: Context | None = None,
    *,
    context_type: Literal["simple", "chat"] | None = None,
    model_options: dict[str, Any] | None = None,
    plugins: list[Any] | None = None,
    allow_context_type_change: bool = False,
    base_url: str | Sequence[str | HostSpec] | None = None,
    check: bool = True,
    restart_policy: RestartPolicy | None = None,
    breaker_policy: BreakerPolicy | None = None,
    max_in_flight: int | None = None,
    queue_timeout: float | None = 300.0,
    engine: Literal["local", "ray"] | None = None,
    ray_address: str | None = None,
    ray_workers: int | None = None,
    engine_loop: Literal["caller", "thread"] | None = None,
    **backend_kwargs: Any,
) -> MelleaSession:
    """Start a session against Ollama.

    Mellea 0.8's signature (``backend_name``, ``model_id``, ``ctx``, ``context_type``,
    ``model_options``, ``plugins``, ``allow_context_type_change``, and the Ollama backend's
    keyword arguments), plus the engine's own settings. What mellea_actors cannot honour is
    refused by name, never ignored.

    Args:
        backend_name: only ``"ollama"``; Mellea's other backends (``"hf"``, ``"openai"``,
            ``"watsonx"``, ``"litellm"``) are refused with an error naming them.
        model_id: the Ollama model: a tag (``"granite4.1:3b"``) or a
            :class:`~mellea_actors.backends.model_ids.ModelIdentifier` (its ``ollama_name``;
            one without an Ollama name is refused). Without it: ``MELLEA_ACTORS_MODEL``, else
            Mellea's default model when the host has it (``granite4.2:3b``, else
            ``granite4.1:3b``), else :data:`DEFAULT_MODEL` (the embedded local model); see
            :mod:`mellea_actors.backends.host_resolution`. With ``check=False`` the host is not
            asked, so Mellea's default is not looked for.
        ctx: the starting context (default ``SimpleContext()``); exclusive with ``context_type``.
        context_type: ``"simple"`` or ``"chat"``.
        model_options: session defaults, overridden per call (validated now). The environment
            variable ``MELLEA_ACTORS_OPTIONS`` (a JSON object, e.g. ``{"num_predict": 64}``)
            gives defaults below these.
        plugins: Mellea's session plugins; mellea_actors has no plugin hooks, so only
            ``None`` (or an empty list) is accepted.
        allow_context_type_change: accepted for Mellea 0.8 compatibility (a bool); a
            mellea_actors session never changes its context's type, so it changes nothing.
        base_url: the Ollama host; default ``OLLAMA_HOST``, else ``http://127.0.0.1:11434``, else
            (nothing configured and nothing answering there) the project's embedded local Ollama.
            A list of hosts (URLs, or :class:`~mellea_actors.runtime.host_pool.HostSpec` for a
            per-host capacity and weight), or a comma-separated ``OLLAMA_HOST``, makes a pool
            (SPEC §11; see :mod:`~mellea_actors.runtime.host_pool`): with ``check`` the
            session starts if at least one host answers and one has the model, and the error
            names every host otherwise.
        check: ask the host for its models now, so that an unreachable host or an unknown model
            fails here with an error naming it (a few ms on a local host).
        restart_policy: how the generation supervisor restarts failed generators.
        breaker_policy: when a host's circuit breaker opens and how it probes the host.
        max_in_flight: requests open at once against the host (more wait for a slot); None
            (the default) sizes it to the host.
        queue_timeout: the longest a request waits for a slot, in seconds, before it fails with
            ``QueueTimeoutError`` (None: no bound). Time in the queue does not count against
            ``ModelOption.STREAM_TIMEOUT``.
        engine: ``"local"`` (everything in this process) or ``"ray"`` (SPEC §11: the
            generation supervisors, with their transports and host pool, run as Ray async
            actors; thunks, readers, validators and chunkers stay here; same session API;
            needs ``pip install 'mellea_actors[ray]'``). Default: the environment
            variable ``MELLEA_ACTORS_ENGINE``, else ``"local"``. See
            :mod:`~mellea_actors.runtime.ray_transport`.
        ray_address: with ``engine="ray"``: ``None`` (use the Ray of this process if
            ``ray.init`` was called, else start a quiet local one, shut down with the last
            session that uses it), ``"auto"`` or ``"ray://HOST:PORT"`` (connect to that
            cluster; never shut it down). Default: ``RAY_ADDRESS`` is read by Ray itself.
        ray_workers: with ``engine="ray"``: how many Ray generation supervisors (default
            ``MELLEA_ACTORS_RAY_WORKERS``, else one per node, or per CPU of a one-node
            cluster, at most 2). Shared by the process's sessions: the first session decides.
        engine_loop: where the engine's actors and HTTP streams run. ``"caller"`` (the
            default; ``MELLEA_ACTORS_ENGINE_LOOP`` sets another): on the event loop that runs
            when the session is opened (``start_session()`` inside ``async def main()``), so
            your coroutines and the engine share one thread and no GIL changes hands between
            them; while your code blocks on that thread (``str()`` of a pending thunk, a sync
            method, or any blocking code), the engine goes on in a rescue thread, and when that
            loop ends it moves to a thread of its own. Opened outside a running loop, or with
            ``"thread"``, the engine runs on a thread of the session's own.
        **backend_kwargs: the keyword arguments of Mellea's ``OllamaModelBackend``:
            ``timeout`` (seconds, or None) becomes the session's default
            ``ModelOption.STREAM_TIMEOUT`` unless ``model_options`` sets it;
            ``default_to_constraint_checking_alora`` (a bool) is accepted and changes nothing
            (there are no aLoRA adapters); ``formatter``, ``adapter_models`` and
            ``adapter_base_model_name`` are accepted only when None (or empty). Any other name
            is refused.

    Raises:
        InvalidInputError: bad arguments (unknown or unsupported backend, context type or
            keyword argument, ``ctx`` together with ``context_type``, a ``ModelIdentifier``
            without an Ollama name, bad model options), each naming the argument.
        BackendUnavailableError: the host does not answer (with ``check``).
        ModelNotFoundError: the host does not have the model (with ``check``).
    """
    if backend_name != "ollama":
        if backend_name in _MELLEA_BACKENDS:
            raise InvalidInputError(
                f"backend_name {backend_name!r} is a Mellea backend that mellea_actors does not "
                "provide: mellea_actors runs models on Ollama only (backend_name='ollama')"
            )
        raise InvalidInputError(
            f"unknown backend_name {backend_name!r}: mellea_actors supports only 'ollama'"
        )
    if ctx is not None and context_type is not None:
        raise InvalidInputError("pass either ctx or context_type to start_session, not both")
    if context_type is not None:
        if context_type == "simple":
            ctx = SimpleContext()
        elif context_type == "chat":
            ctx = ChatContext()
        else:
            raise InvalidInputError(
                f"unknown context_type {context_type!r}: use 'simple' or 'chat'"
            )
    if ctx is not None and not isinstance(ctx, Context):
        raise InvalidInputError(f"ctx must be a Context, got {type(ctx).__name__}")
    if plugins is not None and (not isinstance(plugins, list | tuple) or plugins):
        raise InvalidInputError(
            f"plugins={plugins!r} is not supported: mellea_actors has no plugin "
            "hooks (Mellea's mellea.plugins); pass plugins=None"
        )
    check_instance(allow_context_type_change, bool, "allow_context_type_change")
    _check_backend_kwargs(backend_kwargs)
    model = _model_id_name(model_id)
    if model_options is not None:
        check_instance(model_options, Mapping, "model_options")
    if "timeout" in backend_kwargs and not (
        model_options is not None
        and (ModelOption.STREAM_TIMEOUT in model_options or "stream_timeout" in model_options)
    ):
        timeout = backend_kwargs["timeout"]
        model_options = {ModelOption.STREAM_TIMEOUT: timeout, **(model_options or {})}
    if max_in_flight is not None:
        check_count(max_in_flight, "max_in_flight")
    check_timeout(queue_timeout, "queue_timeout")
    if restart_policy is not None:
        check_instance(restart_policy, RestartPolicy, "restart_policy")
    if breaker_policy is not None:
        check_instance(breaker_policy, BreakerPolicy, "breaker_policy")
    engine_name = _engine(engine, ray_address, ray_workers)
    loop_name = _engine_loop(engine_loop)
    resolved = resolve_hosts(base_url)
    pool = None if isinstance(resolved, str) else resolved
    host = resolved if isinstance(resolved, str) else resolved[0].url
    system = ActorSystem(
        policy=restart_policy,
        breaker_policy=breaker_policy,
        max_in_flight=max_in_flight,  # None: sized to the host
        queue_timeout=queue_timeout,
        hosts=pool,
        engine=engine_name,
        ray_address=ray_address,
        ray_workers=ray_workers,
        engine_loop=loop_name,
    )
    try:
        checked = False
        if model is None:
            model = configured_model()
        if pool is not None:
            model = _check_pool(system, [spec.url for spec in pool], model, check)
            checked = True
        if model is None:
            available = _list_models(system, host) if check else None
            model = choose_default_model(available)
            if available is not None:
                if model not in available:
                    raise _no_default_model(host, model, available)
                checked = True
            _log.info("start_session: no model_id given, using %r on %s", model, host)
        backend = OllamaBackend(
            model,
            base_url=host,
            system=system,
            model_options=model_options,
            base_options=_options_from_env(),
        )
        if check and not checked:
            _check_model(system, host, model)
    except BaseException:
        system.close()
        raise
    return MelleaSession(backend, ctx)


_ENGINES = ("local", "ray")


def _engine(engine: object, ray_address: object, ray_workers: object) -> str:
    """The engine to run on: the argument, else ``MELLEA_ACTORS_ENGINE``, else "local"."""
    name = "engine"
    if engine is None:
        engine = os.environ.get("MELLEA_ACTORS_ENGINE", "").strip().lower() or "local"
        name = "MELLEA_ACTORS_ENGINE"
    if engine not in _ENGINES:
        raise InvalidInputError(f"unknown {name} {engine!r}: use 'local' or 'ray'")
    if engine != "ray" and (ray_address is not None or ray_workers is not None):
        raise InvalidInputError(
            "ray_address and ray_workers apply to engine='ray' only (pass engine='ray' or set "
            "MELLEA_ACTORS_ENGINE=ray)"
        )
    return str(engine)


def _engine_loop(engine_loop: object) -> str:
    """Where the engine runs: the argument, else ``MELLEA_ACTORS_ENGINE_LOOP``, else "caller"."""
    name = "engine_loop"
    if engine_loop is None:
        engine_loop = os.environ.get("MELLEA_ACTORS_ENGINE_LOOP", "").strip().lower() or "caller"
        name = "MELLEA_ACTORS_ENGINE_LOOP"
    return check_engine_loop(engine_loop, name)


#: Mellea's other ``backend_name`` values (refused with an error that says so).
_MELLEA_BACKENDS = frozenset({"hf", "huggingface", "openai", "watsonx", "litellm"})


def _model_id_name(model_id: object) -> str | None:
    """The Ollama tag that ``model_id`` names (None: not given, choose the default)."""
    if model_id is None:
        return None
    if isinstance(model_id, ModelIdentifier):
        return ollama_model_name(model_id)
    if not isinstance(model_id, str):
        raise InvalidInputError(
            "model_id must be a str (an Ollama tag) or a ModelIdentifier, got "
            f"{type(model_id).__name__}: {model_id!r}"
        )
    return check_text(model_id, "model_id", allow_empty=False)


def _check_backend_kwargs(backend_kwargs: dict[str, Any]) -> None:
    """Check the Mellea ``OllamaModelBackend`` keyword arguments given to ``start_session``."""
    kwargs = dict(backend_kwargs)
    if "timeout" in kwargs:
        check_timeout(kwargs.pop("timeout"), "timeout")
    alora = kwargs.pop("default_to_constraint_checking_alora", False)
    check_instance(alora, bool, "default_to_constraint_checking_alora")
    for name, why in (
        ("formatter", "mellea_actors renders prompts itself"),
        ("adapter_models", "mellea_actors has no adapters (aLoRA/LoRA)"),
        ("adapter_base_model_name", "mellea_actors has no adapters (aLoRA/LoRA)"),
    ):
        value = kwargs.pop(name, None)
        if value is not None and not (isinstance(value, Mapping) and not value):
            raise InvalidInputError(f"{name}={value!r} is not supported: {why}; pass {name}=None")
    if kwargs:
        raise InvalidInputError(
            f"unknown start_session argument(s): {', '.join(sorted(kwargs))} (mellea_actors "
            "accepts Mellea's start_session arguments and OllamaModelBackend's keyword "
            "arguments timeout, formatter, adapter_models, adapter_base_model_name and "
            "default_to_constraint_checking_alora)"
        )


def _no_default_model(host: str, model: str, available: list[str]) -> ModelNotFoundError:
    defaults = ", ".join([*MELLEA_DEFAULT_MODELS, model])
    listed = ", ".join(sorted(available)) or "none"
    return ModelNotFoundError(
        f"start_session() got no model_id and {MODEL_ENV} is not set, and Ollama at {host} has "
        f"none of the default models ({defaults}; available: {listed}); pass model_id=..., "
        f"set {MODEL_ENV}, or pull one (ollama pull {MELLEA_DEFAULT_MODELS[0]})",
        host=host,
        model=model,
    )


def _list_models(system: ActorSystem, host: str) -> list[str]:
    """The models ``host`` lists (raises BackendUnavailableError if it does not answer)."""

    async def list_models() -> list[str]:
        return await system.check_host(host)

    return system.loop.run_sync(list_models(), timeout=30)


def _options_from_env() -> dict[str, Any]:
    """Session defaults from ``MELLEA_ACTORS_OPTIONS`` (a JSON object of raw Ollama options)."""
    raw = os.environ.get("MELLEA_ACTORS_OPTIONS")
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"MELLEA_ACTORS_OPTIONS is not valid JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise InvalidInputError(f"MELLEA_ACTORS_OPTIONS must be a JSON object, got {raw!r}")
    return options


def _check_pool(system: ActorSystem, urls: list[str], model: str | None, check: bool) -> str:
    """The model of a pooled session; with ``check``, some host answers and has it (else one
    error naming every host and what it said)."""
    if not check:
        return model or choose_default_model(None)
    listed: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for url in urls:
        try:
            listed[url] = _list_models(system, url)
        except BackendUnavailableError as exc:
            failed[url] = str(exc)
    if not listed:
        hosts = "; ".join(f"{url} ({why})" for url, why in failed.items())
        raise BackendUnavailableError(
            f"no Ollama host of the pool answers: {hosts}", host=", ".join(urls), model=model
        )
    chosen = model or choose_default_model({m for models in listed.values() for m in models})
    if not any(model_listed(models, chosen) for models in listed.values()):
        hosts = "; ".join(
            [f"{url} (has: {', '.join(sorted(m)) or 'none'})" for url, m in listed.items()]
            + [f"{url} ({why})" for url, why in failed.items()]
        )
        raise ModelNotFoundError(
            f"model {chosen!r} not found on any Ollama host of the pool: {hosts}",
            host=", ".join(urls),
            model=chosen,
        )
    for url, why in failed.items():
        _log.warning("start_session: pool host %s does not answer yet: %s", url, why)
    return chosen


def _check_model(system: ActorSystem, host: str, model: str) -> None:
    models = _list_models(system, host)
    if not model_listed(models, model):
        raise ModelNotFoundError(
            f"model {model!r} not found on Ollama at {host} "
            f"(available: {', '.join(sorted(models)) or 'none'})",
            host=host,
            model=model,
        )
