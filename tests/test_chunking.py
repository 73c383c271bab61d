"""Tests of mellea_actors.stdlib.chunking: the rules, the incremental contract, the checks."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mellea_actors.errors import InvalidInputError
from mellea_actors.stdlib.chunking import (
    CHUNKING_ALIASES,
    ChunkingStrategy,
    ChunkTracker,
    ParagraphChunker,
    SentenceChunker,
    WordChunker,
    resolve_chunking,
    validate_chunks,
)

BUILTINS: list[type[ChunkingStrategy]] = [SentenceChunker, WordChunker, ParagraphChunker]


def chunks_of(strategy: ChunkingStrategy, text: str) -> list[str]:
    """All chunks of a complete text: split, then flush (what a stream ending naturally gives)."""
    return strategy.split(text) + strategy.flush(text)


def sentences(text: str) -> list[str]:
    return chunks_of(SentenceChunker(), text)


def streamed(strategy: ChunkingStrategy, text: str, cuts: list[int]) -> list[str]:
    """Feed growing prefixes like Mellea's orchestrator: split()[seen:] after each growth."""
    out: list[str] = []
    seen = 0
    for cut in [*sorted(cuts), len(text)]:
        chunks = strategy.split(text[:cut])
        assert chunks[:seen] == out, "split() of a longer prefix changed earlier chunks"
        out.extend(chunks[seen:])
        seen = len(chunks)
    return out + strategy.flush(text)


