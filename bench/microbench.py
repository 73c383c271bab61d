"""Scenario ``parse_deliver``: what one streamed chunk costs the client, in-process (no server).

Three figures, each in µs of CPU per chunk (``process_time``: every thread of this process):

* **parse**: one typical Ollama ``/api/chat`` line (:data:`LINE`) through ``json.loads`` (the
  floor), ``orjson.loads``, the ``ollama`` client's ``ChatResponse(**json.loads(line))`` (raw),
  and the project's transport parsing alone (:func:`transport_parser`: the delta reaches a no-op
  callback). Best of ``repeat`` passes over ``lines`` lines.
* **stub stream**: ``streams`` tasks each feeding ``chunks`` lines to the transport parser, one
  every ``interval`` seconds (phases staggered: a steady ``streams / interval`` chunks/s, one
  line per read, as in ``many_streams``), the deltas going nowhere: the stub's own cost.
* **runtime**: the same stub as the transport of a real :class:`ActorSystem`
  (``start_generation`` → generation supervisor → generator task → the stub → real
  ``ThunkActor`` cells), the deltas drained by ``ThunkHandle.astream()`` on this thread's loop:
  parse + delivery + reader wake-up, with the actor loop on its own thread as in a session.
  ``delivery`` = runtime - stub stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from common import Meter, median

LINE = (
    b'{"model":"smollm2:135m","created_at":"2026-12-01T15:11:34.123456789Z",'
    b'"message":{"role":"assistant","content":" world"},"done":false}'
)
"""A typical streamed object of Ollama's ``/api/chat`` (one delta)."""

_HOST = "http://127.0.0.1:9"  # never connected to


def _request(request_id: str) -> Any:
    from mellea_actors.transport.chat_request import ChatMessage, GenerationRequest

    return GenerationRequest(
        request_id=request_id,
        host=_HOST,
        model="smollm2:135m",
        messages=(ChatMessage(role="user", content="hello"),),
        stream=True,
    )


def transport_parser(receiver: Any) -> Callable[[bytes], object]:
    """The project's transport parsing of what one network read returned (one whole line with
    its newline), handing the delta to ``receiver`` (what the runtime gives ``stream_chat``: an
    ``on_delta`` callback or a delta sink).

    The only place that knows the transport's parsing API: change it here when that API changes.
    It uses the transport's streaming decoder, ``_NdjsonDecoder(host, model, receiver)``, when
    there is one (a ``BodyReader``: ``body(data)`` then ``end_of_read()`` per read; or, before
    that, ``feed(data)``), else ``OllamaTransport._on_line(line, request, on_delta)``.
    """
    from mellea_actors.transport import ollama_http

    decoder_type = getattr(ollama_http, "_NdjsonDecoder", None)
    if decoder_type is not None:
        decoder = decoder_type(_HOST, "smollm2:135m", receiver)
        if hasattr(decoder, "feed"):
            feed: Callable[[bytes], object] = decoder.feed
            return feed
        body, end_of_read = decoder.body, decoder.end_of_read

        def one_read(data: bytes) -> None:
            body(data)
            end_of_read()

        return one_read
    transport = ollama_http.OllamaTransport(_HOST)
    request = _request("parse")
    on_line = transport._on_line  # type: ignore[attr-defined]  # the API before the decoder
    return lambda data: on_line(data[:-1], request, receiver)


def _transport_api() -> str:
    from mellea_actors.transport import ollama_http

    decoder_type = getattr(ollama_http, "_NdjsonDecoder", None)
    if decoder_type is None:
        return "OllamaTransport._on_line"
    if hasattr(decoder_type, "feed"):
        return "_NdjsonDecoder.feed"
    return "_NdjsonDecoder.body + end_of_read"


