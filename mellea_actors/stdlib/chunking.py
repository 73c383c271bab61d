"""Chunking strategies for streaming validation (Mellea 0.7.0's ``mellea.stdlib.chunking``).

Mellea 0.8.0 moved them to ``mellea.core.chunking`` and renamed the built-ins
(``SentenceChunking``, ``WordChunking``, ``ParagraphChunking``). Here both paths serve the same
objects: the implementation, its rules and its contract live in
:mod:`mellea_actors.core.chunking`; this module re-exports the Mellea 0.7.0 names (and the
engine's helpers the tests and the facade use).
"""

from __future__ import annotations

from mellea_actors.core.chunking import (
    CHUNKING_ALIASES,
    ChunkingStrategy,
    ChunkTracker,
    ParagraphChunker,
    SentenceChunker,
    WordChunker,
    resolve_chunking,
    validate_chunks,
)

__all__ = [
    "CHUNKING_ALIASES",
    "ChunkTracker",
    "ChunkingStrategy",
    "ParagraphChunker",
    "SentenceChunker",
    "WordChunker",
    "resolve_chunking",
    "validate_chunks",
]
