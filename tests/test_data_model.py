"""Unit tests of the pure data types of the public face (no I/O, no actors)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mellea_actors.backends import ModelOption
from mellea_actors.backends.model_options import (
    DEFAULT_STREAM_TIMEOUT,
    ResolvedOptions,
    resolve_options,
)
from mellea_actors.core.backend import Backend
from mellea_actors.core.cblock import CBlock, render_plain
from mellea_actors.core.context_chain import SIMPLE_CONTEXT_KEEP, Context, ContextTurn
from mellea_actors.core.requirement import (
    PartialValidationResult,
    Requirement,
    ValidationResult,
    check,
    default_output_to_bool,
    req,
    simple_validate,
)
from mellea_actors.errors import InvalidInputError
from mellea_actors.stdlib.components import Instruction, Message
from mellea_actors.stdlib.context import ChatContext, SimpleContext

# -- test doubles ---------------------------------------------------------------------------


class StubThunk:
    """The duck-typed surface of a ModelOutputThunk: computed once ``avalue()`` ran."""

    def __init__(self, text: str, *, computed: bool = False) -> None:
        self._text = text
        self._computed = computed
        self.avalue_calls = 0

    def is_computed(self) -> bool:
        return self._computed

    @property
    def value(self) -> str | None:
        return self._text if self._computed else None

    async def avalue(self) -> str:
        self.avalue_calls += 1
        self._computed = True
        return self._text

    def __str__(self) -> str:
        return self._text if self._computed else ""


class FakeBackend(Backend):
    """Answers every generation with a fixed text; records what it was asked."""

    def __init__(self, answer: str) -> None:
        self.model_id = "fake-model"
        self.model_options = {}
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    async def generate_from_context(
        self,
        action: Any,
        ctx: Context,
        *,
        format: Any = None,
        model_options: dict[str, Any] | None = None,
        tool_calls: bool = False,
    ) -> tuple[Any, Context]:
        self.calls.append(
            {"action": action, "ctx": ctx, "format": format, "model_options": model_options}
        )
        mot = StubThunk(self.answer)
        return mot, ctx.add(action).add(mot)  # type: ignore[arg-type]


class MaxSentencesReq(Requirement):
    """The seed's streaming requirement, verbatim in spirit."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._count = 0
        self.seen: list[str] = []

    def format_for_llm(self) -> str:
        return f"The response must be at most {self._limit} sentences."

    async def stream_validate(
        self, chunk: str, *, backend: Backend, ctx: Context
    ) -> PartialValidationResult:
        self._count += 1
        self.seen.append(chunk)
        if self._count > self._limit:
            return PartialValidationResult("fail", reason="Too many sentences")
        return PartialValidationResult("unknown")

    async def validate(
        self, backend: Backend, ctx: Context, *, format: Any = None, model_options: Any = None
    ) -> ValidationResult:
        return ValidationResult(result=True)


def output_ctx(text: str, *, computed: bool = True) -> tuple[SimpleContext, StubThunk]:
    mot = StubThunk(text, computed=computed)
    return SimpleContext().add(Message("user", "question")).add(mot), mot  # type: ignore[arg-type]


# -- CBlock ---------------------------------------------------------------------------------


def test_cblock_str_and_validation() -> None:
    assert str(CBlock("abc")) == "abc"
    assert str(CBlock(None)) == ""
    assert CBlock("x", {"k": 1}).meta == {"k": 1}
    with pytest.raises(InvalidInputError, match="str or None"):
        CBlock(42)  # type: ignore[arg-type]


# -- contexts -------------------------------------------------------------------------------


def test_context_add_never_mutates_and_keeps_order() -> None:
    root = SimpleContext()
    a, b, c = CBlock("a"), CBlock("b"), CBlock("c")
    c1 = root.add(a)
    c2 = c1.add(b)
    branch = c1.add(c)

    assert root.is_root_node and root.as_list() == [] and root.node_data is None
    assert c1.as_list() == [a]
    assert c2.as_list() == [a, b]
    assert branch.as_list() == [a, c]
    assert c2.previous_node is c1 and c1.previous_node is root
    assert c2.node_data is b and not c2.is_root_node
    assert type(c2) is SimpleContext and type(branch) is SimpleContext
    assert c2.as_list(last_n_components=1) == [b]
    assert c2.as_list(last_n_components=0) == []
    assert c2.as_list(last_n_components=10) == [a, b]


