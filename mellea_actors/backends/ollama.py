"""``OllamaBackend``: the facade's backend, handing generations to the actor system.

It turns ``(action, ctx, options)`` into a validated :class:`GenerationRequest` (rendering the
context into ``/api/chat`` messages), submits it to the session's :class:`ActorSystem` and
returns at once with an uncomputed :class:`ModelOutputThunk`. Everything slow happens in the
runtime; this module never blocks.

Rendering: an optional system message (``SYSTEM_PROMPT``; none when empty or None), then the
context's view (``ctx.view_for_generation()``: nothing for a SimpleContext, the conversation for a
ChatContext), then the action. A thunk of the history that is still running is awaited first
(never an ``AssertionError`` as in Mellea 0.7.0): its text is what the model said.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pydantic

from mellea_actors._arguments import check_text
from mellea_actors.backends.model_options import ResolvedOptions, resolve_options
from mellea_actors.core.backend import Backend
from mellea_actors.core.cblock import CBlock, is_component, render_plain
from mellea_actors.core.context_chain import EMPTY_SIMPLE_CONTEXT, Context, SimpleContext
from mellea_actors.core.message import Message
from mellea_actors.core.model_output import ModelOutputThunk
from mellea_actors.errors import InvalidInputError
from mellea_actors.runtime.messages import ChatMessage, GenerationRequest
from mellea_actors.runtime.system import ActorSystem
from mellea_actors.transport.ollama_http import normalize_host

__all__ = ["OllamaBackend", "render_chat"]

_RESOLVED_CACHE = 256
"""Distinct option sets a backend remembers resolved (:meth:`OllamaBackend._resolve_for_call`)."""

YIELD_EVERY = 0.0
"""Seconds: how often, at most, ``generate_from_context`` gives the caller's loop a turn
(``asyncio.sleep(0)``) when it is called many times in a row; 0: after every call.

A turn after every call makes each start of a burst pay whole iterations of the caller's loop
and of the engine's alone (its connect, its first write). Batching the starts of each 0.2 ms
cut scenario 4's client CPU (``bench/``) by ~12 % and its wall too, but engine iterations of
15 ms then came during the burst (what fills them is not known yet: not bunched connects), and
the p99 delay of the chunks meanwhile grew from 4-7 ms to 6-10 ms (2.3x the floor's in a full
run; at 1 ms batches, 13-22 ms). The default keeps a turn after every call
(docs/hot_path.md)."""


def _layer_key(layer: dict[str, Any]) -> tuple[tuple[str, type, Any], ...]:
    """One option layer as a cache key: each value with its type (``True == 1``, and strict
    validation tells them apart)."""
    return tuple((k, type(v), v) for k, v in layer.items())


async def _item_messages(item: object) -> list[ChatMessage]:
    if isinstance(item, Message):
        return [ChatMessage(role=item.role, content=item.content)]
    if isinstance(item, ModelOutputThunk):
        if not item.is_computed() and item.value is None:
            await item.avalue()  # a lazy thunk of the history: wait for what the model said
        return [ChatMessage(role="assistant", content=item.value or "")]
    if isinstance(item, CBlock | str) or is_component(item):
        text = render_plain(item)
        return [ChatMessage(role="user", content=text)] if text else []
    raise InvalidInputError(f"cannot render {type(item).__name__} into a chat message: {item!r}")


async def render_chat(
    action: object, ctx: Context, system_prompt: str | None
) -> tuple[ChatMessage, ...]:
    """The ``/api/chat`` messages for ``action`` after the context's view."""
    messages: list[ChatMessage] = []
    if system_prompt:
        messages.append(ChatMessage(role="system", content=system_prompt))
    for item in ctx.view_for_generation() or []:
        messages.extend(await _item_messages(item))
    messages.extend(await _item_messages(action))
    if not messages:
        raise InvalidInputError(f"nothing to send: the action {action!r} renders to no text")
    for i, message in enumerate(messages):  # fail at the call, not when the request is sent
        check_text(message.content, f"message {i} ({message.role}) of the prompt")
    return tuple(messages)


def _parser_for(action: object, format: type[pydantic.BaseModel] | None) -> Callable[[str], Any]:
    if format is not None:

        def parse_model(text: str) -> Any:
            return format.model_validate_json(text)

        return parse_model
    if isinstance(action, Message):
        return _assistant_message
    return _text  # one function for every request, not a closure each (pending-thunk memory)


def _assistant_message(text: str) -> Message:
    return Message("assistant", text)


def _text(text: str) -> str:
    return text


