"""The bench's tables, side by side, for the terminal and for ``bench/README.md``; the plot.

Everything here reads the report that ``run.py`` builds (``{"machine", "quick", "scenarios"}``,
one entry per scenario with its ``aggregates``, ``checks`` and ``verdicts``). Three tables:

* the **summary**: one row per figure, one column per variant (floor, raw_naive, raw_capped,
  Mellea 0.7.0, mellea_actors), the target, and mellea_actors' verdict on that row;
* the **scaling** table of scenario 6 (CPU per chunk, chunks/s, delays, by number of streams);
* the **detail** table (terminal only): wall and CPU with their noise, ratios to the
  scenario's reference, the load other processes put on the machine, every variant's verdict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scenarios import LABELS, VARIANTS, ratio, reference_value

JUDGED = "mellea_actors"
BEGIN = "<!-- bench:results:begin (written by bench/run.py --readme; edits are overwritten) -->"
END = "<!-- bench:results:end -->"

Row = tuple[str, dict[str, str], str, str]
"""(figure, cell per variant, target, mellea_actors' verdict on it)."""


# -- formatting --------------------------------------------------------------------------------
def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.0f} ms"


def _x(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}x)"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> str:
    """A table as GitHub markdown, or as aligned plain text."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


# -- the summary -------------------------------------------------------------------------------
def _cells(sc: dict[str, Any], fmt: Callable[[str, dict[str, Any]], str | None]) -> dict[str, str]:
    """One cell per variant: ``fmt(variant, aggregates)``, or why there is no figure."""
    out: dict[str, str] = {}
    for v in VARIANTS:
        if v in sc.get("skipped", {}):
            out[v] = "skipped"
        elif v in sc["errors"]:
            out[v] = "ERROR"
        elif v in sc["aggregates"]:
            out[v] = fmt(v, sc["aggregates"][v]) or ""
    return out


def _word(sc: dict[str, Any], *names: str) -> str:
    """mellea_actors' verdict on the checks ``names`` of this scenario."""
    checks = sc.get("checks", {}).get(JUDGED, {})
    found = [checks[n] for n in names if n in checks]
    if not found:
        return "-"
    return "PASS" if all(found) else "FAIL"


def _ratio_cell(
    sc: dict[str, Any], key: str, fmt: Callable[[float], str]
) -> Callable[[str, dict[str, Any]], str | None]:
    aggs = sc["aggregates"]

    def cell(v: str, a: dict[str, Any]) -> str | None:
        if key not in a:
            return None
        return fmt(a[key]) + _x(ratio(sc["reference"], a, aggs, key))

    return cell


def _rows_wall(sc: dict[str, Any], label: str) -> list[Row]:
    cell = _ratio_cell(sc, "wall", fmt_time)
    return [(label, _cells(sc, cell), "<= 1.1x best raw", _word(sc, "wall", "text"))]


def _rows_first(sc: dict[str, Any]) -> list[Row]:
    ref = reference_value(sc["reference"], sc["aggregates"], "first_ms")

    def cell(v: str, a: dict[str, Any]) -> str:
        extra = (
            ""
            if ref is None or v in ("raw_naive", "raw_capped")
            else f" ({a['first_ms'] - ref:+.2f})"
        )
        return fmt_ms(a["first_ms"]) + extra

    return [
        (
            "1b time to first text, median",
            _cells(sc, cell),
            "<= raw + 2 ms",
            _word(sc, "first text", "text"),
        )
    ]


def _rows_cancel(sc: dict[str, Any]) -> list[Row]:
    def cancel(v: str, a: dict[str, Any]) -> str | None:
        c = a.get("cancel", {})
        return fmt_ms(c["median_ms"]) if "median_ms" in c else None

    def fail(v: str, a: dict[str, Any]) -> str | None:
        f = a.get("validator", {})
        if "skipped" in f:
            return "skipped"
        if "median_ms" not in f:
            return None
        return f"{fmt_ms(f['median_ms'])}; {f['after_fail']} after"

    return [
        ("3 cancel -> disconnect, median", _cells(sc, cancel), "(information)", "-"),
        (
            '3 "fail" -> disconnect, median; chunks after it',
            _cells(sc, fail),
            "<= 0.6 ms; 0",
            _word(sc, '"fail" -> disconnect', "after fail"),
        ),
    ]