@given(st.lists(st.text(max_size=5), max_size=20))
def test_context_as_list_is_the_sequence_of_adds(texts: list[str]) -> None:
    blocks = [CBlock(t) for t in texts]
    ctx: Context = ChatContext()
    snapshots = []
    for block in blocks:
        snapshots.append(ctx)
        ctx = ctx.add(block)
    assert ctx.as_list() == blocks
    for i, snap in enumerate(snapshots):
        assert snap.as_list() == blocks[:i]


@given(st.lists(st.text(max_size=5), max_size=12))
def test_a_simple_context_keeps_its_newest_items_like_a_subclass_does(texts: list[str]) -> None:
    """SimpleContext links its nodes directly (its add is on every request's path); a subclass
    goes the general way. Both keep the same newest items, and nothing older stays reachable."""

    class Configured(SimpleContext):
        def __init__(self) -> None:
            super().__init__()
            self.label = "kept"

    blocks = [CBlock(t) for t in texts]
    plain: Context = SimpleContext()
    sub: Context = Configured()
    for block in blocks:
        plain, sub = plain.add(block), sub.add(block)
        assert type(plain) is SimpleContext and not plain.is_root_node
    assert plain.as_list() == sub.as_list() == blocks[-SIMPLE_CONTEXT_KEEP:]
    assert plain.is_chat_context is False and plain.view_for_generation() == []
    node: Context | None = plain
    depth = 0
    while node is not None and not node.is_root_node:
        node, depth = node.previous_node, depth + 1
    assert depth == min(len(blocks), SIMPLE_CONTEXT_KEEP)  # nothing older is reachable


def test_context_rejects_bad_items_and_arguments() -> None:
    with pytest.raises(InvalidInputError, match="None"):
        SimpleContext().add(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="CBlock or a Message"):
        SimpleContext().add("plain text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="last_n_components"):
        SimpleContext().as_list(-1)


def test_simple_context_view_has_no_history() -> None:
    ctx = SimpleContext().add(Message("user", "hi")).add(StubThunk("hello", computed=True))  # type: ignore[arg-type]
    assert ctx.view_for_generation() == []
    assert len(ctx.as_list()) == 2
    assert ctx.is_chat_context is False


def test_chat_context_view_is_the_conversation_in_order() -> None:
    u1, a1, u2 = Message("user", "1"), Message("assistant", "2"), Message("user", "3")
    ctx = ChatContext().add(u1).add(a1).add(u2)
    assert ctx.view_for_generation() == [u1, a1, u2]
    assert ctx.is_chat_context is True


def test_chat_context_window_pins_system_and_keeps_config() -> None:
    sys_msg = Message("system", "be brief")
    msgs = [Message("user" if i % 2 == 0 else "assistant", str(i)) for i in range(5)]
    ctx: Context = ChatContext(window_size=2).add(sys_msg)
    for m in msgs:
        ctx = ctx.add(m)
    assert isinstance(ctx, ChatContext) and ctx.window_size == 2
    assert ctx.view_for_generation() == [sys_msg, msgs[3], msgs[4]]
    assert ctx.as_list() == [sys_msg, *msgs]  # the window is a view, history is kept
    assert ChatContext(window_size=0).add(sys_msg).add(msgs[0]).view_for_generation() == [sys_msg]

    fresh = ctx.new_instance()
    assert isinstance(fresh, ChatContext) and fresh.is_root_node and fresh.window_size == 2
    assert ChatContext.reset_to_new().window_size is None
    with pytest.raises(InvalidInputError, match="window_size"):
        ChatContext(window_size=-1)


def test_last_output_and_last_turn() -> None:
    question = Message("user", "q")
    mot = StubThunk("answer", computed=True)
    ctx = ChatContext().add(question).add(mot)  # type: ignore[arg-type]
    assert ctx.last_output() is mot
    assert ctx.last_turn() == ContextTurn(question, mot)  # type: ignore[arg-type]

    partial = ctx.add(Message("user", "next"))
    assert partial.last_turn() == ContextTurn(partial.node_data, None)
    assert partial.last_output() is mot  # still among the last 3 items
    assert ChatContext().last_turn() is None
    assert ChatContext().add(question).last_output() is None


# -- Message --------------------------------------------------------------------------------


def test_message_str_is_content_and_role_is_validated() -> None:
    m = Message("assistant", "Hello there.")
    assert str(m) == "Hello there."
    assert f"{m}" == "Hello there."
    rep = m.format_for_llm()
    assert rep.args["role"] == "assistant" and rep.args["content"] == "Hello there."
    assert render_plain(m) == "Hello there."
    with pytest.raises(InvalidInputError, match="'robot'") as info:
        Message("robot", "x")  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidInputError, match="content"):
        Message("user", None)  # type: ignore[arg-type]