# ------------------------------------------------------------------------------------------
# Sentence rules
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world. How are you?", ["Hello world.", "How are you?"]),
        ("Really?! Yes!!! Sure.", ["Really?!", "Yes!!!", "Sure."]),
        ("Wait... what? Ok.", ["Wait...", "what?", "Ok."]),
        ("Wait\u2026 what", ["Wait\u2026", "what"]),
        ('He said "Hi." Then he left.', ['He said "Hi."', "Then he left."]),
        ("She said 'no.' Then left.", ["She said 'no.'", "Then left."]),
        (
            "He said \u201cHi.\u201d Then \u2018ok.\u2019 Done",
            ["He said \u201cHi.\u201d", "Then \u2018ok.\u2019", "Done"],
        ),
        ("(It works.) Next [really!] Done.", ["(It works.)", "Next [really!]", "Done."]),
        ('Is it "yes?") Then.', ['Is it "yes?")', "Then."]),
        ("This is **important.** Next", ["This is **important.**", "Next"]),
        ("Pi is 3.14 and e is 2.71. Right.", ["Pi is 3.14 and e is 2.71.", "Right."]),
        ("Version 1.2.3 at example.com. Ok", ["Version 1.2.3 at example.com.", "Ok"]),
        ("It cost $5. Then it rose.", ["It cost $5.", "Then it rose."]),
        ("It was 2023. Then", ["It was 2023.", "Then"]),
        ("No space.after dot", ["No space.after dot"]),
        ("One.\nTwo.\tThree.\r\nFour.", ["One.", "Two.", "Three.", "Four."]),
        ("Line one\nstill one. Two", ["Line one\nstill one.", "Two"]),
        ("   Leading and trailing.   ", ["Leading and trailing."]),
        ("A.  B? ", ["A.  B?"]),  # "A." is an initial
        ("Hi.  \n  There.", ["Hi.", "There."]),
        ("", []),
        ("   \n\t ", []),
        ("no end mark at all", ["no end mark at all"]),
        (".", ["."]),
        ("?! ok", ["?!", "ok"]),
    ],
)
def test_sentence_boundaries(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Smith met Mr. and Mrs. Jones. Then Ms. Lee came.",
            ["Dr. Smith met Mr. and Mrs. Jones.", "Then Ms. Lee came."],
        ),
        (
            "Prof. X and Sr. Y met on St. Mark's square. Ok.",
            ["Prof. X and Sr. Y met on St. Mark's square.", "Ok."],
        ),
        (
            "Cats vs. dogs, e.g. this, i.e. that, approx. ten. Done.",
            ["Cats vs. dogs, e.g. this, i.e. that, approx. ten.", "Done."],
        ),
        ("Cats VS. dogs and E.g. this. Done.", ["Cats VS. dogs and E.g. this.", "Done."]),
        ("Smith et al. found it. Cf. the rest.", ["Smith et al. found it.", "Cf. the rest."]),
        (
            "See No. 5 and Fig. 3 and p. 12 and pp. 3-4. Done.",
            ["See No. 5 and Fig. 3 and p. 12 and pp. 3-4.", "Done."],
        ),
        ("See fig. 2. Ok", ["See fig. 2.", "Ok"]),
        # before-number abbreviations end a sentence when no number follows
        ("I said no. Then I left.", ["I said no.", "Then I left."]),
        ("What a fig. Yum.", ["What a fig.", "Yum."]),
        # titles are case-sensitive: "dr." / "ms." are not titles
        ("It took 5 ms. Then more.", ["It took 5 ms.", "Then more."]),
        # etc. ends the sentence only before a capital letter
        (
            "We bought apples, pears, etc. Then we left.",
            ["We bought apples, pears, etc.", "Then we left."],
        ),
        ("Apples, pears, etc. and more. Done.", ["Apples, pears, etc. and more.", "Done."]),
        ("Apples, pears, etc.\n\n- next item", ["Apples, pears, etc.", "- next item"]),
        ("Fruit (apples, etc.) was sold. Ok", ["Fruit (apples, etc.) was sold.", "Ok"]),
        # initials
        ("J. R. R. Tolkien wrote it. Then", ["J. R. R. Tolkien wrote it.", "Then"]),
        ("John F. Kennedy spoke. Then", ["John F. Kennedy spoke.", "Then"]),
        ("The U.S. Army came. Then", ["The U.S. Army came.", "Then"]),
        ("We chose plan B. It worked.", ["We chose plan B. It worked."]),  # documented trade-off
        ("So did I. Then we left.", ["So did I.", "Then we left."]),  # the pronoun I is no initial
        # abbreviation rules apply to a single dot only
        ("Ask Dr... no! Dr? Yes.", ["Ask Dr...", "no!", "Dr?", "Yes."]),
        # unknown abbreviations split
        ("Acme Inc. Then", ["Acme Inc.", "Then"]),
    ],
)
def test_sentence_abbreviations(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. Boil water.\n2. Add pasta.", ["1. Boil water.", "2. Add pasta."]),
        (
            "Steps:\n1. Boil water.\n2. Add pasta.\n10. Eat it.",
            ["Steps:\n1. Boil water.", "2. Add pasta.", "10. Eat it."],
        ),
        ("  3. Indented item. Next", ["3. Indented item.", "Next"]),
        ("Intro.\n\t4. Tabbed item.", ["Intro.", "4. Tabbed item."]),
        ("a. First.\nb. Second.", ["a. First.", "b. Second."]),
        ("I. Introduction. II. Methods.", ["I. Introduction.", "II.", "Methods."]),
        (
            "I. Introduction.\nII. Methods.\niv. Four.",
            ["I. Introduction.", "II. Methods.", "iv. Four."],
        ),
        # a number after a sentence end on the same line is not a list marker
        ("Done. 2. Next", ["Done.", "2.", "Next"]),
        ("Release v2. Now", ["Release v2.", "Now"]),
    ],
)
def test_sentence_list_markers(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


# Regressions: "approx.", "e.g.", "et al.", "p.m." … never ended a sentence, so
# "Pi is 3.14 approx. Next" gave no sentence until the flush; "Jr." never ended one either.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pi is 3.14 approx. Next", ["Pi is 3.14 approx.", "Next"]),
        (
            "It weighs 5 kg approx. The box is light.",
            ["It weighs 5 kg approx.", "The box is light."],
        ),
        (
            "Many animals, e.g. cats, dogs, etc. Birds too.",
            ["Many animals, e.g. cats, dogs, etc.", "Birds too."],
        ),
        ("We tried a fix, i.e. A reboot. Done", ["We tried a fix, i.e.", "A reboot.", "Done"]),
        ("It is cats vs. Dogs. Ok", ["It is cats vs.", "Dogs.", "Ok"]),  # documented trade-off
        ("We live on Baker St. It is quiet.", ["We live on Baker St. It is quiet."]),  # idem
        ("See Smith et al. The results hold.", ["See Smith et al.", "The results hold."]),
        ("We met at 5 p.m. Then we ate.", ["We met at 5 p.m.", "Then we ate."]),
        ("We met at 5 p.m. and then ate. Ok", ["We met at 5 p.m. and then ate.", "Ok"]),
        (
            "The speech was by Martin Luther King Jr. He gave it in 1963.",
            ["The speech was by Martin Luther King Jr.", "He gave it in 1963."],
        ),
        (
            "Martin Luther King Jr. was born in 1929. Ok",
            ["Martin Luther King Jr. was born in 1929.", "Ok"],
        ),
        ("A Ph.D. student came. Ok", ["A Ph.D. student came.", "Ok"]),
        ("Acme Inc. makes things. Ok", ["Acme Inc. makes things.", "Ok"]),
        # an opening quote or bracket before the capital does not hide it
        ('Pears, etc. "Then," she said.', ["Pears, etc.", '"Then," she said.']),
        ("Pears, etc. (Then we left.)", ["Pears, etc.", "(Then we left.)"]),
        ("Pears, etc. (see below) ok. Done", ["Pears, etc. (see below) ok.", "Done"]),
        # numbers and lower-case words after them do not end the sentence
        ("It is approx. 5 km long. Ok", ["It is approx. 5 km long.", "Ok"]),
        ("Cats vs. dogs, e.g. this. Done.", ["Cats vs. dogs, e.g. this.", "Done."]),
    ],
)
def test_abbreviations_end_a_sentence_before_a_capital(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected
    assert streamed(SentenceChunker(), text, list(range(1, len(text)))) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith came. Ok",
        "Mr. Smith came. Ok",
        "Mrs. Smith came. Ok",
        "Ms. Smith came. Ok",
        "Mx. Smith came. Ok",
        "Prof. Smith came. Ok",
        "St. Smith came. Ok",
        "Sr. García came. Ok",
        "Sra. García came. Ok",
        "Rev. Smith came. Ok",
        "Gov. Smith came. Ok",
        "Sen. Smith came. Ok",
        "Rep. Smith came. Ok",
        "Pres. Smith came. Ok",
        "Gen. Smith came. Ok",
        "Capt. Smith came. Ok",
        "Mt. Everest is high. Ok",
    ],
)
def test_titles_before_a_name_never_end_a_sentence(text: str) -> None:
    expected = [text.removesuffix(" Ok"), "Ok"]
    assert sentences(text) == expected
    assert streamed(SentenceChunker(), text, list(range(1, len(text)))) == expected


