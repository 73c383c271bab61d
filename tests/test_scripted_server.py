"""The scripted Ollama-protocol server, driven by the real ``ollama`` client (0.6.3) over real HTTP.

No test sleeps to let things happen: they wait on events, on the server's condition variable
(``wait_for_requests`` / ``wait_for_disconnect``) or on the client, always with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import ollama
import pytest

from mellea_actors.testing import (
    OLLAMA_VERSION,
    RequestRecord,
    Script,
    ScriptedOllama,
    ScriptedOllamaProcess,
)

USER = [{"role": "user", "content": "say hello to the world"}]


@pytest.fixture
def server() -> Iterator[ScriptedOllama]:
    with ScriptedOllama(record_token_times=True) as srv:
        yield srv


@pytest.fixture
async def aclient(server: ScriptedOllama) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=server.base_url) as client:
        yield client


@pytest.fixture
def client(server: ScriptedOllama) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.base_url) as c:
        yield c


async def _collect(
    client: ollama.AsyncClient, options: dict[str, object] | None = None
) -> list[ollama.ChatResponse]:
    stream = await client.chat(model="scripted", messages=USER, stream=True, options=options)
    return [part async for part in stream]


def _text(parts: list[ollama.ChatResponse]) -> str:
    return "".join(p.message.content or "" for p in parts)


# -- the happy path -------------------------------------------------------------------------------


async def test_stream_sends_exact_tokens_then_final_metadata(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    server.enqueue(Script(tokens=("Once", " upon", " a", " time", ".")))
    parts = await _collect(aclient, options={"temperature": 0, "num_predict": 9})

    assert [p.message.content for p in parts[:-1]] == ["Once", " upon", " a", " time", "."]
    assert all(p.done is False and p.message.role == "assistant" for p in parts[:-1])
    final = parts[-1]
    assert isinstance(final, ollama.ChatResponse)
    assert final.done is True and final.done_reason == "stop"
    assert final.message.content == ""
    assert final.model == "scripted"
    assert final.eval_count == 5
    assert final.prompt_eval_count == 5  # words of the prompt
    for ns in (
        final.total_duration,
        final.load_duration,
        final.prompt_eval_duration,
        final.eval_duration,
    ):
        assert isinstance(ns, int) and ns >= 0
    assert final.created_at is not None and final.created_at.endswith("Z")

    (record,) = server.wait_for_requests(1, timeout=5, finished=True)
    assert record.path == "/api/chat" and record.model == "scripted" and record.stream is True
    assert record.messages == tuple(USER)
    assert record.options == {"temperature": 0, "num_predict": 9}
    assert record.outcome == "completed" and record.status == 200
    assert record.tokens_sent == 5 and len(record.token_times) == 5
    assert record.first_token_at == record.token_times[0]
    assert record.started_at <= record.token_times[0] <= record.token_times[-1]
    assert record.finished_at is not None and record.finished_at >= record.token_times[-1]
    assert record.disconnected_at is None


def test_wire_format_is_chunked_ndjson_like_ollama(server: ScriptedOllama) -> None:
    body = json.dumps({"model": "scripted", "messages": USER}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    headers = head.decode().split("\r\n")
    assert headers[0] == "HTTP/1.1 200 OK"
    assert "Content-Type: application/x-ndjson" in headers
    assert "Transfer-Encoding: chunked" in headers
    assert payload.endswith(b"0\r\n\r\n")
    # de-chunk: every chunk is exactly one NDJSON line
    lines = []
    rest = payload
    while True:
        size_hex, _, rest = rest.partition(b"\r\n")
        size = int(size_hex, 16)
        if size == 0:
            break
        lines.append(rest[:size])
        rest = rest[size + 2 :]
    assert all(line.endswith(b"\n") for line in lines)
    objs = [json.loads(line) for line in lines]
    assert [o["message"]["content"] for o in objs] == ["Hello", " world", ".", ""]
    assert [o["done"] for o in objs] == [False, False, False, True]
    assert set(objs[-1]) >= {
        "model",
        "created_at",
        "message",
        "done_reason",
        "done",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    }


def test_chunked_request_body_and_keep_alive(server: ScriptedOllama) -> None:
    body = json.dumps({"model": "scripted", "prompt": "hi", "stream": False}).encode()
    request = (
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (5, body[:5])
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - 5, body[5:])
    )
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
        sock.makefile("rb") as reader,
    ):
        for _ in range(2):  # the same connection serves two requests
            sock.sendall(request)
            status = reader.readline()
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            answer = json.loads(reader.read(length))
            assert status.startswith(b"HTTP/1.1 200")
            assert answer["response"] == "Hello world." and answer["done"] is True
    records = server.wait_for_requests(2, timeout=5, finished=True)
    assert [r.prompt for r in records] == ["hi", "hi"]
    assert records[0].connection == records[1].connection


def test_sync_client_reuses_the_connection(server: ScriptedOllama, client: ollama.Client) -> None:
    first = _text(list(client.chat(model="scripted", messages=USER, stream=True)))
    second = client.chat(model="scripted", messages=USER)
    assert first == second.message.content == "Hello world."
    records = server.wait_for_requests(2, timeout=5, finished=True)
    assert records[0].connection == records[1].connection


async def test_non_streaming_chat_and_generate(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    server.enqueue(Script.from_text("Two words."), Script(tokens=("a", "b", "c")))
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    reply = await aclient.chat(model="scripted", messages=USER, format=schema)
    assert reply.message.content == "Two words."
    assert reply.done is True and reply.eval_count == 2
    generated = await aclient.generate(model="scripted:latest", prompt="go", system="be brief")
    assert isinstance(generated, ollama.GenerateResponse)
    assert generated.response == "abc" and generated.eval_count == 3
    assert generated.prompt_eval_count == 3

    chat_rec, gen_rec = server.wait_for_requests(2, timeout=5, finished=True)
    assert chat_rec.stream is False and chat_rec.format == schema
    assert gen_rec.path == "/api/generate" and gen_rec.prompt == "go"
    assert gen_rec.outcome == "completed" and gen_rec.tokens_sent == 3


async def test_generate_streams_response_field(aclient: ollama.AsyncClient) -> None:
    parts = [p async for p in await aclient.generate(model="scripted", prompt="x", stream=True)]
    assert [p.response for p in parts] == ["Hello", " world", ".", ""]
    assert parts[-1].done is True and parts[-1].eval_count == 3


async def test_enqueued_scripts_then_default_then_script_function(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    server.enqueue(Script(tokens=("one",)), Script(tokens=("two",)))
    texts = [(await aclient.chat(model="scripted", messages=USER)).message.content for _ in "abc"]
    assert texts == ["one", "two", "Hello world."]

    def echo(record: RequestRecord) -> Script:
        return Script(tokens=("echo:", record.messages[-1]["content"]))

    server.set_script(echo)
    reply = await aclient.chat(model="scripted", messages=[{"role": "user", "content": "ping"}])
    assert reply.message.content == "echo:ping"


async def test_script_function_that_raises_answers_500(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    def broken(record: RequestRecord) -> Script:
        raise RuntimeError("no script for you")

    server.set_script(broken)
    with pytest.raises(ollama.ResponseError) as info:
        await aclient.chat(model="scripted", messages=USER)
    assert info.value.status_code == 500 and "no script for you" in info.value.error
    assert server.requests[0].outcome == "http_error"


async def test_metadata_endpoints(server: ScriptedOllama, aclient: ollama.AsyncClient) -> None:
    version = (await aclient._client.get("/api/version")).json()
    assert version == {"version": OLLAMA_VERSION}
    tags = await aclient.list()
    assert [m.model for m in tags.models] == ["scripted:latest"]
    shown = await aclient.show("scripted")
    assert shown.details is not None and shown.details.format == "gguf"
    assert (await aclient.ps()).models == []
    await aclient.chat(model="scripted", messages=USER)
    assert [m.model for m in (await aclient.ps()).models] == ["scripted:latest"]
    with pytest.raises(ollama.ResponseError) as info:
        await aclient.show("absent")
    assert info.value.status_code == 404
    paths = [r.path for r in server.other_requests]
    assert paths == ["/api/version", "/api/tags", "/api/show", "/api/ps", "/api/ps", "/api/show"]
    assert len(server.requests) == 1  # only generations are in `requests`


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_unknown_model_is_404(
    server: ScriptedOllama, aclient: ollama.AsyncClient, stream: bool
) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        if stream:
            async for _ in await aclient.chat(model="llama9", messages=USER, stream=True):
                pass
        else:
            await aclient.chat(model="llama9", messages=USER)
    assert info.value.status_code == 404
    assert info.value.error == 'model "llama9" not found, try pulling it first'
    (record,) = server.wait_for_requests(1, timeout=5, finished=True)
    assert record.outcome == "http_error" and record.status == 404 and record.tokens_sent == 0


async def test_scripted_http_status(server: ScriptedOllama, aclient: ollama.AsyncClient) -> None:
    server.enqueue(Script(status=503, error_message="server busy"))
    with pytest.raises(ollama.ResponseError) as info:
        await _collect(aclient)
    assert info.value.status_code == 503 and info.value.error == "server busy"


async def test_error_line_mid_stream(server: ScriptedOllama, aclient: ollama.AsyncClient) -> None:
    server.enqueue(Script(tokens=("a", "b", "c", "d"), error_after=2, error_message="oom"))
    got: list[str | None] = []
    with pytest.raises(ollama.ResponseError) as info:
        async for part in await aclient.chat(model="scripted", messages=USER, stream=True):
            got.append(part.message.content)
    assert got == ["a", "b"]
    assert info.value.status_code == -1 and info.value.error == "oom"
    (record,) = server.wait_for_requests(1, timeout=5, finished=True)
    assert record.outcome == "error_line" and record.tokens_sent == 2


async def test_error_without_stream_is_http_500(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    server.enqueue(Script(error_after=1, error_message="failed"))
    with pytest.raises(ollama.ResponseError) as info:
        await aclient.chat(model="scripted", messages=USER)
    assert info.value.status_code == 500 and info.value.error == "failed"


async def test_drop_mid_stream(server: ScriptedOllama, aclient: ollama.AsyncClient) -> None:
    server.enqueue(Script(tokens=("a", "b", "c"), drop_after=1))
    got: list[str | None] = []
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        async for part in await aclient.chat(model="scripted", messages=USER, stream=True):
            got.append(part.message.content)
    assert got == ["a"]
    (record,) = server.wait_for_requests(1, timeout=5, finished=True)
    assert record.outcome == "dropped" and record.tokens_sent == 1
    # the client recovers on a fresh connection
    assert (await aclient.chat(model="scripted", messages=USER)).message.content == "Hello world."


async def test_refuse_script_closes_without_answer(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    server.enqueue(Script(refuse=True))
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await _collect(aclient)
    assert server.wait_for_requests(1, timeout=5, finished=True)[0].outcome == "refused"


# -- disconnect notice ----------------------------------------------------------------------------


async def _cancel_after(client: ollama.AsyncClient, n_tokens: int) -> tuple[list[str], float]:
    """Iterate a stream in a task, cancel the task after ``n_tokens``; returns (tokens, when)."""
    got: list[str] = []
    enough = asyncio.Event()

    async def consume() -> None:
        async for part in await client.chat(model="scripted", messages=USER, stream=True):
            got.append(part.message.content or "")
            if len(got) >= n_tokens:
                enough.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(enough.wait(), timeout=5)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return got, cancelled_at


async def test_cancel_during_stall_is_seen_within_a_second(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    server.enqueue(Script.counting(10, stall_after=2))  # silent forever after 2 tokens
    got, cancelled_at = await _cancel_after(aclient, 2)
    assert got == ["t0 ", "t1 "]
    record = await asyncio.to_thread(server.wait_for_disconnect, 0, 1.0)
    assert record.stalled_at is not None and record.disconnected_at is not None
    assert record.disconnected_at - cancelled_at < 1.0
    assert record.stalled_at <= record.disconnected_at
    assert record.tokens_sent == 2
    done = await asyncio.to_thread(server.wait_for_requests, 1, 5.0, finished=True)
    assert done[0].outcome == "client_disconnected"


async def test_cancel_between_paced_tokens_is_seen(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    server.enqueue(Script.counting(100, delay=0.2))
    got, cancelled_at = await _cancel_after(aclient, 1)
    record = await asyncio.to_thread(server.wait_for_disconnect, -1, 1.0)
    assert record.disconnected_at is not None
    assert record.disconnected_at - cancelled_at < 1.0
    assert record.tokens_sent < 100 and got == ["t0 "]


async def test_stall_for_resumes_and_pacing_does_not_drift(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    server.enqueue(Script.counting(6, delay=0.02, stall_after=3, stall_for=0.15))
    parts = await _collect(aclient)
    assert _text(parts) == "t0 t1 t2 t3 t4 t5 "
    (record,) = server.wait_for_requests(1, timeout=5, finished=True)
    times = record.token_times
    assert record.stalled_at is not None and record.outcome == "completed"
    # never early: token i is due at first + i * delay, plus the stall for i >= 3
    for i, t in enumerate(times):
        due = times[0] + i * 0.02 + (0.15 if i >= 3 else 0.0)
        assert t >= due - 0.002, (i, t - times[0])
    assert times[3] - times[2] >= 0.15


def test_wait_for_disconnect_fails_fast_when_the_request_completed(
    server: ScriptedOllama, client: ollama.Client
) -> None:
    client.chat(model="scripted", messages=USER)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="completed"):
        server.wait_for_disconnect(0, timeout=5.0)
    assert time.monotonic() - started < 1.0
    with pytest.raises(TimeoutError):
        server.wait_for_disconnect(1, timeout=0.05)  # no such request yet
    with pytest.raises(TimeoutError):
        server.wait_for_requests(2, timeout=0.05)


async def test_stop_while_stalled_records_stalled() -> None:
    srv = ScriptedOllama(Script.counting(5, stall_after=1)).start()
    async with ollama.AsyncClient(host=srv.base_url) as c:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in await c.chat(model="scripted", messages=USER, stream=True):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        await asyncio.to_thread(srv.stop, 5.0)
        with pytest.raises(httpx.TransportError):
            await asyncio.wait_for(task, 5)
    assert srv.requests[0].outcome == "stalled"


# -- refusing connections -------------------------------------------------------------------------


async def test_refuse_connections_gives_connect_error_then_recovers_on_the_same_port(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    port = server.port
    assert (await aclient.chat(model="scripted", messages=USER)).done  # a pooled connection exists
    await asyncio.to_thread(server.refuse_connections, None)
    with pytest.raises(httpx.ConnectError):
        await _collect(aclient)
    with pytest.raises(ConnectionError):  # the client's non-streaming wrapper of ConnectError
        await aclient.chat(model="scripted", messages=USER)
    await asyncio.to_thread(server.refuse_connections, 0)
    assert server.port == port
    assert (await aclient.chat(model="scripted", messages=USER)).message.content == "Hello world."
    assert len(server.requests) == 2  # refused attempts never reached HTTP


def test_refuse_n_connections_resets_them(server: ScriptedOllama, client: ollama.Client) -> None:
    server.refuse_connections(2)
    errors = []
    for _ in range(2):
        with pytest.raises(httpx.TransportError) as info:
            client.chat(model="scripted", messages=USER)
        errors.append(info.value)
    assert not any(isinstance(e, httpx.ConnectError) for e in errors)
    assert client.chat(model="scripted", messages=USER).message.content == "Hello world."
    assert server.refused_connections == 2


# -- scale ----------------------------------------------------------------------------------------


async def test_200_concurrent_streams_complete(server: ScriptedOllama) -> None:
    server.set_script(Script.counting(20, delay=0.005))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with ollama.AsyncClient(host=server.base_url, limits=limits) as c:

        async def one(k: int) -> str:
            msgs = [{"role": "user", "content": f"stream {k}"}]
            parts = [p async for p in await c.chat(model="scripted", messages=msgs, stream=True)]
            assert parts[-1].done is True
            return _text(parts)

        texts = await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(200))), 60)
    expected = "".join(f"t{i} " for i in range(20))
    assert texts == [expected] * 200
    records = server.wait_for_requests(200, timeout=5, finished=True)
    assert {r.outcome for r in records} == {"completed"}
    assert sorted(r.messages[0]["content"] for r in records) == sorted(
        f"stream {k}" for k in range(200)
    )


async def test_peak_active_counts_the_answers_in_progress_at_once(
    server: ScriptedOllama, aclient: ollama.AsyncClient
) -> None:
    assert server.peak_active() == 0 and server.active_generations == 0
    server.enqueue(Script(status=503), Script(refuse=True))  # never an answer in progress
    for _ in range(2):
        with pytest.raises((ollama.ResponseError, httpx.TransportError, ConnectionError)):
            await aclient.chat(model="scripted", messages=USER)
    assert server.peak_active() == 0

    server.set_script(Script.counting(5, stall_after=1))  # each answer stalls after one token
    first_token = [asyncio.Event() for _ in range(4)]

    async def reader(got_one: asyncio.Event) -> None:
        async for _ in await aclient.chat(model="scripted", messages=USER, stream=True):
            got_one.set()

    tasks = [asyncio.create_task(reader(event)) for event in first_token]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_token)), 10)
    assert server.active_generations == 4 and server.peak_active() == 4
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    server.wait_for_requests(6, timeout=5, finished=True)  # finished: no longer in progress
    assert server.active_generations == 0 and server.peak_active() == 4

    server.reset_peak()
    assert server.peak_active() == 0
    server.enqueue(Script.counting(2))
    assert _text(await _collect(aclient)) == "t0 t1 "
    assert server.peak_active() == 1
    server.reset()
    assert server.peak_active() == 0 and server.requests == []


async def test_paced_tokens_late_in_one_tick_go_out_in_one_write(server: ScriptedOllama) -> None:
    """The pacer never sends early; when the loop was held up, the due tokens go out together
    (each its own NDJSON line and chunk) and the pace resumes."""
    server.set_script(Script.counting(6, delay=0.02))
    loop_blocked = threading.Event()

    def block_the_server_loop() -> None:
        time.sleep(0.1)  # on the server's loop: tokens 1 … 5 come due meanwhile
        loop_blocked.set()

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        body = json.dumps({"model": "scripted", "messages": USER}).encode()
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        server.wait_for_requests(1, timeout=5)
        server._started().loop.call_soon_threadsafe(block_the_server_loop)
        assert loop_blocked.wait(5)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, "connection closed early"
            data += chunk
    (record,) = server.wait_for_requests(1, timeout=5, finished=True)
    assert record.outcome == "completed"
    lines = [json.loads(line) for line in re.findall(rb"\{.*\}", data)]
    assert "".join(p["message"]["content"] for p in lines[:-1]) == "t0 t1 t2 t3 t4 t5 "
    times = record.token_times
    for i, t in enumerate(times):
        assert t >= times[0] + i * 0.02 - 0.002  # never early
    assert len(set(times)) < len(times)  # some were sent together, after the hold-up


# -- the subprocess and the command line ----------------------------------------------------------


async def test_subprocess_server_with_control_endpoints() -> None:
    proc = ScriptedOllamaProcess(Script.counting(3), record_token_times=True)
    await asyncio.to_thread(proc.start, 30.0)
    try:
        async with ollama.AsyncClient(host=proc.base_url) as c:
            reply = await c.chat(model="scripted", messages=USER)
            assert reply.message.content == "t0 t1 t2 "
            await asyncio.to_thread(proc.enqueue, Script.counting(50, stall_after=1))
            _, cancelled_at = await _cancel_after(c, 1)
        record = await asyncio.to_thread(proc.wait_for_disconnect, 1, 2.0)
        assert record.disconnected_at is not None
        assert record.disconnected_at - cancelled_at < 1.0  # CLOCK_MONOTONIC is system-wide
        records = await asyncio.to_thread(lambda: proc.requests)
        assert [r.outcome for r in records] == ["completed", "client_disconnected"]
        assert len(records[0].token_times) == 3
        assert await asyncio.to_thread(proc.peak_active) == 1  # one after the other
        assert await asyncio.to_thread(lambda: proc.active_generations) == 0
        await asyncio.to_thread(proc.reset_peak)
        assert await asyncio.to_thread(proc.peak_active) == 0
    finally:
        await asyncio.to_thread(proc.stop, 10.0)
    assert proc._proc is not None and proc._proc.returncode == 0


@pytest.mark.parametrize("how", ["stdin", "sigterm"])
def test_cli_prints_url_and_stops(how: str) -> None:
    cmd = [sys.executable, "-m", "mellea_actors.testing", "--tokens", "4", "--delay", "0.001"]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            url = proc.stdout.readline().decode().strip()
            assert url.startswith("http://127.0.0.1:")
            with ollama.Client(host=url, timeout=10) as c:
                text = _text(list(c.chat(model="scripted", messages=USER, stream=True)))
            assert text == "t0 t1 t2 t3 "
            if how == "stdin":
                proc.stdin.close()
            else:
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