def test_message_images_are_copied() -> None:
    images = ["aGVsbG8="]
    m = Message("user", "look", images=images)
    images.append("other")
    assert m.images == ["aGVsbG8="]


# -- Instruction ----------------------------------------------------------------------------


def test_instruction_renders_requirements_and_hides_check_only() -> None:
    ins = Instruction(
        "Write a haiku about concurrency.",
        requirements=["Use exactly three lines", check("secret grader rule"), req("No rhymes")],
    )
    text = ins.format_for_llm()
    assert text.startswith("Write a haiku about concurrency.")
    assert (
        "The response must satisfy these requirements:\n- Use exactly three lines\n- No rhymes"
        in (text)
    )
    assert "secret grader rule" not in text
    assert [r.description for r in ins.requirements] == [
        "Use exactly three lines",
        "secret grader rule",
        "No rhymes",
    ]
    assert all(isinstance(r, Requirement) for r in ins.requirements)


def test_instruction_without_requirements_is_just_the_description() -> None:
    assert Instruction("Say hi.").format_for_llm() == "Say hi."


def test_instruction_sections_in_order() -> None:
    ins = Instruction(
        "Summarise.",
        requirements=["Be short"],
        grounding_context={"doc": "The sky is blue."},
        icl_examples=["Short summary."],
    )
    text = ins.format_for_llm()
    positions = [
        text.index("Summarise."),
        text.index("- Be short"),
        text.index("[doc] The sky is blue."),
        text.index("- Short summary."),
    ]
    assert positions == sorted(positions)


def test_instruction_lists_seed_style_requirement_by_its_format_for_llm() -> None:
    text = Instruction("Summarise.", requirements=[MaxSentencesReq(3)]).format_for_llm()
    assert "- The response must be at most 3 sentences." in text


def test_instruction_user_variables_are_substituted_everywhere() -> None:
    shared = Requirement("Mention {{ topic }}")
    ins = Instruction(
        "Write about {{topic}} for {{ audience }}.",
        requirements=["Address {{audience}}", shared],
        grounding_context={"note": "{{topic}} is wet."},
        icl_examples=["A {{topic}} poem."],
        user_variables={"topic": "rain", "audience": "kids"},
    )
    text = ins.format_for_llm()
    assert ins.description == "Write about rain for kids."
    assert "- Address kids" in text and "- Mention rain" in text
    assert "[note] rain is wet." in text and "- A rain poem." in text
    assert "{{" not in text
    assert shared.description == "Mention {{ topic }}"  # the caller's object is not mutated


def test_instruction_missing_user_variable_is_named() -> None:
    with pytest.raises(InvalidInputError, match="'audience'"):
        Instruction("Write for {{ audience }}.", user_variables={"topic": "rain"})
    with pytest.raises(InvalidInputError, match="only"):
        Instruction("Write {{ topic | upper }}.", user_variables={"topic": "rain"})


def test_instruction_copies_its_inputs() -> None:
    reqs: list[Requirement | str] = ["Be short"]
    ins = Instruction("x", requirements=reqs)
    reqs.append("Be long")
    ins.requirements.append(Requirement("Injected"))
    assert [r.description for r in ins.requirements] == ["Be short"]
    with pytest.raises(InvalidInputError, match="requirements must be a list"):
        Instruction("x", requirements="Be short")