def test_a_capital_after_an_abbreviation_is_awaited() -> None:
    c = SentenceChunker()
    assert c.split("Pi is 3.14 approx.") == []
    assert c.split("Pi is 3.14 approx. ") == []  # the next word decides
    assert c.split('Pi is 3.14 approx. "') == []  # an opening quote does not decide yet
    assert c.split('Pi is 3.14 approx. "N') == ["Pi is 3.14 approx."]
    assert c.split("Pi is 3.14 approx. n") == []
    assert c.flush("Pi is 3.14 approx. ") == ["Pi is 3.14 approx."]
    assert c.split("Pi is 3.14 approx. Next") == ["Pi is 3.14 approx."]


def test_sentence_blank_line_ends_a_sentence() -> None:
    assert sentences("# Title\n\nBody here. More") == ["# Title", "Body here.", "More"]
    assert sentences("- item one\n \n- item two") == ["- item one", "- item two"]
    assert sentences("a\r\n\r\nb") == ["a", "b"]
    assert sentences("\n\n\nOnly\n\n\n") == ["Only"]


def test_sentence_extra_abbreviations() -> None:
    chunker = SentenceChunker(abbreviations=["Inc.", "Ph.D"])
    assert chunks_of(chunker, "Acme Inc. makes things. A Ph.D. student came.") == [
        "Acme Inc. makes things.",
        "A Ph.D. student came.",
    ]
    assert "Inc" in repr(chunker)
    with pytest.raises(InvalidInputError):
        SentenceChunker(abbreviations="Inc")


