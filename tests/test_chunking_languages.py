"""Sentence chunking outside ASCII English: closing quotes of the common languages stay with
their sentence, and full-width terminators end one without whitespace.

Regressions: „Halt.“ (U+201C as a closer) was never a boundary; « Stop. » gave a chunk that
started with »; Japanese and Chinese text stayed one chunk until the flush, so it got no
per-chunk validation.
"""

from __future__ import annotations

import pytest

from mellea_actors.stdlib.chunking import SentenceChunker

from .test_chunking import sentences, streamed

CASES = [
    ("Er rief: „Halt.“ Dann ging er.", ["Er rief: „Halt.“", "Dann ging er."]),
    ("Sie sagte ‚Nein.‘ Dann ging sie.", ["Sie sagte ‚Nein.‘", "Dann ging sie."]),
    ("« Stop. » Puis il partit.", ["« Stop. »", "Puis il partit."]),
    ("Il dit « Non. » Fin.", ["Il dit « Non. »", "Fin."]),
    ("«\u00a0Arrête.\u202f» Il partit.", ["«\u00a0Arrête.\u202f»", "Il partit."]),
    ("« Il pleut. Il vente. » Fin.", ["« Il pleut.", "Il vente. »", "Fin."]),
    ("今日は晴れ。明日は雨！本当？", ["今日は晴れ。", "明日は雨！", "本当？"]),
    ("我们走吧。他说好！", ["我们走吧。", "他说好！"]),
    ("「行く。」次に行く。", ["「行く。」", "次に行く。"]),
    ("Mixed. 中文句子。English again.", ["Mixed.", "中文句子。", "English again."]),
    ('He said "no." Then left.', ['He said "no."', "Then left."]),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:16] for c in CASES])
def test_sentences_in_other_languages(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:16] for c in CASES])
def test_the_same_sentences_when_streamed_character_by_character(
    text: str, expected: list[str]
) -> None:
    assert streamed(SentenceChunker(), text, list(range(1, len(text)))) == expected


def test_full_width_sentences_are_delivered_before_the_flush() -> None:
    """A stream of CJK text gets its sentences while it streams, not only at the end."""
    chunker = SentenceChunker()
    assert chunker.split("今日は晴れ。明日は") == ["今日は晴れ。"]


def test_a_guillemet_is_awaited_only_while_one_is_open() -> None:
    chunker = SentenceChunker()
    assert chunker.split("« Stop. ") == []  # a » may still follow
    assert chunker.split("Plain. ") == ["Plain."]  # no « open: at once, as before