def _rows_streams(sc: dict[str, Any]) -> list[Row]:
    aggs = sc["aggregates"]
    n = next((a["streams"] for a in aggs.values() if "streams" in a), 0)
    head = f"4 {n:,} streams:"

    def in_order(v: str, a: dict[str, Any]) -> str:
        text = f"{a['delivered']:,}/{a['expected']:,}"
        return text + (f", {a['disorder']} out of order" if a["disorder"] else "")

    return [
        (
            f"{head} peak in flight",
            _cells(sc, lambda v, a: f"{a['peak_active']:,}"),
            f"= {n:,}",
            _word(sc, "in flight"),
        ),
        (f"{head} delivered in order", _cells(sc, in_order), "all", _word(sc, "in order")),
        (
            f"{head} client CPU",
            _cells(sc, _ratio_cell(sc, "cpu", lambda s: fmt_time(s))),
            "<= 1.5x floor",
            _word(sc, "CPU"),
        ),
        (
            f"{head} wall",
            _cells(sc, _ratio_cell(sc, "wall", lambda s: fmt_time(s))),
            "<= 1.2x floor",
            _word(sc, "wall"),
        ),
        (
            f"{head} p99 send -> receive",
            _cells(sc, _ratio_cell(sc, "p99_ms", fmt_ms)),
            "<= 1.5x floor, < 50 ms",
            _word(sc, "p99"),
        ),
    ]


def _rows_live(sc: dict[str, Any]) -> list[Row]:
    def threads(v: str, a: dict[str, Any]) -> str:
        return f"{a['threads_before']} -> {a['threads_peak']} (n={a['n']:,})"

    return [
        (
            "5 live thunks: threads before -> peak",
            _cells(sc, threads),
            "flat",
            _word(sc, "threads"),
        ),
        (
            "5 live thunks: RSS growth per thunk",
            _cells(sc, lambda v, a: f"{a['kb_per_thunk']:.1f} KB"),
            "<= 4 KB",
            _word(sc, "memory"),
        ),
    ]


def _rows_open(sc: dict[str, Any]) -> list[Row]:
    floor = sc["aggregates"].get("floor", {}).get("kb_per_thunk")

    def per_stream(v: str, a: dict[str, Any]) -> str:
        ratio = "" if not floor or v == "floor" else f" ({a['kb_per_thunk'] / floor:.2f}x)"
        return f"{a['kb_per_thunk']:.1f} KB{ratio}"

    return [
        (
            "5b every thunk an open stream: RSS per thunk",
            _cells(sc, per_stream),
            "reference",
            "-",
        )
    ]


def _rows_scaling(sc: dict[str, Any]) -> list[Row]:
    aggs = sc["aggregates"]
    sizes = sorted({n for a in aggs.values() for n in a.get("sizes", {})})
    rows: list[Row] = []
    for n in sizes:

        def cell(v: str, a: dict[str, Any], n: int = n) -> str | None:
            f = a.get("sizes", {}).get(n)
            if f is None:
                return None
            return f"{f['us_per_chunk']:.1f} us" + ("" if n == sizes[0] else _x(f["ratio"]))

        rows.append((f"6 CPU per chunk, {n:,} streams", _cells(sc, cell), "", "-"))

    def saturation(v: str, a: dict[str, Any]) -> str:
        at = a.get("saturated_at")
        if at is None:
            return "none"
        return f"{at:,} streams ({a['sizes'][at]['offered']:,.0f} chunks/s)"

    rows.append(
        (
            "6 saturates at (see the scaling table)",
            _cells(sc, saturation),
            "flat (<= 1.3x) until then",
            _word(sc, "flat"),
        )
    )
    return rows


def _rows_parse(sc: dict[str, Any]) -> list[Row]:
    a = sc["aggregates"].get(JUDGED)
    if not a:
        return []
    parse = {
        "floor": f"{a['json_loads_us']:.2f} us (json.loads)",
        "raw_naive": f"{a['ollama_parse_us']:.2f} us (+ChatResponse)",
        "raw_capped": f"{a['ollama_parse_us']:.2f} us (+ChatResponse)",
        JUDGED: f"{a['transport_parse_us']:.2f} us (transport)",
    }
    deliver = {JUDGED: f"{a['runtime_us']:.1f} us (delivery {a['delivery_us']:.1f})"}
    return [
        ("7 parse one chat line, CPU", parse, "(information)", "-"),
        ("7 parse + deliver to astream(), CPU/chunk", deliver, "(information)", "-"),
    ]


