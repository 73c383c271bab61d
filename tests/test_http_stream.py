"""The chat stream's own HTTP/1.1 client (transport/http_stream.py) and the admission policy.

Against the scripted Ollama-protocol server: connections are kept alive and reused, an idle
connection the server closed is never used for a request that then fails, "server busy" (503)
answers are sent again without counting as restarts, the default number of requests in flight
is not a fixed 256, and an answer that is not HTTP gives a clear error.
"""

from __future__ import annotations

import asyncio

import pytest

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.errors import BackendResponseError, ProtocolMismatchError
from mellea_actors.runtime.restart_policy import RestartPolicy
from mellea_actors.testing import Script, ScriptedOllama
from mellea_actors.transport.admission import INITIAL_LIMIT, Admission, Ticket
from mellea_actors.transport.ollama_http import default_max_in_flight

from .conftest import SCRIPTED_MODEL

STREAM = {ModelOption.STREAM: True}
WAIT = 10.0
TOKENS = ("a ", "b ", "c")


def events(m: object, name: str) -> list[dict[str, object]]:
    return m.system.log.events(event=name)  # type: ignore[attr-defined, no-any-return]


def test_sequential_generations_reuse_one_connection(scripted: ScriptedOllama) -> None:
    scripted.set_script(Script(tokens=TOKENS))
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, check=False) as m:
        values = [str(m.instruct(f"q{i}")) for i in range(5)]
    assert values == ["".join(TOKENS)] * 5
    chats = [r for r in scripted.requests if r.path == "/api/chat"]
    assert len(chats) == 5
    assert len({r.connection for r in chats}) == 1  # kept alive, reused


def test_an_idle_connection_the_server_closed_is_not_a_failure(scripted: ScriptedOllama) -> None:
    scripted.set_script(Script(tokens=TOKENS))
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, check=False) as m:
        assert str(m.instruct("first")) == "".join(TOKENS)
        scripted.refuse_connections(None)  # closes the idle keep-alive connection too
        scripted.refuse_connections(0)  # listening again, same port
        assert str(m.instruct("second")) == "".join(TOKENS)
        assert events(m, "generator_restarting") == []  # no restart: a fresh connection
        assert events(m, "generation_failed") == []
    chats = [r for r in scripted.requests if r.path == "/api/chat"]
    assert len(chats) == 2 and chats[0].connection != chats[1].connection


def test_server_busy_is_sent_again_without_counting_as_restarts(
    scripted: ScriptedOllama,
) -> None:
    busy = Script(status=503, error_message="server busy, please try again")
    # more busy answers than max_restarts (2) allows restarts: they are not restarts
    scripted.enqueue(busy, busy, busy, busy, Script(tokens=TOKENS))
    policy = RestartPolicy(backoff_initial=0.001, backoff_max=0.01)
    with start_session(
        model_id=SCRIPTED_MODEL, base_url=scripted.base_url, check=False, restart_policy=policy
    ) as m:
        assert str(m.instruct("q")) == "".join(TOKENS)
        busy_retries = events(m, "generator_restarting")
        assert len(busy_retries) == 4
        assert all("server busy" in str(e["reason"]) for e in busy_retries)
        assert events(m, "escalated") == []


def test_server_busy_gives_up_after_busy_retry_for(scripted: ScriptedOllama) -> None:
    scripted.set_script(Script(status=503, error_message="server busy"))
    policy = RestartPolicy(backoff_initial=0.001, backoff_max=0.01, busy_retry_for=0.0)
    with (
        start_session(
            model_id=SCRIPTED_MODEL, base_url=scripted.base_url, check=False, restart_policy=policy
        ) as m,
        pytest.raises(BackendResponseError, match="503") as caught,
    ):
        m.instruct("q")
    assert caught.value.status_code == 503


async def test_default_concurrency_is_not_a_fixed_256(scripted: ScriptedOllama) -> None:
    """Regression: max_in_flight defaulted to 256, so the 257th request waited for a slot."""
    n = 300
    assert default_max_in_flight() >= n
    scripted.set_script(Script(tokens=("x",), first_delay=1.0))
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, check=False) as m:
        mots = [await m.ainstruct(f"q{k}", model_options=STREAM) for k in range(n)]
        # every request reaches the server while the first answers are still held back
        records = await asyncio.to_thread(scripted.wait_for_requests, n, WAIT)
        assert len(records) == n
        assert all(r.finished_at is None for r in records)
        await asyncio.gather(*(mot.cancel() for mot in mots))


