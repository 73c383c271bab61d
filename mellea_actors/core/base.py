"""Mellea's ``core.base`` names: blocks, components, contexts and the model output thunk."""

from mellea_actors.core.cblock import (
    CBlock,
    Component,
    ComponentParseError,
    TemplateRepresentation,
    blockify,
)
from mellea_actors.core.context_chain import Context, ContextTurn
from mellea_actors.core.model_output import GenerationMetadata, ModelOutputThunk

__all__ = [
    "CBlock",
    "Component",
    "ComponentParseError",
    "Context",
    "ContextTurn",
    "GenerationMetadata",
    "ModelOutputThunk",
    "TemplateRepresentation",
    "blockify",
]
