r"""Chunking strategies for streaming validation: Mellea 0.8.0's ``mellea.core.chunking``, and
the implementation behind Mellea 0.7.0's ``mellea.stdlib.chunking`` (which re-exports it).

A chunking strategy turns the text a model has generated *so far* into complete semantic units
(sentences, words, paragraphs) that the validators judge one by one, under
:func:`~mellea_actors.stdlib.streaming.stream_with_chunking` (0.7) and
:func:`~mellea_actors.stdlib.streaming.stream` (0.8) alike, and that a
:class:`~mellea_actors.core.requirement.Requirement` with ``chunking=`` uses to re-chunk the
stream at its own granularity.

Two names for one implementation
--------------------------------
=====================  =========================  ==========================================
Mellea 0.7.0            Mellea 0.8.0               here (the same objects)
=====================  =========================  ==========================================
``ChunkingStrategy``    ``ChunkingStrategy``       :class:`ChunkingStrategy`
``SentenceChunker``     ``SentenceChunking``       :class:`SentenceChunker`
``WordChunker``         ``WordChunking``           :class:`WordChunker`
``ParagraphChunker``    ``ParagraphChunking``      :class:`ParagraphChunker`
(the orchestrator)      ``Chunker``                :class:`Chunker` (over :class:`ChunkTracker`)
(the orchestrator)      ``resolve_chunking_strategy``  :func:`resolve_chunking_strategy`
=====================  =========================  ==========================================

The built-ins follow the rules documented on each class under both names (so Mellea 0.8 code gets
the abbreviation, list-marker and full-width rules too, where 0.8's own regex splits "Dr.").

The contract
------------
``split(text)`` returns the complete chunks of ``text``, in order, withholding the trailing
fragment that has not reached a boundary yet; ``flush(text)`` returns that fragment once the
stream has ended naturally (``[]`` to discard it: the default). Mellea 0.7.0 calls ``split``
with the *whole* text so far and takes the chunks it has not seen yet; Mellea 0.8.0's
``Chunker`` calls it with the text after the last chunk. A strategy that is a function of its
argument (stateless; for a prefix ``P`` of a text ``T``, ``split(P)`` is a prefix of
``split(T)``) gives the same chunks both ways, so a strategy written for either version works
under both APIs here. The engine calls ``split`` with the whole text (:class:`ChunkTracker`),
which lets the built-ins look back (a list marker at the start of a line, an open guillemet).

Whitespace convention of the built-in strategies
------------------------------------------------
Every chunk is a verbatim substring of the text that **starts and ends with a non-whitespace
character**; whitespace *inside* a chunk (spaces, newlines) is kept as is. The whitespace between
two chunks, before the first and after the last belongs to no chunk (it is the separator, as in
Mellea, whose sentence and word chunkers drop it too). Hence, with ``c_i`` the chunks of
``split(T) + flush(T)``::

    T == g_0 + c_0 + g_1 + c_1 + ... + c_n + g_(n+1)      every g_i whitespace-only

and the text (with its original spacing) is recovered from the chunk offsets, never by joining
the chunks. :func:`validate_chunks` checks exactly this shape for any strategy, including
user-written ones (which may also put the whitespace inside their chunks: gaps may be empty).

Cost
----
The contract is stateless, so a naive strategy rescans the whole text on every call (O(n²) over
a stream). The built-ins keep a private memo -- the last text seen, its chunks and a scan cursor --
and only scan the new part when the next text extends the previous one (checked with
``str.startswith``, a memory compare); otherwise they rescan from the start. The memo is a cache
of a pure function: results never depend on call history, the instance may be copied, reused
for a new stream or shared between streams, and it is replaced, never mutated in place. The
remaining cost per call is building the list of *all* chunks, which the contract requires.
:class:`ChunkTracker` (and so :class:`Chunker`) avoids even that for the built-ins: it runs their
scanner directly, O(new text) per call.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from mellea_actors.errors import InvalidInputError

__all__ = [
    "CHUNKING_ALIASES",
    "ChunkTracker",
    "Chunker",
    "ChunkingStrategy",
    "ParagraphChunker",
    "ParagraphChunking",
    "SentenceChunker",
    "SentenceChunking",
    "WordChunker",
    "WordChunking",
    "resolve_chunking",
    "resolve_chunking_strategy",
    "validate_chunks",
]


class ChunkingStrategy(ABC):
    """Abstract base class of the chunking strategies used by streaming validation.

    Subclasses implement :meth:`split` and may override :meth:`flush`. The contract (Mellea
    0.7.0's; a strategy written to Mellea 0.8.0's, which calls ``split`` on the text after the
    last chunk, meets it as long as it is stateless, see the module docstring):

    * ``split(accumulated_text)`` gets the full text accumulated so far and returns **every**
      complete chunk of it, in order, excluding the trailing fragment that has not reached a
      boundary. The result for a prefix of a text must be a prefix of the result for the text
      (the caller takes ``split(text)[already_seen:]`` as the new chunks).
    * ``flush(accumulated_text)`` is called once, after a natural end of the stream (not after an
      early exit) with the final text; it returns the withheld trailing fragment as a final
      chunk list, or ``[]`` to discard it (the default).
    * Chunks must be verbatim substrings of the text, consecutive, separated by whitespace only
      (see :func:`validate_chunks`; the streaming engine reports a violation as an error naming
      the strategy instead of mis-accounting the delivered text).

    Stateful implementations are allowed but must only *replace* attributes of ``self`` (never
    mutate them in place), so that copies of the instance stay independent.
    """

    @abstractmethod
    def split(self, accumulated_text: str) -> list[str]:
        """Return all complete chunks of ``accumulated_text``, withholding the trailing fragment.

        Args:
            accumulated_text: The full text generated so far (not only the latest delta).

        Returns:
            Every complete chunk, from the first one; ``[]`` if no boundary was reached yet.
        """

    def flush(self, accumulated_text: str) -> list[str]:
        """Return the trailing fragment that :meth:`split` withheld, at the end of the stream.

        The default discards it (returns ``[]``), as Mellea 0.7.0 does; the built-in strategies
        return it as a one-element list when it contains non-whitespace text.

        Args:
            accumulated_text: The full text at the end of the stream.

        Returns:
            The final chunks (normally ``[fragment]``) or ``[]``.
        """
        del accumulated_text
        return []


# --------------------------------------------------------------------------------------------
# Shared machinery of the built-in strategies
# --------------------------------------------------------------------------------------------


class _Cursor(NamedTuple):
    """Scan state of a built-in strategy over a text (a pure function of that text).

    ``end``: offset just after the last complete chunk (0 before the first one).
    ``start``: the next chunk's first character is searched from here; ``text[end:start]`` is
    whitespace. ``search``: the boundary search resumes here; every possible boundary that starts
    before it has been decided already.
    """

    end: int
    start: int
    search: int


_ORIGIN = _Cursor(0, 0, 0)

_NON_WS = re.compile(r"\S")
_WS = re.compile(r"\s")
# A blank line: a line break, any whitespace except line breaks, another line break.
# Matches "\n\n", "\n \t\n" and, since "\r" is whitespace, "\r\n\r\n".
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_HWS_TO_END = re.compile(r"[^\S\n]*\Z")


def _first_non_ws(text: str, pos: int) -> int:
    """Offset of the first non-whitespace character at or after ``pos`` (``len(text)`` if none)."""
    m = _NON_WS.search(text, pos)
    return m.start() if m else len(text)


def _blank_line_resume(text: str, search: int) -> int:
    """Where to resume looking for a blank line when none was found from ``search`` on.

    A blank line that completes later can only start at the last line break of ``text`` if
    nothing but horizontal whitespace follows it.
    """
    i = text.rfind("\n", search)
    if i != -1 and _HWS_TO_END.match(text, i + 1):
        return i
    return len(text)


class _BuiltinChunker(ChunkingStrategy):
    """Base of the built-ins: a pure incremental scanner plus a memo of the last text."""

    # (last text, all its complete chunks, cursor after them); replaced, never mutated.
    _memo: tuple[str, tuple[str, ...], _Cursor] | None = None

    @abstractmethod
    def _scan(self, text: str, cur: _Cursor) -> tuple[list[str], _Cursor]:
        """Find the complete chunks of ``text`` after ``cur``; return them and the new cursor.

        ``cur`` must be the cursor of a prefix of ``text`` (or :data:`_ORIGIN`). The result
        depends on ``text`` only, never on which prefix the cursor came from.
        """

    def _rest(self, text: str, cur: _Cursor) -> list[str]:
        """The trailing fragment after ``cur`` (for :meth:`flush`), stripped; ``[]`` if blank."""
        rest = text[cur.start :].strip()
        return [rest] if rest else []

    def _state(self, text: str) -> tuple[tuple[str, ...], _Cursor]:
        memo = self._memo
        if memo is not None and text.startswith(memo[0]):
            chunks, cur = memo[1], memo[2]
            if len(text) == len(memo[0]):
                return chunks, cur
        else:
            chunks, cur = (), _ORIGIN
        new, cur = self._scan(text, cur)
        if new:
            chunks = chunks + tuple(new)
        self._memo = (text, chunks, cur)
        return chunks, cur

    def split(self, accumulated_text: str) -> list[str]:
        """Return all complete chunks of ``accumulated_text`` (see the class docstring)."""
        return list(self._state(accumulated_text)[0])

    def flush(self, accumulated_text: str) -> list[str]:
        """Return the withheld trailing fragment, stripped, as ``[fragment]``; ``[]`` if blank."""
        return self._rest(accumulated_text, self._state(accumulated_text)[1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------

# Full-width terminators (Chinese, Japanese): they end a sentence with no whitespace after.
_FULL_WIDTH_ENDS = "\u3002\uff01\uff1f"  # 。！？
_END_MARKS = ".!?\u2026" + _FULL_WIDTH_ENDS
# Closing quotes / brackets / markdown emphasis that may follow the end marks: English and
# German quotes (” ’ “ ‘), guillemets (» ›), CJK corner brackets and full-width brackets.
_CLOSERS = (
    "\"'\u201d\u2019\u201c\u2018)]\u00bb\u203a*_"
    "\u300d\u300f\uff09\u3011\u300b\u3009\uff3d\uff02"  # 」』）】》〉］＂
)
# Guillemets that French spacing puts after a space: "« Stop. »" keeps its » when a « is open.
_SPACED_CLOSERS = {"\u00bb": "\u00ab", "\u203a": "\u2039"}  # » «, › ‹
_SPACED_BEFORE_CLOSER = " \t\u00a0\u202f"
_SENTENCE_CANDIDATE = re.compile(
    rf"(?P<marks>[{re.escape(_END_MARKS)}]+)[{re.escape(_CLOSERS)}]*|(?P<blank>\n[^\S\n]*\n)"
)
_LIST_LETTERS = re.compile(r"[A-Za-z]|[IVXLC]+|[ivxlc]+")
# Opening quotes / brackets / markdown emphasis skipped to find the first letter of the next
# sentence: " ' “ ‘ „ ‚ « ‹ ( [ ¿ ¡ * _ and the CJK openers 「『（【《〈［.
_OPENERS = (
    "\"'\u201c\u2018\u201e\u201a\u00ab\u2039([\u00bf\u00a1*_"
    "\u300c\u300e\uff08\u3010\u300a\u3008\uff3b"
)


def _words(words: str) -> frozenset[str]:
    return frozenset(words.split())


def _at_line_start(text: str, i: int) -> bool:
    """True if only spaces/tabs separate offset ``i`` from the start of its line (or the text)."""
    while i > 0 and text[i - 1] in " \t":
        i -= 1
    return i == 0 or text[i - 1] == "\n"


def _is_initials(word: str) -> bool:
    """``J``, ``R``, ``U.S``, ``J.R.R``: single upper-case letters joined by dots (not ``I``)."""
    if word == "I":
        return False
    return all(len(p) == 1 and p.isupper() for p in word.split("."))


def _past_spaced_closer(text: str, b: int) -> int | None:
    """Where a sentence that ends at ``b`` really ends: past a spaced guillemet (``« Stop. »``)
    when one is open at ``b`` (opened in the last 4 KiB of text, which bounds the cost); None
    if that cannot be told yet."""
    lo = max(0, b - 4096)
    if all(text.count(o, lo, b) <= text.count(c, lo, b) for c, o in _SPACED_CLOSERS.items()):
        return b
    n = len(text)
    q = b
    while q < n and text[q] in _SPACED_BEFORE_CLOSER:
        q += 1
    if q == n:
        return None
    if text[q] not in _SPACED_CLOSERS:
        return b
    e = q + 1
    while e < n and text[e] in _CLOSERS:
        e += 1
    return e


class SentenceChunker(_BuiltinChunker):
    r"""Split text into sentences.

    **Boundary.** A run of end marks (``.``, ``!``, ``?``, ``…``; a run such as ``?!``, ``!!``
    or ``...`` counts as one end), optionally followed by closing characters (``"`` ``'``,
    the curly quotes ``”`` ``’`` and the German closers ``“`` ``‘`` (as in „Halt.“), ``)``
    ``]``, ``»`` ``›``, the CJK closers ``」』）】》〉］`` and markdown ``*``/``_``), followed by
    whitespace (a space, tab or line break). The sentence ends after the closing characters.
    The full-width terminators ``。！？`` end a sentence with or without whitespace after them
    ("今日は晴れ。明日は雨。" is two sentences). While a guillemet (``«`` or ``‹``) is open, a
    closing one after spaces stays with the sentence before it: ``« Stop. » Then``
    gives ``« Stop. »`` (French spacing, also with U+00A0/U+202F). A blank line (``\n\n``,
    ``\n \n``, ``\r\n\r\n``) also ends a sentence, so
    headings and list items without a final period do not run into the next paragraph.
    Decimals (``3.14``), versions and URLs never split: no whitespace follows their dots.

    **Abbreviations** (the rules apply only when the end mark is a single ``.``; closing
    characters may follow):

    * titles, which stand before a name, never end a sentence (case-sensitive): ``Dr. Mr. Mrs.
      Ms. Mx. Prof. Sr. Sra. Srta. St. Rev. Hon. Gov. Sen. Rep. Pres. Gen. Col. Capt. Lt. Sgt.
      Mt. Mme. Mlle. Messrs.`` ("Dr. Smith", "St. Mark's"). ``Sr.`` is a title (Señor, Sister);
      ``Jr.``, which follows a name, is not (see the next rule). Trade-off: a sentence ending in
      one ("We live on Baker St. It is quiet.") is not split;
    * other abbreviations end a sentence only if the next word starts with an upper-case letter
      (after any opening quote or bracket): in any case ``etc. approx. vs. e.g. i.e. cf. viz.
      esp. incl. ca. resp. ibid. dept. a.m. p.m.``, and case-sensitive ``al. Jr. Esq. Inc. Ltd.
      Corp. Co. Bros. Ph.D.`` -- "Pi is 3.14 approx. Next" and "…, pears, etc. Then we left."
      split, "approx. 5 km", "e.g. cats" and "King Jr. was born" do not. Trade-off: such an
      abbreviation followed mid-sentence by a name or by ``I`` ("cats vs. Dogs", "e.g. I think")
      splits;
    * before a number only (any case): ``No. Nos. Fig. Figs. Eq. Eqs. Vol. Vols. Ch. Sec. Ref.
      Refs. p. pp.`` never end a sentence when a digit follows -- "see Fig. 3" does not split,
      "I said no. Then" does;
    * initials: a single upper-case letter, or several joined by dots, other than the pronoun
      ``I`` (``J. R. R. Tolkien``, ``John F. Kennedy``, ``U.S. Army``). Trade-off: a sentence
      ending in one capital letter or in ``U.S.`` ("We chose plan B. It worked.") is not split;
    * list markers at the start of a line (or of the text), after optional spaces/tabs: a number
      (``1.``, ``10.``), a single letter (``a.``, ``B.``) or a roman numeral (``IV.``, ``ii.``),
      so "1. Boil water.\n2. Add pasta." gives "1. Boil water." and "2. Add pasta.". A number
      ending a sentence elsewhere ("It was 2023. Then") still splits.

    Extra exact, case-sensitive abbreviations that never end a sentence (without the final dot,
    e.g. ``"Univ"``, ``"Bldg"``) can be given to the constructor. The word before the dot is the
    run of letters and dots that precedes it.

    **Held back.** A sentence is returned once the whitespace after its end is seen, and for the
    two look-ahead rules (before-a-number, before-a-capital) once the character that decides
    is seen (the next non-whitespace one, past opening quotes and brackets for the capital);
    the last sentence is returned by :meth:`flush` at the end of the stream.

    **Whitespace.** Chunks start and end with non-whitespace; the whitespace between sentences is
    the separator and belongs to no chunk (as in Mellea 0.7.0); line breaks inside a sentence
    are kept.
    """

    #: Never end a sentence (case-sensitive): they stand before a name.
    TITLES: frozenset[str] = _words(
        "Dr Mr Mrs Ms Mx Prof Sr Sra Srta St Rev Hon Gov Sen Rep Pres Gen Col Capt Lt Sgt Mt "
        "Mme Mlle Messrs"
    )
    #: End a sentence unless a digit follows (any case).
    BEFORE_NUMBER: frozenset[str] = _words("no nos fig figs eq eqs vol vols ch sec ref refs p pp")
    #: End a sentence only before a capital (any case).
    END_IF_CAPITAL: frozenset[str] = _words(
        "etc approx vs e.g i.e cf viz esp incl ca resp ibid dept a.m p.m"
    )
    #: End a sentence only before a capital (case-sensitive).
    END_IF_CAPITAL_CASED: frozenset[str] = _words("al Jr Esq Inc Ltd Corp Co Bros Ph.D")

    def __init__(self, abbreviations: Iterable[str] = ()) -> None:
        """Create a sentence chunker.

        Args:
            abbreviations: Extra words that never end a sentence when followed by ``.``; exact,
                case-sensitive, given with or without their final dot.
        """
        if isinstance(abbreviations, str):
            raise InvalidInputError(
                "abbreviations must be an iterable of words, not a single string "
                f"({abbreviations!r})"
            )
        self._extra: frozenset[str] = frozenset(a.removesuffix(".") for a in abbreviations)

    def __repr__(self) -> str:
        if self._extra:
            return f"SentenceChunker(abbreviations={sorted(self._extra)!r})"
        return "SentenceChunker()"

    def _is_boundary(self, text: str, a: int, b: int) -> bool | None:
        """Decide whether the end-mark run ``text[a:b]`` (whitespace at ``b``) ends a sentence.

        Returns None when the decision needs a character that has not arrived yet.
        """
        if text[a] != "." or (b > a + 1 and text[a + 1] in _END_MARKS):
            return True  # !, ?, …, "?!", "..." always end a sentence
        t = a
        while t > 0 and (text[t - 1].isalpha() or text[t - 1] == "."):
            t -= 1
        word = text[t:a]
        if not word:
            d = a
            while d > 0 and text[d - 1].isdigit():
                d -= 1
            return not (d < a and _at_line_start(text, d))  # "1." list marker
        if _LIST_LETTERS.fullmatch(word) and _at_line_start(text, t):
            return False
        lower = word.lower()
        if word in self.TITLES or word in self._extra or _is_initials(word):
            return False
        if lower in self.BEFORE_NUMBER:
            q = _first_non_ws(text, b)
            return None if q == len(text) else not text[q].isdigit()
        if lower in self.END_IF_CAPITAL or word in self.END_IF_CAPITAL_CASED:
            q = _first_non_ws(text, b)
            while q < len(text) and text[q] in _OPENERS:
                q += 1
            return None if q == len(text) else text[q].isupper()
        return True

    def _scan(self, text: str, cur: _Cursor) -> tuple[list[str], _Cursor]:
        end, start, search = cur
        n = len(text)
        out: list[str] = []
        while True:
            m = _SENTENCE_CANDIDATE.search(text, search)
            if m is None:
                search = _blank_line_resume(text, search)
                break
            a, b = m.span()
            if m.lastgroup == "blank":
                cs = _first_non_ws(text, start)
                if cs < a:
                    chunk = text[cs:a].rstrip()
                    out.append(chunk)
                    end = cs + len(chunk)
                start = search = b
                continue
            if b == n:  # the run may still grow, or whitespace may follow: hold
                search = a
                break
            full_width = any(c in _FULL_WIDTH_ENDS for c in m.group("marks"))
            if not full_width and not text[b].isspace():
                search = b
                continue
            verdict = True if full_width else self._is_boundary(text, a, b)
            if verdict:
                closed = _past_spaced_closer(text, b)
                if closed is None or closed == n:  # a » may still come, or follow it: hold
                    verdict = None
                else:
                    b = closed
            if verdict is None:
                search = a
                break
            if verdict:
                out.append(text[_first_non_ws(text, start) : b])
                end = start = b
            search = b
        return out, _Cursor(end, start, search)


# --------------------------------------------------------------------------------------------
# Words and paragraphs
# --------------------------------------------------------------------------------------------


class WordChunker(_BuiltinChunker):
    """Split text into words.

    A word is a maximal run of non-whitespace characters (punctuation stays attached:
    ``"Hello,"``); runs of whitespace (spaces, tabs, line breaks) separate words and belong to no
    chunk. A word is returned once a whitespace character follows it; the last word is returned
    by :meth:`flush`. For a complete text ``split(T) + flush(T) == T.split()``.
    """

    def _scan(self, text: str, cur: _Cursor) -> tuple[list[str], _Cursor]:
        end, start, search = cur
        n = len(text)
        out: list[str] = []
        while True:
            cs = _first_non_ws(text, start)
            start = cs
            if cs == n:
                search = n
                break
            m = _WS.search(text, max(search, cs))
            if m is None:
                search = n
                break
            w = m.start()
            out.append(text[cs:w])
            end = start = search = w
        return out, _Cursor(end, start, search)


class ParagraphChunker(_BuiltinChunker):
    r"""Split text into paragraphs.

    Paragraphs are separated by blank lines: a line break, then any whitespace without a line
    break, then another line break -- ``\n\n``, ``\n  \n``, ``\r\n\r\n``, and longer runs of
    blank lines. A paragraph is returned as soon as the blank line after it is complete; the
    last one is returned by :meth:`flush`. Chunks are stripped: they start and end with
    non-whitespace (the indentation of a paragraph's first line and the trailing spaces of its
    last line belong to the separator); single line breaks inside a paragraph are kept.
    Whitespace-only paragraphs are skipped.
    """

    def _scan(self, text: str, cur: _Cursor) -> tuple[list[str], _Cursor]:
        end, start, search = cur
        out: list[str] = []
        while True:
            m = _BLANK_LINE.search(text, search)
            if m is None:
                search = _blank_line_resume(text, search)
                break
            a, b = m.span()
            cs = _first_non_ws(text, start)
            if cs < a:
                chunk = text[cs:a].rstrip()
                out.append(chunk)
                end = cs + len(chunk)
            start = search = b
        return out, _Cursor(end, start, search)


# --------------------------------------------------------------------------------------------
# Aliases, checks and the tracker used by the streaming engine
# --------------------------------------------------------------------------------------------

#: Mellea 0.8.0's names of the built-in strategies: the very same classes.
SentenceChunking = SentenceChunker
WordChunking = WordChunker
ParagraphChunking = ParagraphChunker

#: The ``chunking=`` aliases of ``stream_with_chunking``, ``stream`` and ``Requirement``
#: (matched case-insensitively).
CHUNKING_ALIASES: dict[str, type[ChunkingStrategy]] = {
    "sentence": SentenceChunker,
    "word": WordChunker,
    "paragraph": ParagraphChunker,
}


def resolve_chunking(spec: str | ChunkingStrategy) -> ChunkingStrategy:
    """Turn the ``chunking=`` argument into a strategy instance.

    ``"sentence"``, ``"word"`` and ``"paragraph"`` (case-insensitive, no surrounding spaces)
    give a new :class:`SentenceChunker`, :class:`WordChunker` or :class:`ParagraphChunker`; a
    :class:`ChunkingStrategy` instance is returned unchanged.

    Raises:
        InvalidInputError: (a ``ValueError``) for any other string, naming it and listing the
            valid aliases, and for any other type (including a strategy *class* instead of an
            instance).
    """
    valid = ", ".join(repr(a) for a in CHUNKING_ALIASES)
    if isinstance(spec, ChunkingStrategy):
        return spec
    if isinstance(spec, str):
        cls = CHUNKING_ALIASES.get(spec.lower())
        if cls is None:
            raise InvalidInputError(
                f"Unknown chunking alias {spec!r}. Choose from: {valid}, "
                "or pass a ChunkingStrategy instance."
            )
        return cls()
    if isinstance(spec, type) and issubclass(spec, ChunkingStrategy):
        raise InvalidInputError(
            f"chunking must be a ChunkingStrategy instance, got the class {spec.__name__}; "
            f"pass {spec.__name__}() instead (or one of the aliases {valid})."
        )
    raise InvalidInputError(
        f"chunking must be one of the aliases {valid} or a ChunkingStrategy instance, "
        f"got {type(spec).__name__} {_short(spec)}."
    )


def resolve_chunking_strategy(
    chunking: str | ChunkingStrategy | None,
) -> ChunkingStrategy | None:
    """Mellea 0.8.0's resolver: ``None`` stays ``None`` (no chunking), anything else is
    :func:`resolve_chunking` (an alias gives a new instance, an instance is returned as is).

    Raises:
        InvalidInputError: (a ``ValueError``) as :func:`resolve_chunking`.
    """
    return None if chunking is None else resolve_chunking(chunking)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _strategy_name(strategy: object) -> str:
    if strategy is None:
        return "chunking strategy"
    if isinstance(strategy, str):
        return strategy
    return type(strategy).__name__


def validate_chunks(
    accumulated: str,
    consumed: int,
    chunks: Sequence[str],
    *,
    strategy: object = None,
    method: str = "split",
) -> int:
    """Check that ``chunks`` are the next consecutive verbatim pieces of ``accumulated``.

    Starting at offset ``consumed`` (the end of the previous chunk), each chunk must occur in
    ``accumulated`` after a gap made only of whitespace (the gap may be empty; the chunk may
    itself begin with whitespace). An empty chunk is accepted and does not move the offset.

    Args:
        accumulated: The full text generated so far.
        consumed: Offset just after the last chunk already accounted for (0 at first).
        chunks: The new chunks returned by the strategy.
        strategy: The strategy (or its name), used in error messages.
        method: ``"split"`` or ``"flush"``, used in error messages.

    Returns:
        The offset just after the last chunk (``consumed`` if ``chunks`` is empty), so that
        ``accumulated[:offset]`` is exactly the text covered by the chunks so far.

    Raises:
        InvalidInputError: naming the strategy class and the offending chunk if a chunk is not a
            string, or is not found verbatim at that place.
    """
    pos = consumed
    n = len(accumulated)
    for index, chunk in enumerate(chunks):
        where = f"{_strategy_name(strategy)}.{method}() returned"
        if not isinstance(chunk, str):
            raise InvalidInputError(
                f"{where} a chunk that is not a string: {type(chunk).__name__} {_short(chunk)}"
            )
        gap_end = _first_non_ws(accumulated, pos)
        q = accumulated.find(chunk, pos, gap_end + len(chunk))
        if q == -1 or q + len(chunk) > n:
            there = accumulated[pos : pos + max(len(chunk), 20) + 10]
            raise InvalidInputError(
                f"{where} chunk {_short(chunk)} (new chunk #{index}) which is not the next "
                f"verbatim piece of the generated text at offset {pos} (text there: "
                f"{_short(there)}); chunks must be consecutive substrings of the text, "
                "separated by whitespace only."
            )
        pos = q + len(chunk)
    return pos


class ChunkTracker:
    """Feed a growing text to a strategy; get only the new chunks, checked.

    This is the streaming engine's side of the contract. Call :meth:`feed` with the whole text
    after each growth (each text must extend the previous one) and :meth:`finish` once after a
    natural end. :attr:`consumed` is the offset just after the last chunk returned, so that
    ``text[:consumed]`` is the text the returned chunks cover (``full_text`` on an early exit).

    For a built-in strategy whose ``split``/``flush`` are not overridden, the tracker runs the
    strategy's scanner directly: each call costs O(new text), not O(all chunks). For any other
    strategy it calls ``split`` and takes ``result[count:]``, checking that the strategy kept its
    earlier chunks (count did not shrink, the last chunk seen is unchanged: this catches a
    strategy that returns only *new* chunks) and that the chunks are verbatim
    (:func:`validate_chunks`); violations raise :class:`InvalidInputError` naming the strategy.
    """

    def __init__(self, strategy: ChunkingStrategy) -> None:
        self.strategy = strategy
        cls = type(strategy)
        self._fast: _BuiltinChunker | None = None
        if (
            isinstance(strategy, _BuiltinChunker)
            and cls.split is _BuiltinChunker.split
            and cls.flush is _BuiltinChunker.flush
        ):
            self._fast = strategy
        self._cursor = _ORIGIN
        self._length = 0
        self._count = 0
        self._last: str | None = None
        self._consumed = 0

    @property
    def consumed(self) -> int:
        """Offset just after the last chunk returned so far (0 before the first)."""
        return self._consumed

    @property
    def count(self) -> int:
        """Number of chunks returned so far."""
        return self._count

    def _grow(self, text: str) -> None:
        if len(text) < self._length:
            raise InvalidInputError(
                f"ChunkTracker got a text of {len(text)} characters after one of "
                f"{self._length}; the accumulated text may only grow."
            )
        self._length = len(text)

    def _check_result(self, result: object, method: str) -> Sequence[str]:
        if isinstance(result, str) or not isinstance(result, list | tuple):
            raise InvalidInputError(
                f"{_strategy_name(self.strategy)}.{method}() must return a list of strings, "
                f"got {type(result).__name__} {_short(result)}"
            )
        return result

    def feed(self, accumulated: str) -> list[str]:
        """Return the chunks of ``accumulated`` that were not returned before."""
        self._grow(accumulated)
        if self._fast is not None:
            new, self._cursor = self._fast._scan(accumulated, self._cursor)
            if new:
                self._count += len(new)
                self._consumed = self._cursor.end
            return new
        chunks = self._check_result(self.strategy.split(accumulated), "split")
        if len(chunks) < self._count or (self._count and chunks[self._count - 1] != self._last):
            raise InvalidInputError(
                f"{_strategy_name(self.strategy)}.split() returned {len(chunks)} chunk(s) after "
                f"returning {self._count} for a shorter text, or changed chunk "
                f"#{self._count - 1} ({_short(self._last)}); split() must return every "
                "complete chunk of the accumulated text, from the first one, not only new ones."
            )
        new = list(chunks[self._count :])
        if new:
            self._consumed = validate_chunks(
                accumulated, self._consumed, new, strategy=self.strategy, method="split"
            )
            self._count = len(chunks)
            self._last = new[-1]
        return new

    def finish(self, accumulated: str) -> list[str]:
        """Return the final chunks from ``strategy.flush`` (after a natural end), checked."""
        self._grow(accumulated)
        if self._fast is not None:
            _, self._cursor = self._fast._scan(accumulated, self._cursor)
            final = self._fast._rest(accumulated, self._cursor)
        else:
            final = list(self._check_result(self.strategy.flush(accumulated), "flush"))
        if final:
            self._consumed = validate_chunks(
                accumulated, self._consumed, final, strategy=self.strategy, method="flush"
            )
            self._count += len(final)
            self._last = final[-1]
        return final


class Chunker:
    """Mellea 0.8.0's incremental driver of a strategy: feed it deltas, get the new chunks.

    ``feed(delta)`` adds the text of one delta and returns the chunks it completed (checked as
    :class:`ChunkTracker` checks them: verbatim, in order, a violation raises
    :class:`InvalidInputError` naming the strategy); ``flush()``, once the stream has ended,
    returns the withheld trailing fragment (the same list on every later call). Feeding a text
    in any slicing gives the same chunks as one ``split`` + ``flush`` of the whole text.

    Unlike Mellea 0.8.0's, which keeps only the fragment after the last chunk, it keeps the
    whole text fed so far: the built-in rules look back past the last chunk (see the module
    docstring), and the built-ins still cost O(new text) per delta. One instance per stream;
    :class:`~mellea_actors.core.requirement.Requirement` keeps one per copy for ``chunking=``.
    """

    __slots__ = ("_flushed", "_text", "_tracker")

    def __init__(self, strategy: ChunkingStrategy) -> None:
        if not isinstance(strategy, ChunkingStrategy):
            raise InvalidInputError(
                f"Chunker needs a ChunkingStrategy instance, got {type(strategy).__name__} "
                f"{_short(strategy)} (resolve an alias with resolve_chunking_strategy first)"
            )
        self._tracker = ChunkTracker(strategy)
        self._text = ""
        self._flushed: list[str] | None = None

    @property
    def strategy(self) -> ChunkingStrategy:
        """The strategy this chunker drives."""
        return self._tracker.strategy

    def feed(self, delta: str) -> list[str]:
        """Add ``delta`` to the text; return the chunks it completed (``[]`` if none)."""
        if not delta:
            return []
        self._text += delta
        return self._tracker.feed(self._text)

    def flush(self) -> list[str]:
        """The trailing fragment withheld so far, as ``[fragment]`` (or ``[]``); call it once the
        stream has ended (later calls return the same list)."""
        if self._flushed is None:
            self._flushed = self._tracker.finish(self._text)
        return list(self._flushed)
