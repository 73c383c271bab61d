"""Every assumption ``mellea_actors/_compat.py`` documents about pykka's and ollama's internals.

An upgrade of pykka or ollama that breaks one fails here, with a message naming the assumption,
instead of an actor hanging somewhere. The helpers of ``_compat`` are used where they exist;
the raw private names where the assumption is about them.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pykka
import pytest
from pykka import _envelope as pykka_envelope
from pykka import _threading as pykka_threading
from pykka import messages as pykka_messages

from mellea_actors import _compat
from mellea_actors.runtime.loop import ActorLoop, LoopActor


def assumption(text: str) -> str:
    return f"_compat assumption broken (pykka/ollama upgraded?): {text}"


# -- pykka: ThreadingFuture -----------------------------------------------------------------------
def test_compat_reexports_the_private_pykka_types() -> None:
    assert _compat.ThreadingFuture is pykka_threading.ThreadingFuture, assumption(
        "pykka._threading.ThreadingFuture is the base of LoopFuture"
    )
    assert _compat.Envelope is pykka_envelope.Envelope, assumption("pykka._envelope.Envelope")
    assert _compat.ActorStop is pykka_messages._ActorStop, assumption(
        "pykka.messages._ActorStop is the stop message"
    )


def test_threading_future_has_a_condition_guarding_its_result() -> None:
    future: Any = pykka_threading.ThreadingFuture()
    assert hasattr(future, "_condition"), assumption("ThreadingFuture has _condition")
    assert isinstance(future._condition, threading.Condition), assumption(
        "ThreadingFuture._condition is a threading.Condition"
    )
    assert _compat.future_condition(future) is future._condition
    # it is the lock set() takes (LoopFuture registers its callbacks under it: no lost wake-up)
    taken: list[bool] = []

    class Recording(threading.Condition):
        def __enter__(self) -> bool:
            taken.append(True)
            return super().__enter__()

    future._condition = Recording()
    future.set("v")
    assert taken, assumption("ThreadingFuture.set() takes _condition")
    assert future.get(timeout=1) == "v"


def test_threading_future_result_is_none_until_set() -> None:
    future: Any = pykka_threading.ThreadingFuture()
    assert hasattr(future, "_result"), assumption("ThreadingFuture has _result")
    assert future._result is None, assumption("ThreadingFuture._result is None until set")
    assert not _compat.future_is_set(future)
    future.set(None)  # a None *value* must still read as set
    assert future._result is not None, assumption("ThreadingFuture._result is set by set()")
    assert _compat.future_is_set(future)

    failed: Any = pykka_threading.ThreadingFuture()
    failed.set_exception((ValueError, ValueError("x"), None))
    assert failed._result is not None, assumption("set_exception() sets _result too")
    assert _compat.future_is_set(failed)


def test_threading_future_get_hook_marks_converted_futures() -> None:
    future: Any = pykka_threading.ThreadingFuture()
    assert hasattr(future, "_get_hook"), assumption("ThreadingFuture has _get_hook")
    assert future._get_hook is None, assumption("_get_hook is None for a plain future")
    assert not _compat.future_has_get_hook(future)
    future.set_get_hook(lambda timeout: "hooked")
    assert future._get_hook is not None, assumption("set_get_hook() sets _get_hook")
    assert _compat.future_has_get_hook(future)
    assert future._result is None, assumption("a converted future has no result of its own")
    assert future.get(timeout=1) == "hooked"


# -- pykka: envelopes, the stop message, the actor hooks ------------------------------------------
class _RecordingInbox:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any, /) -> None:
        self.items.append(item)


class _MarkerFuture(pykka_threading.ThreadingFuture[Any]):
    pass


class _InboxActor(pykka.Actor):
    """Never started: we only look at what pykka's ActorRef puts in its inbox."""

    @staticmethod
    def _create_actor_inbox() -> Any:
        return _RecordingInbox()

    @staticmethod
    def _create_future() -> Any:
        return _MarkerFuture()

    def _start_actor_loop(self) -> None:  # pragma: no cover - never started
        raise AssertionError("not started in this test")


def test_envelope_has_message_and_reply_to() -> None:
    envelope = pykka_envelope.Envelope("m")
    assert envelope.message == "m", assumption("Envelope.message")
    assert envelope.reply_to is None, assumption("Envelope.reply_to is None for a tell")


def test_tell_ask_and_stop_put_envelopes_in_the_inbox_created_by_the_hooks() -> None:
    actor = _InboxActor()
    inbox = actor.actor_inbox
    assert isinstance(inbox, _RecordingInbox), assumption(
        "pykka.Actor.__init__ calls _create_actor_inbox() for its inbox"
    )
    actor.actor_ref.tell("told")
    future = actor.actor_ref.ask("asked", block=False)
    actor.actor_ref.stop(block=False)
    told, asked, stop = inbox.items
    for envelope in (told, asked, stop):
        assert isinstance(envelope, _compat.Envelope), assumption("the inbox receives Envelopes")
    assert (told.message, told.reply_to) == ("told", None), assumption("tell → Envelope(message)")
    assert asked.message == "asked" and asked.reply_to is future, assumption(
        "ask → Envelope(message, reply_to=the future it returns)"
    )
    assert isinstance(future, _MarkerFuture), assumption(
        "ActorRef.ask makes its future with the actor class's _create_future()"
    )
    assert isinstance(stop.message, _compat.ActorStop), assumption(
        "ActorRef.stop() sends an _ActorStop"
    )
    assert stop.reply_to is not None, assumption("ActorRef.stop() asks (it waits for a reply)")


