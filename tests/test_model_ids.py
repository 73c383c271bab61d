"""``mellea_actors.backends.model_ids``: Mellea's ``ModelIdentifier`` and its catalog, and
``start_session(model_id=<ModelIdentifier>)`` against the scripted server."""

from __future__ import annotations

import dataclasses

import pytest

from mellea_actors import start_session
from mellea_actors.backends import model_ids
from mellea_actors.backends.model_ids import (
    IBM_GRANITE_3_3_8B,
    IBM_GRANITE_GUARDIAN_4_1_8B,
    OPENAI_GPT_5_1,
    ModelIdentifier,
)
from mellea_actors.errors import InvalidInputError
from mellea_actors.testing import ScriptedOllama

#: Mellea 0.8's fields, in its order (positional construction works the same).
MELLEA_FIELDS = [
    "hf_model_name",
    "ollama_name",
    "watsonx_name",
    "mlx_name",
    "openai_name",
    "bedrock_name",
    "bedrock_litellm_name",
    "hf_tokenizer_name",
    "context_length",
]

#: A sample of Mellea 0.8's constants and their Ollama tags.
OLLAMA_NAMES = {
    "IBM_GRANITE_4_HYBRID_MICRO": "granite4:micro-h",
    "IBM_GRANITE_4_HYBRID_TINY": "granite4:tiny-h",
    "IBM_GRANITE_4_HYBRID_SMALL": "granite4:small-h",
    "IBM_GRANITE_4_MICRO_3B": "granite4:micro",
    "IBM_GRANITE_4_1_3B": "granite4.1:3b",
    "IBM_GRANITE_4_2_3B": "granite4.2:3b",
    "IBM_GRANITE_3_2_8B": "granite3.2:8b",
    "IBM_GRANITE_3_3_8B": "granite3.3:8b",
    "IBM_GRANITE_GUARDIAN_3_0_2B": "granite3-guardian:2b",
    "META_LLAMA_3_2_1B": "llama3.2:1b",
    "META_LLAMA_3_2_3B": "llama3.2:3b",
    "META_LLAMA_3_3_70B": "llama3.3:70b",
    "MISTRALAI_MISTRAL_0_3_7B": "mistral:7b",
    "QWEN3_0_6B": "qwen3:0.6b",
    "QWEN3_8B": "qwen3:8b",
    "OPENAI_GPT_OSS_20B": "gpt-oss:20b",
    "GOOGLE_GEMMA_3N_E4B": "gemma3n:e4b",
    "MS_PHI_4_14B": "phi4:14b",
    "DEEPSEEK_R1_8B": "deepseek-r1:8b",
    "HF_SMOLLM2_2B": "smollm2:1.7b",
}


def catalog() -> dict[str, ModelIdentifier]:
    return {n: v for n, v in vars(model_ids).items() if isinstance(v, ModelIdentifier)}


def test_model_identifier_is_mellea_s_frozen_dataclass() -> None:
    assert [f.name for f in dataclasses.fields(ModelIdentifier)] == MELLEA_FIELDS
    mid = ModelIdentifier("org/model", "model:1b")
    assert (mid.hf_model_name, mid.ollama_name, mid.context_length) == (
        "org/model",
        "model:1b",
        None,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        mid.ollama_name = "other"  # type: ignore[misc]
    assert mid == ModelIdentifier(hf_model_name="org/model", ollama_name="model:1b")
    assert len({mid, ModelIdentifier("org/model", "model:1b")}) == 1  # hashable


@pytest.mark.parametrize(("name", "ollama_name"), sorted(OLLAMA_NAMES.items()))
def test_the_common_constants_and_their_ollama_names(name: str, ollama_name: str) -> None:
    assert getattr(model_ids, name).ollama_name == ollama_name


def test_the_catalog_is_mellea_08_s() -> None:
    names = catalog()
    assert len(names) == 58
    assert sum(1 for v in names.values() if v.ollama_name) == 44
    assert ModelIdentifier(openai_name="gpt-5.1") == OPENAI_GPT_5_1
    assert IBM_GRANITE_3_3_8B.watsonx_name == "ibm/granite-3-3-8b-instruct"
    assert IBM_GRANITE_3_3_8B.hf_model_name == "ibm-granite/granite-3.3-8b-instruct"


def test_a_model_identifier_starts_a_session_on_its_ollama_name() -> None:
    with ScriptedOllama(models=("granite3.3:8b",)) as server:
        with start_session(model_id=IBM_GRANITE_3_3_8B, base_url=server.base_url) as m:
            assert m.backend.model_id == "granite3.3:8b"
            assert str(m.instruct("hi")) == "Hello world."
        assert [r.model for r in server.requests] == ["granite3.3:8b"]


def test_a_custom_model_identifier_works_too(scripted: ScriptedOllama) -> None:
    with start_session(
        model_id=ModelIdentifier(ollama_name="scripted"), base_url=scripted.base_url
    ) as m:
        m.instruct("hi")
    assert [r.model for r in scripted.requests] == ["scripted"]


@pytest.mark.parametrize(
    ("model_id", "named"),
    [
        (OPENAI_GPT_5_1, r"OPENAI_GPT_5_1 has no ollama_name.*openai_name='gpt-5.1'"),
        (IBM_GRANITE_GUARDIAN_4_1_8B, r"IBM_GRANITE_GUARDIAN_4_1_8B has no ollama_name"),
        (ModelIdentifier(hf_model_name="org/x"), r"has no ollama_name.*hf_model_name='org/x'"),
        (ModelIdentifier(), r"has no ollama_name.*no name at all"),
    ],
)
def test_a_model_identifier_without_an_ollama_name_is_refused_before_any_request(
    scripted: ScriptedOllama, model_id: ModelIdentifier, named: str
) -> None:
    with pytest.raises(InvalidInputError, match=named):
        start_session(model_id=model_id, base_url=scripted.base_url)
    assert scripted.requests == [] and scripted.other_requests == []


def test_model_id_of_another_type_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match=r"model_id must be a str .* or a ModelIdentifier"):
        start_session(model_id=3, base_url="http://127.0.0.1:9", check=False)  # type: ignore[arg-type]