def _us_per_call(fn: Callable[[bytes], object], data: bytes, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(n):
            fn(data)
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


class _Nowhere:
    """A delta receiver that drops the deltas (either API: a callback, or a sink)."""

    def __call__(self, content: str, thinking: str) -> None:
        return None

    add = __call__

    def flush(self) -> None:
        return None


_nothing = _Nowhere()


def parse_figures(lines: int, repeat: int) -> dict[str, Any]:
    import ollama

    data = LINE + b"\n"
    out: dict[str, Any] = {
        "json_loads_us": _us_per_call(json.loads, LINE, lines, repeat),
        "ollama_parse_us": _us_per_call(
            lambda line: ollama.ChatResponse(**json.loads(line)), LINE, lines, repeat
        ),
        "transport_parse_us": _us_per_call(transport_parser(_nothing), data, lines, repeat),
        "transport_api": _transport_api(),
    }
    try:
        import orjson
    except ImportError:
        pass
    else:
        out["orjson_loads_us"] = _us_per_call(orjson.loads, LINE, lines, repeat)
    return out


class _StubTransport:
    """A transport that streams ``chunks`` canned lines, one every ``interval`` seconds, through
    the real transport parser (no socket). Runs on the actor loop."""

    def __init__(self, chunks: int, interval: float) -> None:
        self.chunks = chunks
        self.interval = interval
        self.started = 0
        self.streams = 1

    async def stream_chat(self, request: Any, receiver: Any) -> Any:
        from mellea_actors.transport.ollama_http import FinalObject

        phase = self.started % self.streams / self.streams * self.interval
        self.started += 1
        await _feed(transport_parser(receiver), self.chunks, self.interval, phase)
        return FinalObject(
            done_reason="stop", prompt_eval_count=1, eval_count=self.chunks, total_duration=1
        )

    async def version(self, timeout: float = 5.0) -> str:
        return "stub"


async def _feed(
    feed: Callable[[bytes], object], chunks: int, interval: float, phase: float
) -> None:
    """Line ``k`` at ``start + phase + k * interval`` (no drift)."""
    data = LINE + b"\n"
    loop = asyncio.get_running_loop()
    start = loop.time() + phase
    for k in range(chunks):
        wait = start + k * interval - loop.time()
        await asyncio.sleep(wait if wait > 0 else 0)
        feed(data)


async def _stub_alone(streams: int, chunks: int, interval: float) -> float:
    """CPU seconds of the stub streams alone (the deltas go nowhere)."""
    with Meter() as m:
        await asyncio.gather(
            *(
                _feed(transport_parser(_nothing), chunks, interval, k / streams * interval)
                for k in range(streams)
            )
        )
    return m.cpu


async def _through_runtime(streams: int, chunks: int, interval: float) -> tuple[float, int, bool]:
    """CPU seconds, reads and text check of ``streams`` stub generations through the runtime."""
    from mellea_actors.runtime.system import ActorSystem

    system = ActorSystem()
    stub = _StubTransport(chunks, interval)
    stub.streams = streams
    # the bench's way in (private): the system's transport for the stub host is the stub
    system._transports[_HOST] = stub  # type: ignore[assignment]
    expected = " world" * chunks
    try:

        async def drain(handle: Any) -> tuple[int, str]:
            reads, parts = 0, []
            while not handle.is_computed():
                parts.append(await handle.astream())
                reads += 1
            return reads, "".join(parts)

        with Meter() as m:
            handles = [
                system.start_generation(_request(system.new_request_id())) for _ in range(streams)
            ]
            drained = await asyncio.gather(*(drain(h) for h in handles))
    finally:
        await asyncio.to_thread(system.close)
    return m.cpu, sum(r for r, _ in drained), all(t == expected for _, t in drained)


async def parse_deliver(p: dict[str, Any]) -> list[dict[str, Any]]:
    out = parse_figures(p["lines"], p["repeat"])
    streams, chunks, interval = p["streams"], p["chunks"], p["interval"]
    total = streams * chunks
    await _through_runtime(streams, 5, interval)  # warm-up (imports, first actors)
    stub, runtime, reads, ok = [], [], 0, True
    for _ in range(p["repeat"]):
        stub.append(await _stub_alone(streams, chunks, interval) / total * 1e6)
        cpu, reads, ok_now = await _through_runtime(streams, chunks, interval)
        runtime.append(cpu / total * 1e6)
        ok = ok and ok_now
    out.update(
        streams=streams,
        chunks=chunks,
        rate=streams / interval,
        stub_us=median(stub),
        runtime_us=median(runtime),
        delivery_us=median(runtime) - median(stub),
        reads_per_chunk=reads / total,
        ok=ok,
    )
    return [out]