class OllamaBackend(Backend):
    """Generates with an Ollama server through the session's actor system.

    Args:
        model_id: the Ollama model name (``ollama list``).
        base_url: the Ollama host (``http://host:port``, ``host:port`` …).
        model_options: default options, overridden per call; validated now.
        base_options: defaults below ``model_options`` (e.g. from the environment).
        system: the actor system that runs the generations.
    """

    def __init__(
        self,
        model_id: str,
        *,
        base_url: str,
        system: ActorSystem,
        model_options: dict[str, Any] | None = None,
        base_options: dict[str, Any] | None = None,
    ) -> None:
        self.model_id = model_id
        self.base_url = normalize_host(base_url)
        self.system = system
        self.model_options = dict(model_options or {})
        self.base_options = dict(base_options or {})
        self._resolved: dict[tuple[Any, ...], ResolvedOptions] = {}  # _resolve_for_call's
        # when generate_from_context last gave its loop a turn, and which loop (that loop's
        # thread only; a call from another loop just yields)
        self._yielded: tuple[asyncio.AbstractEventLoop | None, float] = (None, 0.0)
        self.resolve(None)  # bad defaults fail here, not on the first call

    async def _maybe_yield(self) -> None:
        loop = asyncio.get_running_loop()
        last_loop, last = self._yielded
        if last_loop is loop and time.monotonic() - last < YIELD_EVERY:
            return
        await asyncio.sleep(0)
        self._yielded = (loop, time.monotonic())

    def resolve(self, model_options: dict[str, Any] | None) -> ResolvedOptions:
        """The options of one call: base options, then the backend's, then the call's."""
        return resolve_options(self.base_options, self.model_options, model_options)

    def _resolve_for_call(self, model_options: dict[str, Any] | None) -> ResolvedOptions:
        """:meth:`resolve`, remembered per distinct (hashable) set of layers: a service sends
        the same few option sets again and again, and validating them (two pydantic models)
        was ~15 % of a call. The key is the layers' items as they are now, so changing
        ``backend.model_options`` takes effect on the next call. (The result is frozen; the
        transport copies its ``ollama_options``.)"""
        try:
            key = (
                _layer_key(self.base_options),
                _layer_key(self.model_options),
                None if model_options is None else _layer_key(model_options),
            )
            cached = self._resolved.get(key)
        except (TypeError, AttributeError):  # an unhashable value, or not a mapping: no cache
            return self.resolve(model_options)
        if cached is None:
            cached = self.resolve(model_options)
            if len(self._resolved) >= _RESOLVED_CACHE:
                self._resolved.clear()
            self._resolved[key] = cached
        return cached

    async def generate_from_context(
        self,
        action: Any,
        ctx: Context,
        *,
        format: type[pydantic.BaseModel] | None = None,
        model_options: dict[str, Any] | None = None,
        tool_calls: bool = False,
    ) -> tuple[ModelOutputThunk[Any], Context]:
        if tool_calls:
            raise InvalidInputError("tool calls are not supported by the mellea_actors backend")
        options = self._resolve_for_call(model_options)
        schema: dict[str, Any] | None = None
        if format is not None:
            if not (isinstance(format, type) and issubclass(format, pydantic.BaseModel)):
                raise InvalidInputError(
                    f"format must be a pydantic BaseModel subclass, got {format!r}"
                )
            schema = format.model_json_schema()
        messages = await render_chat(action, ctx, options.system_prompt)
        action_ctx = ctx.add(action)  # rejects a bad action before anything is submitted
        request = GenerationRequest(
            request_id=self.system.new_request_id(),
            host=self.base_url,
            model=self.model_id,
            messages=messages,
            options=options.ollama_options,
            format=schema,
            think=options.think,
            stream=options.stream,
            stream_timeout=options.stream_timeout,
        )
        handle = self.system.start_generation(request)
        mot = ModelOutputThunk._attach(handle, parse=_parser_for(action, format))
        mot.action = action
        # The context the generation saw. A SimpleContext shows none of its items, so it is
        # recorded as an empty one: holding the real one would chain every earlier request
        # (and its thunk) to this one, and a long-running session would never free them.
        mot.context = (
            ctx
            if ctx.is_chat_context
            else EMPTY_SIMPLE_CONTEXT
            if type(ctx) is SimpleContext
            else ctx.reset_to_new()
        )
        # A turn of the caller's loop, at most every YIELD_EVERY seconds: nothing above suspends
        # (the generation runs on the runtime's loop), so a caller creating many thunks in a
        # row (``for …: await m.ainstruct(…)``, ~100 µs each) would otherwise starve its own
        # readers until the last one is made — 1,000 of them kept the first chunks waiting
        # ~100 ms. A turn after every call instead cost each start an iteration of both loops
        # of its own (see YIELD_EVERY).
        await self._maybe_yield()
        return mot, action_ctx.add(mot)