def test_sentence_holds_last_sentence_until_whitespace() -> None:
    c = SentenceChunker()
    assert c.split("Hello.") == []
    assert c.split("Hello. ") == ["Hello."]
    assert c.split("Hello. Wor") == ["Hello."]
    assert c.flush("Hello. Wor") == ["Wor"]
    # a growing run of marks is held until it ends
    assert c.split("Why?") == []
    assert c.split("Why?!") == []
    assert c.split("Why?!\n") == ["Why?!"]
    # closers are held too
    assert c.split('He said "Hi.') == []
    assert c.split('He said "Hi."') == []
    assert c.split('He said "Hi." ') == ['He said "Hi."']


def test_sentence_lookahead_rules_are_held() -> None:
    c = SentenceChunker()
    assert c.split("See Fig. ") == []
    assert c.split("See Fig. 3 ok. ") == ["See Fig. 3 ok."]
    assert c.split("Pears, etc. ") == []
    assert c.split("Pears, etc.  T") == ["Pears, etc."]
    assert c.split("Pears, etc.  t") == []
    assert c.flush("Pears, etc. ") == ["Pears, etc."]
    assert c.flush("See Fig.\n\n") == ["See Fig."]


def test_flush_of_whitespace_or_complete_text() -> None:
    for cls in BUILTINS:
        assert cls().flush("") == []
        assert cls().flush("  \n ") == []
        assert cls().split("") == []
    assert SentenceChunker().flush("Done. ") == []
    assert WordChunker().flush("word ") == []
    assert ParagraphChunker().flush("para\n\n") == []


# ------------------------------------------------------------------------------------------
# Words and paragraphs
# ------------------------------------------------------------------------------------------


def test_words() -> None:
    c = WordChunker()
    assert c.split("Hello") == []
    assert c.split("Hello ") == ["Hello"]
    assert c.split("  Hello,\n\tbig  world") == ["Hello,", "big"]
    assert c.flush("  Hello,\n\tbig  world") == ["world"]
    assert chunks_of(WordChunker(), "a  b\r\nc\t") == ["a", "b", "c"]


def test_paragraphs() -> None:
    text = "First line\nsecond line.  \n\n  Second para.\n \n\n\r\nThird\r\n\r\nfourth"
    c = ParagraphChunker()
    assert c.split(text) == ["First line\nsecond line.", "Second para.", "Third"]
    assert c.flush(text) == ["fourth"]
    assert c.split("One\n") == []
    assert c.split("One\n  ") == []
    assert c.split("One\n  \n") == ["One"]
    assert chunks_of(ParagraphChunker(), "\n\n\nA\n\n\n\nB\n\n") == ["A", "B"]
    assert chunks_of(ParagraphChunker(), "single\nlines\nonly\n") == ["single\nlines\nonly"]


def test_mellea_compatible_on_plain_text() -> None:
    """Texts without the cases Mellea gets wrong chunk exactly as Mellea 0.7.0 does."""
    text = 'The sky is blue. Water "flows." Why? Because!  It rains\n(a lot.) End'
    assert sentences(text) == [
        "The sky is blue.",
        'Water "flows."',
        "Why?",
        "Because!",
        "It rains\n(a lot.)",
        "End",
    ]
    assert chunks_of(WordChunker(), " a  b\nc ") == ["a", "b", "c"]
    assert chunks_of(ParagraphChunker(), "p1\n\np2\n\n\np3") == ["p1", "p2", "p3"]


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