def test_copy_and_repair_leaves_the_original() -> None:
    ins = Instruction("Do it.")
    repaired = ins.copy_and_repair("The previous answer was too long.")
    assert repaired.format_for_llm().endswith("The previous answer was too long.")
    assert ins.format_for_llm() == "Do it."


# -- validation results ---------------------------------------------------------------------


def test_partial_validation_result_values() -> None:
    assert PartialValidationResult("pass").as_bool() is True
    assert not PartialValidationResult("unknown")
    assert PartialValidationResult("fail", reason="r").reason == "r"
    with pytest.raises(InvalidInputError) as info:
        PartialValidationResult("maybe")  # type: ignore[arg-type]
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'maybe'" in message and all(v in message for v in ("'pass'", "'fail'", "'unknown'"))


def test_validation_result_accessors() -> None:
    vr = ValidationResult(False, reason="too long", score=0.25)
    assert not vr and vr.reason == "too long" and vr.score == 0.25 and vr.thunk is None


def test_default_output_to_bool() -> None:
    assert default_output_to_bool("yes")
    assert default_output_to_bool("Y")
    assert default_output_to_bool("Yes, it does.")
    assert not default_output_to_bool("No.")
    assert not default_output_to_bool("yesterday")


# -- Requirement.validate -------------------------------------------------------------------


async def test_validate_with_sync_bool_function_sees_the_context() -> None:
    ctx, _ = output_ctx("short")
    seen: list[Context] = []

    def fn(c: Context) -> bool:
        seen.append(c)
        return True

    result = await Requirement("r", validation_fn=fn).validate(FakeBackend("unused"), ctx)
    assert isinstance(result, ValidationResult) and result.as_bool() is True
    assert seen == [ctx]


async def test_validate_with_validation_result_and_async_function() -> None:
    ctx, _ = output_ctx("short")
    backend = FakeBackend("unused")
    given_vr = ValidationResult(False, reason="nope")
    assert await Requirement(validation_fn=lambda c: given_vr).validate(backend, ctx) is given_vr

    async def afn(c: Context) -> bool:
        return False

    result = await Requirement(validation_fn=afn).validate(backend, ctx)
    assert result.as_bool() is False
    assert backend.calls == []  # a validation function never calls the backend

    with pytest.raises(InvalidInputError, match="returned"):
        await Requirement(validation_fn=lambda c: "yes").validate(backend, ctx)


async def test_simple_validate_uses_last_output_text() -> None:
    ctx, _ = output_ctx("one two three")
    short = Requirement(validation_fn=simple_validate(lambda s: len(s.split()) <= 2, "too long"))
    result = await short.validate(FakeBackend("unused"), ctx)
    assert result.as_bool() is False and result.reason == "too long"
    tupled = Requirement(validation_fn=simple_validate(lambda s: (True, "fine")))
    assert (await tupled.validate(FakeBackend("unused"), ctx)).reason == "fine"


async def test_llm_as_judge_yes() -> None:
    ctx, _ = output_ctx("It rains.", computed=False)
    backend = FakeBackend("Yes.")
    options = {ModelOption.TEMPERATURE: 0.0}
    result = await Requirement("Mention rain").validate(backend, ctx, model_options=options)

    assert result.as_bool() is True
    assert result.reason == "Mention rain"  # a bare yes/no is replaced by the description
    assert isinstance(result.thunk, StubThunk) and result.thunk.is_computed()
    assert len(backend.calls) == 1
    call = backend.calls[0]
    assert isinstance(call["action"], Message) and call["action"].role == "user"
    prompt = call["action"].content
    assert "Mention rain" in prompt and "It rains." in prompt and "yes" in prompt.lower()
    assert isinstance(call["ctx"], SimpleContext) and call["ctx"].is_root_node
    assert call["model_options"] == options
    assert result.context is not None and result.context.last_output() is result.thunk


