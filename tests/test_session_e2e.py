"""The session API end to end, against the real local Ollama (smollm2:135m).

Short generations, generous timeouts, assertions on properties rather than on model text.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pydantic
import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.core.base import CBlock, ModelOutputThunk
from mellea_actors.core.requirement import Requirement, ValidationResult
from mellea_actors.errors import InvalidInputError, ModelNotFoundError
from mellea_actors.helpers.async_helpers import wait_for_all_mots
from mellea_actors.stdlib.components import Message
from mellea_actors.stdlib.context import ChatContext, SimpleContext
from mellea_actors.stdlib.session import STALE_CONTEXT_WARNING
from tests.conftest import E2E_OPTIONS, LOCAL_MODEL

pytestmark = pytest.mark.ollama

STREAM = {ModelOption.STREAM: True}


async def test_parallel_thunks_start_lazily_and_resolve(session: MelleaSession) -> None:
    thunks = [
        await session.ainstruct(f"Write a poem about {t}.")
        for t in ("mountains", "rivers", "forests")
    ]
    assert [t.is_computed() for t in thunks] == [False, False, False]
    # generation runs before anyone asks for a value: each thunk receives its first chunk
    for t in thunks:
        await asyncio.to_thread(
            session.system.log.wait_for, "first_chunk", thunk=t.request_id, timeout=60
        )
    await asyncio.gather(*(t.avalue() for t in thunks))
    for t in thunks:
        assert t.is_computed() and t.value and t.value.strip()
        assert t.usage is not None and (t.usage["completion_tokens"] or 0) > 0


async def test_wait_for_all_mots_on_real_ollama(session: MelleaSession) -> None:
    thunks = [await session.ainstruct(f"Write a short poem about {t}.") for t in ("sea", "sky")]
    await wait_for_all_mots(thunks)
    assert all(t.value for t in thunks)


async def test_streaming_concatenation_equals_value(session: MelleaSession) -> None:
    mot = await session.ainstruct(
        "Write a short story about a robot learning to cook.", model_options=STREAM
    )
    pieces = []
    while not mot.is_computed():
        pieces.append(await mot.astream())
    assert len([p for p in pieces if p]) >= 2
    assert "".join(pieces) == mot.value
    assert mot.generation is not None and mot.generation.streaming
    assert mot.generation.finish_reason in {"stop", "length"}


async def test_stream_false_single_call_and_computed_first_call(session: MelleaSession) -> None:
    mot = await session.ainstruct("Say hello.", model_options={ModelOption.STREAM: False})
    whole = await mot.astream()
    assert whole and whole == mot.value and mot.is_computed()
    done = await session.ainstruct("Say goodbye.")
    value = await done.avalue()
    assert await done.astream() == value


async def test_cancel_stops_a_real_generation(session: MelleaSession) -> None:
    mot = await session.ainstruct(
        "Write a very long story.", model_options={**STREAM, ModelOption.MAX_NEW_TOKENS: 64}
    )
    first = await mot.astream()
    assert first
    await mot.cancel()
    assert mot.cancelled and mot.is_computed()
    assert mot.value is not None and mot.value.startswith(first)
    assert mot.usage is not None and (mot.usage["completion_tokens"] or 0) >= 1


async def test_structured_output_with_format(session: MelleaSession) -> None:
    class Person(pydantic.BaseModel):
        name: str
        age: int

    mot = await session.ainstruct(
        "Invent a person. Reply in JSON with a name and an age.",
        format=Person,
        model_options={ModelOption.MAX_NEW_TOKENS: 48},
        await_result=True,
    )
    assert mot.is_computed()
    assert isinstance(mot.parsed_repr, Person)
    assert Person.model_validate_json(mot.value or "") == mot.parsed_repr


async def test_requirements_run_rejection_sampling(session: MelleaSession) -> None:
    calls: list[str] = []

    def never(ctx: object) -> ValidationResult:
        calls.append("x")
        return ValidationResult(False, reason="never satisfied")

    result = await session.ainstruct(
        "Say hi.",
        requirements=[Requirement("be friendly", validation_fn=never)],
        return_sampling_results=True,
    )
    assert not result.success
    assert len(result.sample_generations) == 2 and len(calls) == 2  # budget 2
    assert result.result.is_computed()
    ok = await session.ainstruct(
        "Say hi.", requirements=[Requirement("non-empty", validation_fn=lambda c: True)]
    )
    assert isinstance(ok, ModelOutputThunk) and ok.is_computed() and ok.value


async def test_requirements_are_rendered_into_the_prompt(session: MelleaSession) -> None:
    session_ctx = session.ctx
    mot = await session.ainstruct(
        "Say hi.", requirements=["Mention the word banana."], strategy=None
    )
    await mot.avalue()
    assert mot.action is not None
    assert "Mention the word banana." in mot.action.format_for_llm()
    assert session_ctx is not session.ctx  # contexts are replaced, not mutated


async def test_validate_query_transform(session: MelleaSession) -> None:
    results = await session.avalidate(
        [Requirement("short", validation_fn=lambda ctx: True)], output=CBlock("hello")
    )
    assert len(results) == 1 and bool(results[0])
    q = await session.aquery(CBlock("The sky is blue."), "What color is the sky?")
    assert not q.is_computed() or q.value
    assert await q.avalue()
    t = await session.atransform(CBlock("hello world"), "Write it in capital letters.")
    assert await t.avalue()


# -- context --------------------------------------------------------------------------------------
@pytest.fixture
def chat_session(ollama_url: str) -> Iterator[MelleaSession]:
    with start_session(
        model_id=LOCAL_MODEL, base_url=ollama_url, ctx=ChatContext(), model_options=E2E_OPTIONS
    ) as m:
        yield m


async def test_sequential_chat_logs_nothing_and_sees_the_first_turn(
    chat_session: MelleaSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mellea_actors")
    m = chat_session
    r1 = await m.achat("Hello. My name is Ada.")
    r2 = await m.achat("Tell me more.")
    assert isinstance(r1, Message) and r1.role == "assistant" and str(r1) == r1.content
    assert str(r2)
    assert STALE_CONTEXT_WARNING not in caplog.text
    # the second request carried the first turn
    history = m.ctx.as_list()
    assert [type(x).__name__ for x in history] == [
        "Message",
        "ModelOutputThunk",
        "Message",
        "ModelOutputThunk",
    ]
    assert history[1].value == r1.content


async def test_concurrent_chat_logs_the_stale_context_warning(
    chat_session: MelleaSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mellea_actors")
    m = chat_session
    await asyncio.gather(m.achat("Hello."), m.achat("Hi there."))
    assert caplog.messages.count(STALE_CONTEXT_WARNING) == 1


async def test_simple_context_parallel_calls_log_nothing(
    session: MelleaSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mellea_actors")
    thunks = [await session.ainstruct("Say hi.") for _ in range(3)]
    await wait_for_all_mots(thunks)
    assert STALE_CONTEXT_WARNING not in caplog.text


async def test_lazy_thunk_in_chat_history_is_awaited(
    chat_session: MelleaSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mellea_actors")
    m = chat_session
    first = await m.ainstruct("Name a fruit.")
    assert not first.is_computed()
    second = await m.ainstruct("Name another one.")  # renders `first` into its history
    assert first.is_computed()  # awaited, not an AssertionError
    assert await second.avalue()
    assert STALE_CONTEXT_WARNING in caplog.text  # it was issued while `first` ran


# -- sync use -------------------------------------------------------------------------------------
def test_sync_methods_from_a_plain_thread(ollama_url: str) -> None:
    out: dict[str, object] = {}

    def worker() -> None:
        with start_session(
            model_id=LOCAL_MODEL, base_url=ollama_url, model_options=E2E_OPTIONS
        ) as m:
            out["instruct"] = m.instruct("Say hi.")
            out["chat"] = m.chat("Hello.")
            out["validate"] = m.validate([Requirement("x", validation_fn=lambda c: True)])

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    instruct = out["instruct"]
    assert isinstance(instruct, ModelOutputThunk) and instruct.is_computed() and instruct.value
    assert isinstance(out["chat"], Message) and str(out["chat"])
    assert isinstance(out["validate"], list) and bool(out["validate"][0])


async def test_sync_methods_inside_a_running_event_loop(session: MelleaSession) -> None:
    # as in a notebook cell: a sync call while this thread's loop runs
    asyncio.get_running_loop()
    mot = session.instruct("Say hi.")
    assert mot.is_computed() and mot.value
    q = session.query(CBlock("Water is wet."), "Is water wet?")
    assert q.is_computed() and q.value


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_fails_before_any_request(ollama_url: str) -> None:
    with pytest.raises(InvalidInputError, match="ctx"):
        start_session(base_url=ollama_url, ctx=SimpleContext(), context_type="chat")
    with pytest.raises(InvalidInputError, match="context_type"):
        start_session(base_url=ollama_url, context_type="group")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="temperature"):
        start_session(
            model_id=LOCAL_MODEL,
            base_url=ollama_url,
            model_options={ModelOption.TEMPERATURE: "hot"},
        )
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        start_session(model_id="no-such-model", base_url=ollama_url)


async def test_bad_option_in_a_call_names_it(session: MelleaSession) -> None:
    before = len(session.system.log.events(event="generation_started"))
    with pytest.raises(InvalidInputError, match="num_predict"):
        await session.ainstruct("x", model_options={"num_predict": "lots"})
    with pytest.raises(InvalidInputError, match="did you mean"):
        await session.ainstruct("x", model_options={"temprature": 0.1})
    assert len(session.system.log.events(event="generation_started")) == before