_PIECES = [
    *"aAbBcegiIJRStxzé",
    *"0123",
    *".!?.…",
    " ",
    " ",
    "\n",
    "\t",
    "\r",
    *"\"'\u201d\u2019\u201c)](*",
    "Dr",
    "Mr",
    "etc",
    "e.g",
    "approx",
    "Jr",
    "p.m",
    "Sen",
    "No",
    "Fig",
    "al",
    "vs",
    "U.S",
    "Then",
    "the",
    "1.",
    "10.",
    "\n\n",
    "\n \n",
    "\r\n\r\n",
    "...",
    "?!",
    ". ",
]
texts = st.lists(st.sampled_from(_PIECES), max_size=60).map("".join)

_CLOSERS = "\"'\u201d\u2019\u201c)\\]\u00bb*_"
_OPENERS = "\"'\u201c\u2018(\u00ab*_"


def _reference_sentences(t: str) -> list[str]:
    """A direct, whole-text implementation of the documented sentence rules."""
    cuts: set[int] = set()
    for m in re.finditer(rf"[.!?\u2026]+[{_CLOSERS}]*", t):
        a, b = m.span()
        if b == len(t) or not t[b].isspace():
            continue
        before, after = t[:a], t[b:].lstrip()
        marks = re.match(r"[.!?\u2026]+", t[a:])
        assert marks is not None
        boundary = True
        if marks.group() == ".":
            word = re.search(r"(?:[^\W\d_]|\.)*\Z", before)
            assert word is not None
            w = word.group()
            line_start = re.search(r"(?:\A|\n)[ \t]*\Z", before[: len(before) - len(w)])
            if not w:
                digits = re.search(r"\d*\Z", before)
                assert digits is not None
                d = digits.group()
                line_start = re.search(r"(?:\A|\n)[ \t]*\Z", before[: len(before) - len(d)])
                boundary = not (d and line_start)
            elif (re.fullmatch(r"[A-Za-z]|[IVXLC]+|[ivxlc]+", w) and line_start) or (
                w in SentenceChunker.TITLES
                or (w != "I" and all(len(p) == 1 and p.isupper() for p in w.split(".")))
            ):
                boundary = False
            elif w.lower() in SentenceChunker.BEFORE_NUMBER:
                boundary = not after[:1].isdigit()
            elif (
                w.lower() in SentenceChunker.END_IF_CAPITAL
                or w in SentenceChunker.END_IF_CAPITAL_CASED
            ):
                boundary = after.lstrip(_OPENERS)[:1].isupper()
        if boundary:
            cuts.add(b)
    for m in re.finditer(r"\n[^\S\n]*\n", t):
        cuts.add(m.start())
    pieces, prev = [], 0
    for cut in sorted(cuts):
        pieces.append(t[prev:cut])
        prev = cut
    pieces.append(t[prev:])
    return [p.strip() for p in pieces if p.strip()]


def _reference(cls: type[ChunkingStrategy], t: str) -> list[str]:
    if cls is WordChunker:
        return t.split()
    if cls is ParagraphChunker:
        return [p.strip() for p in re.split(r"\n[^\S\n]*\n", t) if p.strip()]
    return _reference_sentences(t)


@pytest.mark.parametrize("cls", BUILTINS)
@given(text=texts)
@settings(max_examples=400, deadline=None)
def test_matches_reference_and_is_verbatim(cls: type[ChunkingStrategy], text: str) -> None:
    chunks = chunks_of(cls(), text)
    assert chunks == _reference(cls, text)
    # verbatim, consecutive, whitespace-only gaps, stripped, non-empty
    assert validate_chunks(text, 0, chunks, strategy=cls()) <= len(text)
    pos = 0
    rebuilt = []
    for chunk in chunks:
        assert chunk and chunk == chunk.strip()
        q = text.index(chunk, pos)
        assert text[pos:q].strip() == ""
        rebuilt.append(text[pos:q] + chunk)
        pos = q + len(chunk)
    assert text[pos:].strip() == ""
    assert "".join(rebuilt) + text[pos:] == text