def summary_rows(report: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for sc in report["scenarios"]:
        name = sc["name"]
        if name == "long_stream":
            rows += _rows_wall(sc, "1 one stream, 5,000 chunks: wall")
        elif name == "first_text":
            rows += _rows_first(sc)
        elif name == "lazy_thunks":
            rows += _rows_wall(sc, "2 200 lazy thunks: wall")
        elif name == "cancel":
            rows += _rows_cancel(sc)
        elif name == "many_streams":
            rows += _rows_streams(sc)
        elif name == "live_thunks":
            rows += _rows_live(sc)
        elif name == "open_streams":
            rows += _rows_open(sc)
        elif name == "scaling":
            rows += _rows_scaling(sc)
        elif name == "parse_deliver":
            rows += _rows_parse(sc)
    return rows


def summary_table(report: dict[str, Any], *, markdown: bool) -> str:
    headers = ["figure", *(LABELS[v] for v in VARIANTS), "target", "verdict"]
    rows = [
        [label, *(cells.get(v, "") for v in VARIANTS), target, word]
        for label, cells, target, word in summary_rows(report)
    ]
    return render(headers, rows, markdown=markdown)


# -- the scaling table -------------------------------------------------------------------------
def scaling_table(report: dict[str, Any], *, markdown: bool) -> str | None:
    sc = next((s for s in report["scenarios"] if s["name"] == "scaling"), None)
    if sc is None or not sc["aggregates"]:
        return None
    headers = [
        "variant",
        "streams",
        "CPU/chunk",
        "vs first",
        "chunks/s (offered)",
        "kept up",
        "client cores",
        "p50 / p99 delay",
        "peak in flight",
        "server cores",
        "server p99 late",
    ]
    rows = []
    for v in VARIANTS:
        a = sc["aggregates"].get(v)
        if not a:
            continue
        for n, f in a["sizes"].items():
            mark = " *" if n == a.get("saturated_at") else ""
            rows.append(
                [
                    LABELS[v],
                    f"{n:,}{mark}",
                    f"{f['us_per_chunk']:.1f} us",
                    f"{f['ratio']:.2f}x",
                    f"{f['rate']:,.0f} ({f['offered']:,.0f})",
                    f"{f['keep_up']:.0%}",
                    f"{f['cores']:.2f}",
                    f"{fmt_ms(f['p50_ms'])} / {fmt_ms(f['p99_ms'])}",
                    f"{f['peak_active']:,}",
                    f"{f['server_cores']:.2f}",
                    fmt_ms(f["server_late_p99_ms"]),
                ]
            )
    note = (
        "\n\n* = the first size where the client saturates: "
        + "; ".join(
            f"{LABELS[v]}: {a['saturation']}"
            for v, a in sc["aggregates"].items()
            if a.get("saturated_at") is not None
        )
        if any(a.get("saturated_at") is not None for a in sc["aggregates"].values())
        else ""
    )
    return render(headers, rows, markdown=markdown) + note


# -- the detail table (terminal) ---------------------------------------------------------------
def detail_table(report: dict[str, Any]) -> str:
    head = ["variant", "wall (±noise)", "CPU (±noise)", "wall/ref", "CPU/ref", "load", "verdict"]
    out: list[str] = []
    for sc in report["scenarios"]:
        aggs = sc["aggregates"]
        ref = {"floor": "floor", "raw": "best raw"}.get(sc["reference"], "")
        out.append(
            f"{sc['title']}   [target: {sc['target']}" + (f"; ratios to {ref}]" if ref else "]")
        )
        rows = []
        for variant in VARIANTS:
            if variant in sc.get("skipped", {}):
                rows.append([variant, f"skipped: {sc['skipped'][variant]}", *[""] * 5, ""])
                continue
            if variant in sc["errors"]:
                err = sc["errors"][variant].strip().splitlines()
                rows.append([variant, f"ERROR: {err[-1] if err else '?'}", *[""] * 5, ""])
                continue
            a = aggs.get(variant)
            if not a:
                continue
            text, word = sc["verdicts"].get(variant, ("", "-"))
            load = a.get("foreign_cores_per_worker") or []
            rows.append(
                [
                    variant,
                    _noisy(a, "wall"),
                    _noisy(a, "cpu"),
                    _xs(ratio(sc["reference"], a, aggs, "wall")),
                    _xs(ratio(sc["reference"], a, aggs, "cpu")),
                    f"{max(load):.1f}" if load else "-",
                    word,
                    text,
                ]
            )
        out.append(_indent(render([*head, "detail"], rows, markdown=False)))
        out.append("")
    return "\n".join(out)


def _noisy(a: dict[str, Any], key: str) -> str:
    if key not in a:
        return "-"
    return f"{fmt_time(a[key])} ±{a[f'{key}_spread'] * 100:.0f}%"


def _xs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# -- README and plot -------------------------------------------------------------------------
def machine_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    mode = "quick (`--quick`)" if report["quick"] else "full"
    names = ", ".join(sc["name"] for sc in report["scenarios"])
    return (
        f"{mode} run, {m['date']}, {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB, Python "
        f"{m['python']}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at end; {m['elapsed_s']} s in all. Scenarios: {names}."
    )


def load_warning(report: dict[str, Any]) -> str | None:
    """A warning when other processes used the machine during the run (figures unreliable)."""
    loads = [
        (max(a.get("foreign_cores_per_worker") or [0.0]), f"{LABELS[v]} in {sc['name']}")
        for sc in report["scenarios"]
        for v, a in sc["aggregates"].items()
    ]
    worst, where = max(loads, default=(0.0, ""))
    if worst <= 0.5:
        return None
    return (
        f"WARNING: other processes used up to {worst:.1f} cores of the machine during this run "
        f"(worst during {where}; the load column of the detail table): the walls, delays and "
        "ratios of the runs they overlapped are inflated; rerun on a quiet machine before "
        "trusting a verdict."
    )


def readme_section(report: dict[str, Any], plot: Path | None, readme: Path) -> str:
    parts = [BEGIN, "", machine_line(report), ""]
    warning = load_warning(report)
    if warning is not None:
        parts += [f"**{warning}**", ""]
    parts += [summary_table(report, markdown=True), ""]
    scaling = scaling_table(report, markdown=True)
    if scaling is not None:
        parts += ["Scaling (scenario 6), by number of concurrent streams:", "", scaling, ""]
        if plot is not None and plot.exists():
            rel = Path(_relative(plot, readme.parent))
            parts += [f"![CPU per chunk and p99 delay against concurrent streams]({rel})", ""]
    parts += ["Every variant's figures, as the bench printed them:", ""]
    for sc in report["scenarios"]:
        for v, (text, word) in sc["verdicts"].items():
            if text:
                parts.append(
                    f"* {sc['name']} / {LABELS[v]}: {text}"
                    + ("" if word == "-" else f" — **{word}**")
                )
    parts += ["", END]
    return "\n".join(parts)


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path.resolve())