def test_an_answer_that_is_not_http_is_a_protocol_mismatch() -> None:
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        policy = RestartPolicy(max_restarts=0)
        with (
            start_session(
                model_id=SCRIPTED_MODEL,
                base_url=f"http://127.0.0.1:{port}",
                check=False,
                restart_policy=policy,
            ) as m,
            pytest.raises(ProtocolMismatchError, match=r"SSH-2\.0") as caught,
        ):
            m.instruct("q")
        assert f"127.0.0.1:{port}" in str(caught.value)
    finally:
        thread.join(WAIT)
        listener.close()


async def test_a_full_host_is_not_hammered_with_retries(scripted: ScriptedOllama) -> None:
    """Regression: with no client-side cap, every request beyond what the host takes got a 503
    and was sent again after each backoff (hundreds of 503s here). The transport learns the
    host's limit from its first 503s; the rest wait for a place, in order (admission.py)."""
    scripted.set_max_active(5)
    scripted.set_script(Script(tokens=("a ", "b "), delay=0.02))
    n = 60
    policy = RestartPolicy(backoff_initial=0.01, backoff_max=0.05)
    with start_session(
        model_id=SCRIPTED_MODEL, base_url=scripted.base_url, check=False, restart_policy=policy
    ) as m:
        mots = [await m.ainstruct(f"q{k}", model_options=STREAM) for k in range(n)]
        async with asyncio.timeout(WAIT):
            values = await asyncio.gather(*(mot.avalue() for mot in mots))
    assert values == ["a b "] * n
    assert scripted.peak_active() <= 5
    assert scripted.busy_answers < 1.5 * n  # about one per request of the first burst


async def test_a_burst_beyond_what_the_host_takes_opens_few_connections(
    scripted: ScriptedOllama,
) -> None:
    """Regression (memory): the limit started at max_in_flight, so a burst of 2,048 requests to a
    host that takes 40 sent all of them (all but 40 answered 503), and the process kept the
    memory of every connection it had opened. Slow start (admission.py) sends INITIAL_LIMIT,
    then one more per request the host takes, until its first 503."""
    n, takes = 2 * INITIAL_LIMIT, 40
    assert default_max_in_flight() >= n > INITIAL_LIMIT
    scripted.set_max_active(takes)
    scripted.set_script(Script(tokens=("x",), first_delay=2.0))
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, check=False) as m:
        mots = [await m.ainstruct(f"q{k}", model_options=STREAM) for k in range(n)]
        await asyncio.to_thread(scripted.wait_for_requests, takes, WAIT)
        async with asyncio.timeout(WAIT):
            values = await asyncio.gather(*(mot.avalue() for mot in mots[:takes]))
        assert values == ["x"] * takes
        assert scripted.busy_answers <= INITIAL_LIMIT + takes  # not n - takes
        await asyncio.gather(*(mot.cancel() for mot in mots[takes:]))


async def test_slow_start_doubles_while_the_host_takes_all() -> None:
    adm = Admission(asyncio.get_running_loop(), max_limit=10_000, initial=4)

    class Client:
        granted = 0

        def admission_granted(self, ticket: Ticket) -> None:
            Client.granted += 1

        def admission_expired(self, ticket: Ticket) -> None:
            raise AssertionError("no timeout here")

    client = Client()
    tickets = [adm.enter(client) for _ in range(20)]
    assert adm.in_flight == 4 and adm.waiting == 16
    for _ in range(4):  # the first window answered: four more each
        adm.answered()
    assert adm.limit == 8 and adm.in_flight == 8 and Client.granted == 4
    adm.busy()  # the host is full at 8: slow start is over
    assert adm.limit == 7 and not adm.slow_start
    adm.answered()
    assert adm.limit == 7
    for t in tickets:
        t.release() if t.state == 1 else t.cancel()
    assert adm.in_flight == 0 and adm.waiting == 0