@pytest.mark.parametrize("cls", BUILTINS)
@given(data=st.data(), text=texts)
@settings(max_examples=400, deadline=None)
def test_incremental_equals_whole(
    cls: type[ChunkingStrategy], data: st.DataObject, text: str
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=20))
    whole = chunks_of(cls(), text)
    assert streamed(cls(), text, cuts) == whole
    # every prefix, one character at a time, also through the tracker's fast path
    assert streamed(cls(), text, list(range(len(text)))) == whole
    tracker = ChunkTracker(cls())
    got: list[str] = []
    for cut in [*sorted(cuts), len(text)]:
        got += tracker.feed(text[:cut])
        assert text[: tracker.consumed].rstrip() == text[: tracker.consumed]
    got += tracker.finish(text)
    assert got == whole
    assert tracker.count == len(whole)
    assert text[tracker.consumed :].strip() == ""


class _Generic(SentenceChunker):
    """Overrides split/flush so that ChunkTracker takes the generic (checked) path."""

    def split(self, accumulated_text: str) -> list[str]:
        return super().split(accumulated_text)

    def flush(self, accumulated_text: str) -> list[str]:
        return super().flush(accumulated_text)


@given(data=st.data(), text=texts)
@settings(max_examples=200, deadline=None)
def test_tracker_generic_path_equals_fast_path(data: st.DataObject, text: str) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    fast, slow = ChunkTracker(SentenceChunker()), ChunkTracker(_Generic())
    assert fast._fast is not None and slow._fast is None
    for cut in [*cuts, len(text)]:
        assert fast.feed(text[:cut]) == slow.feed(text[:cut])
        assert fast.consumed == slow.consumed
    assert fast.finish(text) == slow.finish(text)
    assert fast.consumed == slow.consumed


@pytest.mark.parametrize("cls", BUILTINS)
@given(a=texts, b=texts)
@settings(max_examples=100, deadline=None)
def test_memo_never_changes_results(cls: type[ChunkingStrategy], a: str, b: str) -> None:
    """One instance shared by two interleaved streams, reused and copied, stays correct."""
    shared = cls()
    for i in range(max(len(a), len(b)) + 1):
        assert shared.split(a[:i]) == cls().split(a[:i])
        assert shared.split(b[:i]) == cls().split(b[:i])
    assert shared.flush(a) == cls().flush(a)
    clone = copy.deepcopy(shared)
    assert clone.split(b) == cls().split(b)
    assert pickle.loads(pickle.dumps(shared)).split(a) == cls().split(a)


def test_long_stream_through_tracker() -> None:
    """A 5,000-token stream: same chunks through the tracker as for the whole text."""
    sentence = 'Dr. Smith said "3.14 is pi." Then 1. item... ok?! '
    tokens = [sentence[i : i + 3] for i in range(0, len(sentence), 3)] * 300
    text = "".join(tokens)
    for cls in BUILTINS:
        tracker = ChunkTracker(cls())
        memo_user = cls()
        got: list[str] = []
        acc = ""
        seen = 0
        for tok in tokens:
            acc += tok
            got += tracker.feed(acc)
            chunks = memo_user.split(acc)
            seen = len(chunks)
        got += tracker.finish(acc)
        assert got == chunks_of(cls(), text)
        assert seen + len(memo_user.flush(acc)) == len(got)


# ------------------------------------------------------------------------------------------
# resolve_chunking
# ------------------------------------------------------------------------------------------


def test_resolve_aliases() -> None:
    for alias, cls in CHUNKING_ALIASES.items():
        first, second = resolve_chunking(alias), resolve_chunking(alias)
        assert type(first) is cls and first is not second
        assert type(resolve_chunking(alias.upper())) is cls
    custom = WordChunker()
    assert resolve_chunking(custom) is custom


@pytest.mark.parametrize("bad", ["sentences", "", " word", "line"])
def test_resolve_unknown_alias(bad: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        resolve_chunking(bad)
    msg = str(info.value)
    assert repr(bad) in msg
    for alias in ("'sentence'", "'word'", "'paragraph'"):
        assert alias in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [None, 3, ["sentence"], SentenceChunker, object()])
