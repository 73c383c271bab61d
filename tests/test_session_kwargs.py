"""``start_session``'s Mellea 0.8 surface, against the scripted server.

* Mellea's keyword arguments are accepted, or refused by name (never silently ignored).
* ``max_in_flight`` defaults to None: sized to the host.
* The default model: ``MELLEA_ACTORS_MODEL``, else Mellea's default model when the host has it,
  else the embedded local model.
* ``mellea_actors.stdlib.requirements`` (``req``, ``check``, ``simple_validate``, ``reqify``)
  used the way a Mellea user does, in a session.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from mellea_actors import start_session
from mellea_actors.backends import ModelOption
from mellea_actors.core.requirement import Requirement, ValidationResult
from mellea_actors.errors import InvalidInputError, ModelNotFoundError, StreamTimeoutError
from mellea_actors.stdlib.context import ChatContext, SimpleContext
from mellea_actors.stdlib.requirements import check, req, reqify, simple_validate
from mellea_actors.stdlib.sampling import SamplingResult
from mellea_actors.testing import Script, ScriptedOllama

from .conftest import SCRIPTED_MODEL

NOWHERE = "http://127.0.0.1:9"  # nothing listens: arguments must fail before any request


@pytest.fixture(autouse=True)
def _no_configured_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MELLEA_ACTORS_MODEL", raising=False)


# -- Mellea's arguments: accepted or refused by name --------------------------------------------


@pytest.mark.parametrize("name", ["hf", "huggingface", "openai", "watsonx", "litellm"])
def test_mellea_s_other_backends_are_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidInputError, match=rf"backend_name '{name}'.*Ollama only"):
        start_session(name, SCRIPTED_MODEL, base_url=NOWHERE, check=False)  # type: ignore[arg-type]


def test_an_unknown_backend_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match="unknown backend_name 'ollamaa'"):
        start_session("ollamaa", base_url=NOWHERE, check=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"plugins": None},
        {"plugins": []},
        {"allow_context_type_change": True},
        {"allow_context_type_change": False},
        {"formatter": None},
        {"adapter_models": None},
        {"adapter_models": {}},
        {"adapter_base_model_name": None},
        {"default_to_constraint_checking_alora": False},
        {"default_to_constraint_checking_alora": True},
        {"timeout": 300.0},
        {"timeout": None},
        {"max_in_flight": None},
        {"max_in_flight": 4},
    ],
    ids=lambda kw: ",".join(f"{k}={v!r}" for k, v in kw.items()),
)
def test_mellea_s_keyword_arguments_are_accepted(
    scripted: ScriptedOllama, kwargs: dict[str, Any]
) -> None:
    with start_session("ollama", SCRIPTED_MODEL, base_url=scripted.base_url, **kwargs) as m:
        assert str(m.instruct("hi")) == "Hello world."


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"plugins": [lambda payload: None]}, "plugins=.*no plugin hooks"),
        ({"plugins": "audit"}, "plugins='audit'"),
        ({"allow_context_type_change": "yes"}, "allow_context_type_change must be a bool"),
        ({"formatter": object()}, "formatter=.*not supported"),
        ({"adapter_models": {"uncertainty": "x:latest"}}, "adapter_models=.*no adapters"),
        ({"adapter_base_model_name": "granite-4.1-3b"}, "adapter_base_model_name=.*no adapters"),
        ({"default_to_constraint_checking_alora": "no"}, "default_to_constraint_checking_alora"),
        ({"timeout": "soon"}, "timeout must be a positive number"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"temprature": 0.1}, "unknown start_session argument.*temprature"),
        ({"max_in_flight": "8"}, "max_in_flight must be an int"),
        ({"max_in_flight": True}, "max_in_flight must be an int"),
        ({"ctx": SimpleContext(), "context_type": "chat"}, "either ctx or context_type"),
        ({"context_type": "group"}, "unknown context_type 'group'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_arguments_are_refused_by_name_before_any_request(
    scripted: ScriptedOllama, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidInputError, match=named):
        start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, **kwargs)
    assert scripted.requests == [] and scripted.other_requests == []


def test_ctx_and_context_type_are_mutually_exclusive_as_a_value_error() -> None:
    with pytest.raises(ValueError, match="ctx or context_type"):
        start_session(ctx=ChatContext(), context_type="simple", base_url=NOWHERE, check=False)


def test_context_type_chat_gives_a_chat_context(scripted: ScriptedOllama) -> None:
    with start_session(
        model_id=SCRIPTED_MODEL, base_url=scripted.base_url, context_type="chat"
    ) as m:
        assert isinstance(m.ctx, ChatContext)
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url) as m:
        assert type(m.ctx) is SimpleContext


def test_model_options_are_session_defaults(scripted: ScriptedOllama) -> None:
    with start_session(
        "ollama",
        SCRIPTED_MODEL,
        base_url=scripted.base_url,
        model_options={ModelOption.TEMPERATURE: 0.1, ModelOption.MAX_NEW_TOKENS: 7},
    ) as m:
        m.instruct("a")
        m.instruct("b", model_options={ModelOption.MAX_NEW_TOKENS: 9})
    first, second = scripted.requests
    assert first.options == {"temperature": 0.1, "num_predict": 7}
    assert second.options == {"temperature": 0.1, "num_predict": 9}


def test_options_resolved_once_still_follow_changes_and_types(scripted: ScriptedOllama) -> None:
    """The backend remembers each option set it resolved: a changed ``backend.model_options``
    takes effect on the next call, and values that are equal but of another type (``True`` and
    ``1``) are not taken for each other (strict validation tells them apart)."""
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url) as m:
        opts = {ModelOption.MAX_NEW_TOKENS: 5}
        m.instruct("a", model_options=opts)
        m.instruct("b", model_options=dict(opts))  # the same set: resolved once
        m.backend.model_options[ModelOption.TEMPERATURE] = 0.5
        m.instruct("c", model_options=opts)
        m.instruct("d", model_options={"seed": 1})
        with pytest.raises(InvalidInputError, match="seed"):
            m.instruct("e", model_options={"seed": True})
    options = [r.options for r in scripted.requests]
    assert options == [
        {"num_predict": 5},
        {"num_predict": 5},
        {"num_predict": 5, "temperature": 0.5},
        {"temperature": 0.5, "seed": 1},
    ]


# -- timeout (Mellea's OllamaModelBackend argument) -------------------------------------------

STALLING = Script(tokens=("a", "b"), stall_after=1, stall_for=1.0)


def test_timeout_bounds_the_wait_for_the_next_chunk(scripted: ScriptedOllama) -> None:
    scripted.enqueue(STALLING)
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, timeout=0.2) as m:
        assert m.backend.resolve(None).stream_timeout == 0.2
        with pytest.raises(StreamTimeoutError):
            m.instruct("x")


def test_model_options_stream_timeout_wins_over_timeout(scripted: ScriptedOllama) -> None:
    scripted.enqueue(STALLING)
    with start_session(
        model_id=SCRIPTED_MODEL,
        base_url=scripted.base_url,
        timeout=0.2,
        model_options={ModelOption.STREAM_TIMEOUT: 10.0},
    ) as m:
        assert str(m.instruct("x")) == "ab"


def test_timeout_none_disables_the_stream_timeout(scripted: ScriptedOllama) -> None:
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url, timeout=None) as m:
        assert m.backend.resolve(None).stream_timeout is None
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url) as m:
        assert m.backend.resolve(None).stream_timeout == 120.0  # the default, unchanged


# -- max_in_flight --------------------------------------------------------------------------------


def test_max_in_flight_defaults_to_none_sized_to_the_host() -> None:
    assert inspect.signature(start_session).parameters["max_in_flight"].default is None


# -- the default model ----------------------------------------------------------------------------


@pytest.fixture
def host(request: pytest.FixtureRequest) -> Iterator[ScriptedOllama]:
    with ScriptedOllama(models=request.param) as server:
        yield server


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (("smollm2:135m", "granite4.1:3b", "granite4.2:3b"), "granite4.2:3b"),
        (("granite4.2:3b",), "granite4.2:3b"),
        (("smollm2:135m", "granite4.1:3b"), "granite4.1:3b"),
        (("smollm2:135m", "llama3.2:1b"), "smollm2:135m"),
    ],
    indirect=["host"],
)
def test_the_default_model_is_mellea_s_when_the_host_has_it(
    host: ScriptedOllama, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="mellea_actors"),
        start_session(base_url=host.base_url) as m,
    ):
        assert m.backend.model_id == expected
        m.instruct("hi")
    assert [r.model for r in host.requests] == [expected]
    assert [r.path for r in host.other_requests] == ["/api/tags"]  # asked once
    assert f"using {expected!r}" in caplog.text


@pytest.mark.parametrize("host", [("granite4.2:3b", "llama3.2:1b")], indirect=True)
def test_mellea_actors_model_wins_over_mellea_s_default(
    host: ScriptedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MELLEA_ACTORS_MODEL", "llama3.2:1b")
    with start_session(base_url=host.base_url) as m:
        assert m.backend.model_id == "llama3.2:1b"
    with start_session("ollama", "granite4.2:3b", base_url=host.base_url) as m:
        assert m.backend.model_id == "granite4.2:3b"  # and the argument wins over both


@pytest.mark.parametrize("host", [("granite4.2:3b",)], indirect=True)
def test_an_unknown_configured_model_names_it(
    host: ScriptedOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MELLEA_ACTORS_MODEL", "nope:1b")
    with pytest.raises(ModelNotFoundError, match="'nope:1b' not found"):
        start_session(base_url=host.base_url)


@pytest.mark.parametrize("host", [("llama3.2:1b",)], indirect=True)
def test_a_host_without_any_default_model_says_what_to_do(host: ScriptedOllama) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        start_session(base_url=host.base_url)
    message = str(info.value)
    for part in (
        host.base_url.removeprefix("http://"),
        "granite4.2:3b",
        "granite4.1:3b",
        "smollm2:135m",
        "llama3.2:1b",
        "MELLEA_ACTORS_MODEL",
        "model_id",
    ):
        assert part in message, (part, message)
    assert host.requests == []


@pytest.mark.parametrize("host", [("granite4.2:3b", "smollm2:135m")], indirect=True)
def test_without_check_the_host_is_not_asked_and_the_local_model_is_used(
    host: ScriptedOllama,
) -> None:
    with start_session(base_url=host.base_url, check=False) as m:
        assert m.backend.model_id == "smollm2:135m"
    assert host.other_requests == []


# -- mellea_actors.stdlib.requirements in a session ----------------------------------------------


def is_yes(text: str) -> bool:
    return text.strip().lower() == "yes"


def test_simple_validate_drives_rejection_sampling(scripted: ScriptedOllama) -> None:
    scripted.enqueue(Script(tokens=("no",)), Script(tokens=("yes",)))
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url) as m:
        result = m.instruct(
            "Say yes.",
            requirements=[req("Answer yes", validation_fn=simple_validate(is_yes, reason="no"))],
            return_sampling_results=True,
        )
    assert isinstance(result, SamplingResult)
    assert result.success and result.value == "yes"
    (first,), (second,) = result.sample_validations
    assert (bool(first[1]), first[1].reason) == (False, "no")
    assert bool(second[1])
    assert len(scripted.requests) == 2  # no LLM judge: the function decided


def test_check_is_validated_but_not_shown_to_the_model(scripted: ScriptedOllama) -> None:
    scripted.set_script(Script(tokens=("yes",)))
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url) as m:
        result = m.instruct(
            "Say yes.",
            requirements=[
                req("Be polite", validation_fn=simple_validate(lambda x: True)),
                check("Secret rule", validation_fn=simple_validate(is_yes)),
            ],
            return_sampling_results=True,
        )
    assert isinstance(result, SamplingResult) and result.success
    prompt = " ".join(msg["content"] for msg in scripted.requests[0].body["messages"])
    assert "Be polite" in prompt
    assert "Secret rule" not in prompt


def test_simple_validate_on_session_validate(scripted: ScriptedOllama) -> None:
    with start_session(model_id=SCRIPTED_MODEL, base_url=scripted.base_url) as m:
        short = req("Short", validation_fn=simple_validate(lambda x: (len(x) < 5, f"{len(x)}")))
        results = m.validate([short], output="a long answer")
        assert [(bool(r), r.reason) for r in results] == [(False, "13")]
        assert bool(m.validate(short, output="ok")[0])


def test_simple_validate_semantics() -> None:
    fn = simple_validate(is_yes, reason="say yes")
    empty = fn(SimpleContext())  # no model output: a failure, fn is not called
    assert isinstance(empty, ValidationResult) and not empty
    bad = simple_validate(lambda x: "maybe")  # neither a bool nor a (bool, str)
    with (
        start_session(model_id="m", base_url=NOWHERE, check=False) as m,
        pytest.raises(ValueError, match="returned str"),
    ):
        m.validate(req("x", validation_fn=bad), output="text")


def test_reqify() -> None:
    r = reqify("Be brief")
    assert isinstance(r, Requirement) and r.description == "Be brief"
    assert reqify(r) is r
    with pytest.raises(InvalidInputError, match="str or a Requirement"):
        reqify(3)  # type: ignore[arg-type]
    assert check("x").check_only and not req("x").check_only