async def test_llm_as_judge_no_keeps_the_answer_as_reason() -> None:
    ctx, _ = output_ctx("It is sunny.")
    answer = "No, the output does not mention rain."
    result = await Requirement("Mention rain").validate(FakeBackend(answer), ctx)
    assert result.as_bool() is False and result.reason == answer


async def test_llm_as_judge_needs_an_output_and_a_description() -> None:
    empty = SimpleContext().add(Message("user", "q"))
    with pytest.raises(InvalidInputError, match="no model output"):
        await Requirement("Mention rain").validate(FakeBackend("yes"), empty)
    ctx, _ = output_ctx("x")
    with pytest.raises(InvalidInputError, match="no description"):
        await Requirement().validate(FakeBackend("yes"), ctx)


async def test_llm_as_judge_accepts_an_assistant_message_as_output() -> None:
    ctx = ChatContext().add(Message("user", "q")).add(Message("assistant", "It rains."))
    backend = FakeBackend("yes")
    assert (await Requirement("Mention rain").validate(backend, ctx)).as_bool() is True
    assert "It rains." in backend.calls[0]["action"].content


async def test_stream_validate_default_is_unknown() -> None:
    verdict = await Requirement("x").stream_validate(
        "A chunk.", backend=FakeBackend("unused"), ctx=SimpleContext()
    )
    assert verdict.success == "unknown"


async def test_seed_requirement_deepcopies_keep_their_own_state() -> None:
    original = MaxSentencesReq(limit=1)
    first, second = copy.deepcopy(original), copy.deepcopy(original)
    backend, ctx = FakeBackend("unused"), SimpleContext()

    assert (await first.stream_validate("One.", backend=backend, ctx=ctx)).success == "unknown"
    assert (await first.stream_validate("Two.", backend=backend, ctx=ctx)).success == "fail"
    assert (await second.stream_validate("Uno.", backend=backend, ctx=ctx)).success == "unknown"

    assert type(first) is MaxSentencesReq and first._limit == 1
    assert first.seen == ["One.", "Two."] and second.seen == ["Uno."]
    assert original._count == 0 and original.seen == []


def test_requirement_with_closure_deepcopies() -> None:
    limit = 3
    r = Requirement("short", validation_fn=simple_validate(lambda s: len(s) < limit))
    clone = copy.deepcopy(r)
    assert clone is not r and clone.description == "short" and clone.validation_fn is not None


# -- resolve_options ------------------------------------------------------------------------


def test_resolve_defaults() -> None:
    resolved = resolve_options()
    assert resolved == ResolvedOptions()
    assert resolved.stream is False
    assert resolved.stream_timeout == DEFAULT_STREAM_TIMEOUT == 120.0
    assert resolved.system_prompt is None and resolved.think is None
    assert resolved.ollama_options == {}


def test_resolve_maps_sentinels_and_passes_raw_names() -> None:
    resolved = resolve_options(
        {
            ModelOption.MAX_NEW_TOKENS: 64,
            ModelOption.SEED: 7,
            ModelOption.CONTEXT_WINDOW: 2048,
            ModelOption.STOP_SEQUENCES: ("\n\n",),
            ModelOption.TEMPERATURE: 0,
            ModelOption.STREAM: True,
            ModelOption.STREAM_TIMEOUT: 5,
            ModelOption.SYSTEM_PROMPT: "Be terse.",
            ModelOption.THINKING: "low",
            "top_k": 20,
            ModelOption.TOOLS: [],
        }
    )
    assert resolved.ollama_options == {
        "num_predict": 64,
        "seed": 7,
        "num_ctx": 2048,
        "stop": ["\n\n"],
        "temperature": 0.0,
        "top_k": 20,
    }
    assert resolved.stream is True and resolved.stream_timeout == 5.0
    assert resolved.system_prompt == "Be terse." and resolved.think == "low"


def test_resolve_later_layers_override() -> None:
    session = {ModelOption.MAX_NEW_TOKENS: 100, "temperature": 0.7, ModelOption.SEED: 1}
    call = {"num_predict": 10, ModelOption.TEMPERATURE: None, ModelOption.STREAM_TIMEOUT: None}
    resolved = resolve_options(session, None, call)
    assert resolved.ollama_options == {"num_predict": 10, "seed": 1}
    assert resolved.stream_timeout is None  # None disables the timeout
    assert session == {ModelOption.MAX_NEW_TOKENS: 100, "temperature": 0.7, ModelOption.SEED: 1}


