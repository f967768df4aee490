"""Two runs side by side: what changed between them, as one markdown table.

    python -m evaluation compare RUN_A RUN_B [--names A,B] [--out compare.md]

A run is the scorer's report.json or a folder holding one (`score`, `demo`). Rows: accuracy overall
and by label source, the edge model alone, alpha, latency percentiles overall and by source,
frames per second, fallbacks, missing and duplicate labels, and the load and accuracy per expert.
The last column is B - A where both have a number (percentage points for fractions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from askexpert.protocol import LABEL_SOURCES
from evaluation.report import PCTS
from evaluation.results import ExpertLoad, RunScore, SourceScore

Row = tuple[str, float | None, float | None, str]  # name, value in A, value in B, kind (% / ms / n)


def rows(a: RunScore, b: RunScore) -> list[Row]:
    """The comparable numbers of two reports, in reading order; a row that neither run has is left out."""

    def both(name: str, get: Callable[[RunScore], float | None], kind: str) -> Row:
        return name, get(a), get(b), kind

    def of_source(r: RunScore, src: str, name: str, pct: int | None = None) -> float | None:
        """A number of one label source (a latency percentile with `pct`); None where the run has no such source."""
        s: SourceScore | None = r.by_source.get(src)
        if s is None:
            return None
        return s.latency_ms.get(f"p{pct}") if pct else getattr(s, name)

    out = [
        both("frames labelled", lambda r: r.frames, "n"),
        both("accuracy (system)", lambda r: r.accuracy, "%"),
        both("accuracy, edge model alone", lambda r: r.edge_only_accuracy, "%"),
        both("offload proportion alpha", lambda r: r.alpha, "%"),
    ]
    sources = list(LABEL_SOURCES) + sorted((set(a.by_source) | set(b.by_source)) - set(LABEL_SOURCES))
    for src in sources:
        out.append(both(f"share {src}", lambda r, s=src: of_source(r, s, "share"), "%"))
        out.append(both(f"accuracy {src}", lambda r, s=src: of_source(r, s, "accuracy"), "%"))
    for p in PCTS:
        out.append(both(f"latency p{p} (ms)", lambda r, p=p: r.latency_ms.get(f"p{p}"), "ms"))
    for src in sources:
        for p in PCTS:
            out.append(both(f"latency p{p} {src} (ms)", lambda r, s=src, p=p: of_source(r, s, "latency_ms", p), "ms"))
    out += [
        both("frames per second", lambda r: r.fps, "n"),
        both("fallbacks (deadline)", lambda r: r.fallbacks, "n"),
        both("missing", lambda r: r.missing, "n"),
        both("duplicates", lambda r: r.duplicates, "n"),
    ]
    experts = sorted(set(a.expert_load) | set(b.expert_load), key=lambda k: (len(k), k))
    for key in experts:
        out.append(both(f"expert {key}: offloaded", lambda r, k=key: r.expert_load.get(k, ExpertLoad()).offloaded, "n"))
        out.append(both(f"expert {key}: accuracy", lambda r, k=key: r.expert_load.get(k, ExpertLoad()).accuracy, "%"))
    return [r for r in out if r[1] is not None or r[2] is not None]


def _fmt(v: float | None, kind: str) -> str:
    if v is None or v != v:
        return "-"
    if kind == "%":
        return f"{100 * v:.2f}%"
    if kind == "ms":
        return f"{v:.1f}"
    return f"{v:g}" if isinstance(v, int) or float(v).is_integer() else f"{v:.1f}"


def _delta(a: float | None, b: float | None, kind: str) -> str:
    if a is None or b is None or a != a or b != b:
        return "-"
    d = b - a
    if kind == "%":
        return f"{100 * d:+.2f} pp"
    return f"{d:+.1f}" if kind == "ms" or not float(d).is_integer() else f"{d:+g}"


def to_markdown(a: RunScore, b: RunScore, names: tuple[str, str] = ("A", "B")) -> str:
    """The comparison table, with what each run was (tau, source, pack) above it."""
    lines = [f"# {names[0]} vs {names[1]}", ""]
    for name, r in zip(names, (a, b)):
        what = ", ".join(f"{k} {v}" for k in ("tau", "source", "pack", "date") if (v := getattr(r, k)) is not None)
        lines.append(f"- {name}: {what or 'no run metadata'}")
    lines += ["", f"| metric | {names[0]} | {names[1]} | {names[1]} - {names[0]} |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {_fmt(x, k)} | {_fmt(y, k)} | {_delta(x, y, k)} |" for n, x, y, k in rows(a, b)]
    return "\n".join(lines) + "\n"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two runs' reports side by side, as a markdown table")
    p.add_argument("a", help="report.json, or a run folder holding one")
    p.add_argument("b", help="the other run")
    p.add_argument("--names", default=None, help="column names, comma-separated (default: the two paths)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print (and write) the comparison."""
    names = tuple(args.names.split(",", 1)) if args.names else (str(args.a), str(args.b))
    if len(names) != 2:
        print(f"error: --names needs two names, comma-separated (got {args.names!r})", file=sys.stderr)
        return 2
    md = to_markdown(RunScore.load(args.a), RunScore.load(args.b), names)
    print(md, end="")
    if args.out:
        Path(args.out).write_text(md)
    return 0