def test_resolve_wrong_type(bad: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        resolve_chunking(bad)  # type: ignore[arg-type]
    assert "'sentence'" in str(info.value)
    if bad is SentenceChunker:
        assert "SentenceChunker()" in str(info.value)


# ------------------------------------------------------------------------------------------
# validate_chunks and the tracker's checks on user strategies
# ------------------------------------------------------------------------------------------


def test_validate_chunks_accepts_whitespace_gaps() -> None:
    text = "  One.  Two.\n Three"
    assert validate_chunks(text, 0, ["One.", "Two."]) == 12
    assert validate_chunks(text, 12, ["Three"]) == len(text)
    assert validate_chunks(text, 0, []) == 0
    # chunks may carry their own whitespace, or be empty
    assert validate_chunks(text, 0, ["  One.", "  Two.", ""]) == 12
    assert validate_chunks(text, 6, [" ", " Two."]) == 12


@pytest.mark.parametrize(
    ("consumed", "chunks"),
    [
        (0, ["one."]),  # not verbatim (case)
        (0, ["Two."]),  # skips non-whitespace text ("One.")
        (0, ["One.", "One."]),  # repeats
        (12, ["Three more"]),  # runs past the end
        (0, ["One. Two.", "x"]),
    ],
)
def test_validate_chunks_rejects(consumed: int, chunks: list[str]) -> None:
    text = "  One.  Two.\n Three"
    with pytest.raises(InvalidInputError) as info:
        validate_chunks(text, consumed, chunks, strategy=WordChunker(), method="flush")
    assert "WordChunker.flush()" in str(info.value)


def test_validate_chunks_rejects_non_strings() -> None:
    with pytest.raises(InvalidInputError, match="not a string"):
        validate_chunks("a b", 0, ["a", 1])  # type: ignore[list-item]


class _Upper(ChunkingStrategy):
    def split(self, accumulated_text: str) -> list[str]:
        return [w.upper() for w in accumulated_text.split()[:-1]]


class _OnlyNew(ChunkingStrategy):
    """Wrong: returns only the chunks it did not return before."""

    _done = 0

    def split(self, accumulated_text: str) -> list[str]:
        words = accumulated_text.split()[:-1]
        new, self._done = words[self._done :], len(words)
        return new


class _ReturnsString(ChunkingStrategy):
    def split(self, accumulated_text: str) -> list[str]:
        return accumulated_text  # type: ignore[return-value]


class _BadFlush(ChunkingStrategy):
    def split(self, accumulated_text: str) -> list[str]:
        return []

    def flush(self, accumulated_text: str) -> list[str]:
        return ["not in the text"]


def test_tracker_reports_bad_user_strategies() -> None:
    with pytest.raises(InvalidInputError, match=r"_Upper\.split\(\).*'HELLO'"):
        ChunkTracker(_Upper()).feed("hello world")

    tracker = ChunkTracker(_OnlyNew())
    assert tracker.feed("a b c") == ["a", "b"]
    with pytest.raises(InvalidInputError, match=r"_OnlyNew\.split\(\).*not only new"):
        tracker.feed("a b c d e")

    with pytest.raises(InvalidInputError, match="must return a list"):
        ChunkTracker(_ReturnsString()).feed("abc")

    tracker = ChunkTracker(_BadFlush())
    assert tracker.feed("some text") == []
    with pytest.raises(InvalidInputError, match=r"_BadFlush\.flush\(\)"):
        tracker.finish("some text")

    with pytest.raises(InvalidInputError, match="may only grow"):
        tracker = ChunkTracker(WordChunker())
        tracker.feed("abc def")
        tracker.feed("abc")


def test_default_flush_discards_and_user_strategy_works() -> None:
    class Lines(ChunkingStrategy):
        def split(self, accumulated_text: str) -> list[str]:
            return [line + "\n" for line in accumulated_text.split("\n")[:-1]]

    tracker = ChunkTracker(Lines())
    assert tracker.feed("a\nb") == ["a\n"]
    assert tracker.feed("a\nb\nc") == ["b\n"]
    assert tracker.consumed == 4
    assert tracker.finish("a\nb\nc") == []  # the default flush discards the fragment
    assert tracker.consumed == 4