def test_resolve_system_prompt_none_or_empty_means_no_system_message() -> None:
    session = {ModelOption.SYSTEM_PROMPT: "You are helpful."}
    assert resolve_options(session).system_prompt == "You are helpful."
    assert resolve_options(session, {ModelOption.SYSTEM_PROMPT: None}).system_prompt is None
    assert resolve_options(session, {ModelOption.SYSTEM_PROMPT: ""}).system_prompt is None
    assert resolve_options({"system": "raw alias"}).system_prompt == "raw alias"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (
            {"temperature": "hot"},
            "model option 'temperature' = 'hot': Input should be a valid number",
        ),
        (
            {"num_predict": True},
            "model option 'num_predict' = True: Input should be a valid integer",
        ),
        ({ModelOption.MAX_NEW_TOKENS: True}, "ModelOption.MAX_NEW_TOKENS = True"),
        ({ModelOption.SEED: 1.5}, "ModelOption.SEED = 1.5: Input should be a valid integer"),
        ({"temprature": 0.1}, "unknown model option 'temprature' (did you mean 'temperature'?)"),
        ({"@@@max_tokens@@@": 5}, "did you mean ModelOption.MAX_NEW_TOKENS?"),
        (
            {ModelOption.STREAM_TIMEOUT: 0},
            "ModelOption.STREAM_TIMEOUT = 0: Input should be greater",
        ),
        ({ModelOption.STREAM_TIMEOUT: -3.0}, "ModelOption.STREAM_TIMEOUT = -3.0"),
        ({ModelOption.STREAM_TIMEOUT: "10"}, "Input should be a valid number"),
        (
            {ModelOption.STREAM: "yes"},
            "ModelOption.STREAM = 'yes': Input should be a valid boolean",
        ),
        ({ModelOption.THINKING: "max"}, "ModelOption.THINKING = 'max'"),
        ({ModelOption.STOP_SEQUENCES: "END"}, "ModelOption.STOP_SEQUENCES = 'END'"),
        ({ModelOption.SYSTEM_PROMPT: 3}, "Input should be a valid string"),
        ({ModelOption.TOOLS: [object()]}, "tools are not supported by this backend"),
        ({ModelOption.TOOL_CHOICE: "auto"}, "tools are not supported by this backend"),
        ({ModelOption.LOGITS: True}, "logits"),
        ({"num_predict": 5, ModelOption.MAX_NEW_TOKENS: 6}, "set the same option differently"),
        ({1: 2}, "names must be str"),
    ],
)
def test_resolve_errors(options: dict[Any, Any], fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        resolve_options(options)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_resolve_rejects_a_non_mapping_layer() -> None:
    with pytest.raises(InvalidInputError, match="mapping"):
        resolve_options([("temperature", 1.0)])  # type: ignore[arg-type]


def test_resolved_options_are_frozen() -> None:
    resolved = resolve_options({ModelOption.STREAM: True})
    with pytest.raises(ValueError, match="frozen"):
        resolved.stream = False


def test_model_option_values_match_mellea() -> None:
    assert ModelOption.STREAM == "@@@stream@@@"
    assert ModelOption.STREAM_TIMEOUT == "@@@stream_timeout@@@"
    assert ModelOption.TEMPERATURE == "temperature"
    assert ModelOption.MAX_NEW_TOKENS == "@@@max_new_tokens@@@"
    assert ModelOption.SEED == "@@@seed@@@"
    assert ModelOption.CONTEXT_WINDOW == "@@@context_window@@@"
    assert ModelOption.STOP_SEQUENCES == "@@@stop_sequences@@@"
    assert ModelOption.SYSTEM_PROMPT == "@@@system_prompt@@@"
    assert ModelOption.THINKING == "@@@thinking@@@"
    assert ModelOption.TOOLS == "@@@tools@@@"
    assert ModelOption.TOOL_CHOICE == "tool_choice"
