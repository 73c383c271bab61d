"""The transport on its own: ``OllamaTransport`` against the scripted Ollama-protocol server.

No actor, no session: one event loop (the test's) drives the transport directly, as the
generation supervisor does on the runtime's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from mellea_actors.errors import (
    BackendResponseError,
    BackendUnavailableError,
    ModelNotFoundError,
    ProtocolMismatchError,
    StreamDroppedError,
    StreamTimeoutError,
)
from mellea_actors.testing import Script, ScriptedOllama
from mellea_actors.transport.chat_request import ChatMessage, GenerationRequest
from mellea_actors.transport.ollama_http import OllamaTransport

from .conftest import SCRIPTED_MODEL

WAIT = 10.0


class Sink:
    """A DeltaSink calling ``on_delta(content, thinking)`` per delta; counts the flushes."""

    def __init__(self, on_delta: Callable[[str, str], object] | None = None) -> None:
        self.on_delta = on_delta
        self.flushes = 0

    def add(self, content: str, thinking: str) -> None:
        if self.on_delta is not None:
            self.on_delta(content, thinking)

    def flush(self) -> None:
        self.flushes += 1


def request(
    host: str, *, model: str = SCRIPTED_MODEL, timeout: float | None = 10.0
) -> GenerationRequest:
    return GenerationRequest(
        request_id="t-1",
        host=host,
        model=model,
        messages=(ChatMessage(role="user", content="Say hi."),),
        stream_timeout=timeout,
    )


async def test_deltas_in_order_and_the_final_object(scripted: ScriptedOllama) -> None:
    script = Script(tokens=("Hel", "lo", ",", " world", "."), done_reason="stop")
    scripted.enqueue(script)
    transport = OllamaTransport(scripted.base_url)
    deltas: list[str] = []
    try:
        final = await transport.stream_chat(
            request(scripted.base_url), Sink(lambda content, _thinking: deltas.append(content))
        )
    finally:
        await transport.aclose()
    assert deltas == list(script.tokens)
    assert final.done_reason == "stop"
    assert final.eval_count == len(script.tokens)


@pytest.mark.parametrize(
    ("script", "error", "status"),
    [
        (Script(status=404, error_message="model 'x' not found"), ModelNotFoundError, None),
        (Script(status=500, error_message="boom"), BackendResponseError, 500),
        (Script(error_after=2, error_message="out of memory"), BackendResponseError, -1),
        (Script(drop_after=2), StreamDroppedError, None),
    ],
    ids=["404", "500", "error-line", "dropped"],
)
async def test_faults_are_mapped_once_at_the_boundary(
    scripted: ScriptedOllama, script: Script, error: type[Exception], status: int | None
) -> None:
    scripted.enqueue(script)
    transport = OllamaTransport(scripted.base_url)
    deltas: list[str] = []
    try:
        with pytest.raises(error) as caught:
            await transport.stream_chat(
                request(scripted.base_url), Sink(lambda content, _t: deltas.append(content))
            )
    finally:
        await transport.aclose()
    assert scripted.base_url in str(caught.value)
    assert SCRIPTED_MODEL in str(caught.value) or error is StreamDroppedError
    if status is not None:
        assert getattr(caught.value, "status_code", None) == status
    assert caught.value.__cause__ is not None or error is StreamDroppedError
    if script.error_after is not None or script.drop_after is not None:
        assert deltas == list(script.tokens[:2])  # what came before the fault was delivered


async def test_a_refused_connection_names_the_host() -> None:
    transport = OllamaTransport("http://127.0.0.1:9", connect_timeout=2.0)
    try:
        with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:9"):
            await transport.stream_chat(request("http://127.0.0.1:9"), Sink())
    finally:
        await transport.aclose()


async def test_a_stall_past_the_stream_timeout(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script(tokens=("a", "b", "c"), stall_after=1))
    transport = OllamaTransport(scripted.base_url)
    try:
        with pytest.raises(StreamTimeoutError, match="STREAM_TIMEOUT"):
            await transport.stream_chat(request(scripted.base_url, timeout=0.2), Sink())
    finally:
        await transport.aclose()
    record = await asyncio.to_thread(scripted.wait_for_disconnect, 0, WAIT)
    assert record.disconnected_at is not None


async def test_one_wheel_watches_every_stream_and_fires_only_the_starved_one(
    scripted: ScriptedOllama,
) -> None:
    """Twenty streams whose tokens come 0.1 s apart outlive a 0.35 s stream timeout because
    each token pushes their deadline on; the one that stalls after its first token is cancelled
    with StreamTimeoutError. All of them are watched by the transport's one wheel (one timer),
    which has nothing left to watch, and no timer armed, once they ended."""
    steady = Script(tokens=tuple(f"t{i} " for i in range(8)), delay=0.1)
    scripted.enqueue(Script(tokens=("a", "b", "c"), stall_after=1), *([steady] * 20))
    transport = OllamaTransport(scripted.base_url)
    watched: list[int] = []

    async def one() -> str:
        parts: list[str] = []

        def on_delta(content: str, _thinking: str) -> None:
            parts.append(content)
            wheel = transport._wheel
            if wheel is not None:
                watched.append(wheel.watching)

        await transport.stream_chat(request(scripted.base_url, timeout=0.35), Sink(on_delta))
        return "".join(parts)

    try:
        async with asyncio.timeout(WAIT):
            results = await asyncio.gather(*(one() for _ in range(21)), return_exceptions=True)
    finally:
        await transport.aclose()
    timed_out = [r for r in results if isinstance(r, StreamTimeoutError)]
    assert len(timed_out) == 1, results
    assert sorted(r for r in results if isinstance(r, str)) == ["".join(steady.tokens)] * 20
    assert max(watched) == 21  # every stream on the one wheel at once
    wheel = transport._wheel
    assert wheel is not None and wheel.watching == 0 and not wheel.armed


async def test_cancelling_the_caller_closes_the_connection(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script(tokens=tuple("abcdefghij"), delay=0.5))
    transport = OllamaTransport(scripted.base_url)
    first = asyncio.Event()
    task = asyncio.ensure_future(
        transport.stream_chat(request(scripted.base_url), Sink(lambda c, t: first.set()))
    )
    try:
        async with asyncio.timeout(WAIT):
            await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await asyncio.to_thread(scripted.wait_for_disconnect, 0, WAIT)
    finally:
        await transport.aclose()
    assert record.disconnected_at is not None
    assert record.tokens_sent < 10


async def test_version_and_models(scripted: ScriptedOllama) -> None:
    transport = OllamaTransport(scripted.base_url)
    try:
        assert await transport.version(timeout=WAIT)
        assert f"{SCRIPTED_MODEL}:latest" in await transport.list_models(timeout=WAIT)
    finally:
        await transport.aclose()


@pytest.mark.parametrize("separator", ["\u0085", "\u2028", "\u2029", "\r", "\x1c"])
async def test_unicode_line_separators_inside_a_delta_keep_the_stream(
    scripted: ScriptedOllama, separator: str
) -> None:
    """Regression: the ollama client split NDJSON like str.splitlines(), so a delta holding
    U+0085, U+2028 or U+2029 (which Ollama writes raw) cut the JSON line and lost the rest."""
    tokens = ("before", f" a{separator}b", " after", ".")
    scripted.enqueue(Script(tokens=tokens))
    transport = OllamaTransport(scripted.base_url)
    deltas: list[str] = []
    try:
        await transport.stream_chat(
            request(scripted.base_url), Sink(lambda c, _t: deltas.append(c))
        )
    finally:
        await transport.aclose()
    assert deltas == list(tokens)


async def test_a_200_answer_that_is_not_ndjson_names_the_host_and_shows_it() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"<html><body>Welcome to nginx!</body></html>\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    transport = OllamaTransport(host)
    try:
        with pytest.raises(ProtocolMismatchError) as caught:
            await transport.stream_chat(request(host), Sink())
    finally:
        await transport.aclose()
        server.close()
        await server.wait_closed()
    message = str(caught.value)
    assert host in message and "Welcome to nginx" in message and "Ollama protocol" in message


async def test_a_plain_http_host_loads_no_ca_bundle_but_https_does(
    scripted: ScriptedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the first stream of every transport built an ``ollama.AsyncClient`` (for its
    headers and the management calls) whose httpx client loaded the CA bundle — ~30 ms of CPU
    inside the first request, for a plain-http host that never speaks TLS. An https host keeps
    the default verification."""
    import ssl

    made: list[object] = []
    original = ssl.create_default_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(args or kwargs)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    scripted.enqueue(Script(tokens=("ok",)))
    transport = OllamaTransport(scripted.base_url)
    try:
        await transport.stream_chat(request(scripted.base_url), Sink())
        assert await transport.version()  # a management call through the same client
    finally:
        await transport.aclose()
    assert made == []
    tls = OllamaTransport("https://ollama.example:443")
    try:
        tls._ensure_client()
    finally:
        await tls.aclose()
    assert len(made) == 1