def test_actor_stop_message_constructs() -> None:
    message = pykka_messages._ActorStop()
    assert isinstance(message, pykka_messages._ActorStop)
    assert isinstance(_compat.make_actor_stop(), pykka_messages._ActorStop), assumption(
        "_ActorStop() takes no arguments"
    )


@pytest.mark.parametrize("hook", _compat.PYKKA_ACTOR_HOOKS)
def test_pykka_actor_has_the_hook(hook: str) -> None:
    assert callable(getattr(pykka.Actor, hook, None)), assumption(f"pykka.Actor.{hook} exists")


def test_the_hooks_we_override_are_the_ones_we_name() -> None:
    overridden = {
        name for name in vars(LoopActor) if name.startswith("_") and hasattr(pykka.Actor, name)
    }
    # (``_abc_impl`` is abc's bookkeeping: pykka.Actor is an ABC)
    private = {name for name in overridden if not name.startswith("__")} - {"_abc_impl"}
    assert private <= set(_compat.PYKKA_ACTOR_HOOKS), (
        f"LoopActor overrides pykka.Actor internals not listed in PYKKA_ACTOR_HOOKS: "
        f"{sorted(private - set(_compat.PYKKA_ACTOR_HOOKS))}"
    )


class _Dispatch(pykka.ThreadingActor):
    """Never started: _handle_receive is called directly, as LoopActor does."""

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0
        self.received: list[Any] = []

    def _stop(self) -> None:
        self.stops += 1

    def on_receive(self, message: Any) -> Any:
        self.received.append(message)
        return ("got", message)

    def double(self, x: int) -> int:
        return 2 * x


def test_handle_receive_answers_actor_stop_by_calling_stop() -> None:
    actor = _Dispatch()
    _compat.handle_receive(actor, _compat.make_actor_stop())
    assert actor.stops == 1, assumption("_handle_receive(_ActorStop()) calls self._stop()")
    assert actor.received == [], assumption("_ActorStop never reaches on_receive")


def test_handle_receive_dispatches_messages_and_proxy_calls() -> None:
    actor = _Dispatch()
    assert _compat.handle_receive(actor, "hi") == ("got", "hi"), assumption(
        "_handle_receive passes other messages to on_receive and returns its answer"
    )
    call = pykka_messages.ProxyCall(attr_path=("double",), args=(21,), kwargs={})
    assert _compat.handle_receive(actor, call) == 42, assumption(
        "_handle_receive serves proxies' ProxyCall"
    )
    assert actor.stops == 0


@pytest.fixture
def actor_loop() -> Iterator[ActorLoop]:
    loop = ActorLoop(name="mellea-actors-test-compat").start()
    yield loop
    assert loop.stop(timeout=5)


class _Stopper(LoopActor):
    def __init__(self, actor_loop: ActorLoop, stopped_on: list[str]) -> None:
        super().__init__(actor_loop)
        self.stopped_on = stopped_on

    def on_receive(self, message: Any) -> Any:
        return message

    def on_stop(self) -> None:
        self.stopped_on.append(threading.current_thread().name)


def test_a_loop_actor_stops_through_pykkas_stop_message(actor_loop: ActorLoop) -> None:
    stopped_on: list[str] = []
    ref = _Stopper.start(actor_loop, stopped_on)
    assert ref.ask("x", timeout=5) == "x"
    assert ref.stop(timeout=5) is True
    assert stopped_on == [actor_loop.thread.name], assumption(
        "ActorRef.stop() → _ActorStop → _handle_receive → our _stop, on the loop thread"
    )
    assert not ref.is_alive()


# -- ollama ---------------------------------------------------------------------------------------
def test_ollama_client_module_has_parse_host() -> None:
    module = importlib.import_module("ollama._client")
    assert callable(getattr(module, "_parse_host", None)), assumption(
        "ollama._client._parse_host exists"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost:1234", "http://localhost:1234"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9"),
        ("https://ollama.example", "https://ollama.example:443"),
    ],
)
def test_parse_host_is_the_clients_normalisation(given: str, expected: str) -> None:
    client_form = importlib.import_module("ollama._client")._parse_host(given)
    assert _compat.parse_host(given) == client_form, assumption(
        "parse_host() gives the ollama client's own form"
    )
    assert _compat.parse_host(given) == expected, assumption(
        f"ollama normalises {given!r} to {expected!r}"
    )


def test_http_client_of_an_async_client_is_its_httpx_client() -> None:
    client = ollama.AsyncClient(host="http://127.0.0.1:1")
    http = _compat.http_client_of(client)
    try:
        assert isinstance(http, httpx.AsyncClient), assumption(
            "ollama.AsyncClient._client is an httpx.AsyncClient"
        )
        assert http is client._client  # type: ignore[attr-defined]
        assert str(http.base_url).rstrip("/") == "http://127.0.0.1:1", assumption(
            "its base_url is the host (GET /api/version is sent relative to it)"
        )
    finally:
        asyncio.run(http.aclose())