def write_readme(report: dict[str, Any], readme: Path, plot: Path | None) -> None:
    """Replace the text between the result markers of ``readme`` (or append it)."""
    section = readme_section(report, plot, readme)
    text = readme.read_text() if readme.exists() else ""
    pattern = re.compile(re.escape(BEGIN.split(" (")[0]) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Latest numbers\n\n" + section + "\n"
    readme.write_text(text)


def write_plot(report: dict[str, Any], path: Path) -> bool:
    """``path``: CPU per chunk and p99 delay against streams, one line per variant (matplotlib,
    Agg). False (and a note) without matplotlib or scaling figures."""
    sc = next((s for s in report["scenarios"] if s["name"] == "scaling"), None)
    if sc is None or not sc["aggregates"]:
        print(f"no scaling figures: {path} not written")
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed (pip install -e '.[bench]'): {path} not written")
        return False
    fig, (cpu_ax, p99_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for v in VARIANTS:
        a = sc["aggregates"].get(v)
        if not a:
            continue
        sizes = sorted(a["sizes"])
        style = {"marker": "o", "label": LABELS[v], "linewidth": 2 if v == JUDGED else 1.2}
        cpu_ax.plot(sizes, [a["sizes"][n]["us_per_chunk"] for n in sizes], **style)
        p99_ax.plot(sizes, [a["sizes"][n]["p99_ms"] for n in sizes], **style)
    cpu_ax.set(
        xscale="log",
        xlabel="concurrent streams (20 chunks/s each)",
        ylabel="client CPU per chunk (µs)",
        title="CPU per chunk",
    )
    cpu_ax.set_ylim(bottom=0)
    p99_ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent streams (20 chunks/s each)",
        ylabel="p99 send → receive delay (ms)",
        title="p99 delay",
    )
    every = sorted({n for a in sc["aggregates"].values() for n in a.get("sizes", {})})
    for ax in (cpu_ax, p99_ax):
        ax.set_xticks(every, [f"{n:,}" for n in every])
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(machine_line(report).split(";")[0].replace("`", ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
