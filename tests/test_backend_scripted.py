"""What the backend sends to Ollama: rendering, option mapping, structured output.

Checked on the requests the scripted server recorded (real HTTP through the `ollama` client).
"""

from __future__ import annotations

import pydantic
import pytest

from mellea_actors import MelleaSession, start_session
from mellea_actors.backends import ModelOption
from mellea_actors.stdlib.context import ChatContext
from mellea_actors.testing import Script, ScriptedOllama


def test_system_prompt_none_or_empty_sends_no_system_message(scripted: ScriptedOllama) -> None:
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        m.instruct("x", model_options={ModelOption.SYSTEM_PROMPT: None})
        m.instruct("y", model_options={ModelOption.SYSTEM_PROMPT: ""})
        m.instruct("z", model_options={ModelOption.SYSTEM_PROMPT: "Be brief."})
    none, empty, given = scripted.requests[-3:]
    assert [msg["role"] for msg in none.body["messages"]] == ["user"]
    assert [msg["role"] for msg in empty.body["messages"]] == ["user"]
    assert given.body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_model_options_map_to_ollama_and_calls_override_defaults(
    scripted: ScriptedOllama,
) -> None:
    defaults = {ModelOption.MAX_NEW_TOKENS: 10, ModelOption.TEMPERATURE: 0.5, "top_k": 3}
    with start_session(
        model_id="scripted", base_url=scripted.base_url, model_options=defaults
    ) as m:
        m.instruct("x")
        m.instruct(
            "y",
            model_options={
                ModelOption.MAX_NEW_TOKENS: 20,
                ModelOption.SEED: 42,
                ModelOption.CONTEXT_WINDOW: 2048,
                ModelOption.STOP_SEQUENCES: ["END"],
            },
        )
    first, second = scripted.requests[-2:]
    assert first.options == {"num_predict": 10, "temperature": 0.5, "top_k": 3}
    assert second.options == {
        "num_predict": 20,
        "temperature": 0.5,
        "top_k": 3,
        "seed": 42,
        "num_ctx": 2048,
        "stop": ["END"],
    }
    assert first.body["stream"] is True  # always streamed from Ollama, whatever STREAM says


def test_chat_context_sends_the_conversation_in_order(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script(tokens=["Hi", " Ada."]), Script(tokens=["Sure."]))
    with start_session(model_id="scripted", base_url=scripted.base_url, ctx=ChatContext()) as m:
        m.chat("Hello, I am Ada.")
        m.chat("Tell me more.")
    assert scripted.requests[-1].body["messages"] == [
        {"role": "user", "content": "Hello, I am Ada."},
        {"role": "assistant", "content": "Hi Ada."},
        {"role": "user", "content": "Tell me more."},
    ]


def test_simple_context_sends_no_history(
    scripted_session: MelleaSession, scripted: ScriptedOllama
) -> None:
    scripted_session.chat("one")
    scripted_session.chat("two")
    assert scripted.requests[-1].body["messages"] == [{"role": "user", "content": "two"}]


def test_format_sends_the_json_schema_and_parses(scripted: ScriptedOllama) -> None:
    class Point(pydantic.BaseModel):
        x: int
        y: int

    scripted.enqueue(Script(tokens=['{"x": ', "1, ", '"y": 2}']))
    with start_session(model_id="scripted", base_url=scripted.base_url) as m:
        mot = m.instruct("a point", format=Point)
    assert scripted.requests[-1].format == Point.model_json_schema()
    assert mot.value == '{"x": 1, "y": 2}'
    assert mot.parsed_repr == Point(x=1, y=2)


def test_requirements_are_rendered_into_the_instruction_prompt(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    scripted_session.instruct("Write a haiku.", requirements=["Use the word moon."], strategy=None)
    prompt = scripted.requests[-1].body["messages"][-1]["content"]
    assert "Write a haiku." in prompt and "Use the word moon." in prompt


async def test_a_bad_action_is_refused_before_any_generation_starts(
    scripted: ScriptedOllama, scripted_session: MelleaSession
) -> None:
    from mellea_actors.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        await scripted_session.backend.generate_from_context(object(), scripted_session.ctx)
    with pytest.raises(InvalidInputError):
        await scripted_session.backend.generate_from_context("a plain str", scripted_session.ctx)
    assert scripted_session.system.live_thunks() == []
    assert scripted.requests == []
