"""A scored run as people read it: a terminal table, report.json, report.md and PNG plots.

Shared by `score`, `demo` and `compare` so that every report has the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from askexpert.protocol import LabelMsg
from evaluation.results import RunScore

PCTS = (50, 95, 99)


def _p(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or v != v else f"{100 * v:.{digits}f}%"


def _pt(a: float | None, b: float | None) -> str:
    """The difference of two accuracies (fractions) in percentage points."""
    return "-" if a is None or b is None or a != a or b != b else f"{100 * (a - b):+.2f} pt"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def summary_rows(rep: RunScore) -> list[tuple[str, str]]:
    lat = rep.latency_ms
    rows = [
        ("frames labelled", f"{rep.frames}" + (f" of {rep.expected}" if rep.expected is not None else "")),
        ("accuracy (system)", _p(rep.accuracy)),
        ("accuracy, edge model alone (same frames)", _p(rep.edge_only_accuracy)),
        ("gain from asking the experts", _pt(rep.accuracy, rep.edge_only_accuracy)),
        ("offload proportion alpha", _p(rep.alpha)),
        ("latency p50 / p95 / p99 (ms)", " / ".join(_ms(lat.get(f"p{p}")) for p in PCTS)),
        ("frames per second", "-" if not rep.fps else f"{rep.fps:.1f}"),
        ("fallbacks (deadline)", str(rep.fallbacks)),
        ("missing / duplicate / malformed", f"{'-' if rep.missing is None else rep.missing} / {rep.duplicates} / {rep.malformed}"),
        ("expert labels per hub", ", ".join(f"{hub} {n}" for hub, n in rep.by_hub.items()) or "-"),
    ]
    if rep.tau is not None:
        rows.insert(0, ("tau", f"{rep.tau:g}"))
    if rep.expert_form is not None:
        rows.insert(1, ("experts served", rep.expert_form))
    if (o := rep.offline) is not None:
        how = f" ({rep.offline_check})" if rep.offline_check else ""
        verdict = "yes" if o.equal else ("differs within fp16 noise" if rep.offline_check == "stored" else "NO")
        rows.append((f"equal to offline Algorithm 1{how}", f"{o.agree}/{o.compared} {verdict}"))
    if rep.offline_accuracy is not None:
        rows.append(("offline sweep accuracy, same tau", _p(rep.offline_accuracy)))
    return rows


def breakdown_rows(rep: RunScore) -> list[tuple[str, str, str, str]]:
    """(source, part, p50, p99) for every part of latency the labels carried (LabelMsg.wait_ms ...)."""
    return [
        (src, part.removesuffix("_ms").replace("_", " "), _ms(s.get("p50")), _ms(s.get("p99")))
        for src, r in rep.by_source.items()
        for part, s in r.latency_parts_ms.items()
    ]


def print_report(rep: RunScore, title: str = "Ask-the-Expert run", console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=title, show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    for k, v in summary_rows(rep):
        t.add_row(k, v)
    console.print(t)
    s = Table(title="by label source")
    for col in ("source", "frames", "share", "accuracy", "p50 ms", "p95 ms", "p99 ms"):
        s.add_column(col, justify="right")
    for src, r in rep.by_source.items():
        lat = r.latency_ms
        s.add_row(src, str(r.frames), _p(r.share, 1), _p(r.accuracy), _ms(lat.get("p50")), _ms(lat.get("p95")), _ms(lat.get("p99")))
    console.print(s)
    if rows := breakdown_rows(rep):
        b = Table(title="where the latency went (ms)")
        for col in ("source", "part", "p50", "p99"):
            b.add_column(col, justify="right")
        for row in rows:
            b.add_row(*row)
        console.print(b)
    if rep.expert_load:
        e = Table(title="load per expert")
        for col in ("expert", "offloaded", "answered", "fallback", "accuracy"):
            e.add_column(col, justify="right")
        for key, r in rep.expert_load.items():
            e.add_row(key, str(r.offloaded), str(r.answered), str(r.fallback), _p(r.accuracy))
        console.print(e)


def to_markdown(rep: RunScore, title: str = "Ask-the-Expert run") -> str:
    L = [f"# {title}", "", "| metric | value |", "| --- | --- |"]
    L += [f"| {k} | {v} |" for k, v in summary_rows(rep)]
    L += [
        "",
        "## By label source",
        "",
        "| source | frames | share | accuracy | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for src, r in rep.by_source.items():
        lat = r.latency_ms
        L.append(
            f"| {src} | {r.frames} | {_p(r.share, 1)} | {_p(r.accuracy)} | {_ms(lat.get('p50'))} | {_ms(lat.get('p95'))} | {_ms(lat.get('p99'))} |"
        )
    if rows := breakdown_rows(rep):
        L += ["", "## Where the latency went (ms)", "", "| source | part | p50 | p99 |", "| --- | --- | --- | --- |"]
        L += [f"| {' | '.join(row)} |" for row in rows]
    if rep.expert_load:
        L += ["", "## Load per expert", "", "| expert | offloaded | answered | fallback | accuracy |", "| --- | --- | --- | --- | --- |"]
        for key, r in rep.expert_load.items():
            L.append(f"| {key} | {r.offloaded} | {r.answered} | {r.fallback} | {_p(r.accuracy)} |")
    if rep.per_class:
        L += ["", "## Per class", "", "| class | frames | accuracy |", "| --- | --- | --- |"]
        L += [f"| {c} | {r.n} | {_p(r.accuracy)} |" for c, r in rep.per_class.items()]
    return "\n".join(L) + "\n"


def write_report(rep: RunScore, out_dir: str | Path, labels: Sequence[LabelMsg] | None = None, title: str = "Ask-the-Expert run") -> Path:
    """report.json, report.md, and (with the labels) labels.jsonl, latency.png, load.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep.save(out)
    (out / "report.md").write_text(to_markdown(rep, title))
    if labels:
        with open(out / "labels.jsonl", "w") as f:
            for m in labels:
                f.write(m.encode().decode() + "\n")
        plot_report(rep, labels, out)
    return out


def plot_report(rep: RunScore, labels: Sequence[LabelMsg], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"edge": "tab:blue", "expert": "tab:orange", "edge-fallback": "tab:red"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for src, c in colours.items():
        v = [m.latency_ms for m in labels if m.source == src]
        if v:
            a.hist(v, bins=60, alpha=0.6, color=c, label=f"{src} ({len(v)})", log=True)
            b.scatter([m.frame_id for m in labels if m.source == src], v, s=2, color=c, label=src)
    lat = rep.latency_ms
    for p, ls in zip(PCTS, (":", "--", "-")):
        if f"p{p}" in lat:
            a.axvline(lat[f"p{p}"], color="k", ls=ls, lw=0.8, label=f"p{p} {lat[f'p{p}']:.1f} ms")
    a.set_xlabel("capture -> final label (ms)")
    a.set_ylabel("frames")
    a.set_title("latency by label source")
    a.legend(fontsize=7)
    b.set_xlabel("frame id")
    b.set_ylabel("latency (ms)")
    b.set_yscale("log")
    b.set_title("latency over the run")
    b.legend(fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    load = rep.expert_load
    if load:
        a.bar(list(load), [r.answered for r in load.values()], color="tab:orange", label="answered")
        a.bar(
            list(load),
            [r.fallback for r in load.values()],
            bottom=[r.answered for r in load.values()],
            color="tab:red",
            label="fallback",
        )
        a.legend(fontsize=7)
    a.set_title(f"load per expert (alpha = {_p(rep.alpha, 1)})")
    a.set_xlabel("expert (subset indices)")
    a.set_ylabel("frames")
    names = ["system", "edge alone"] + [s for s, r in rep.by_source.items() if r.accuracy is not None]
    vals = [rep.accuracy, rep.edge_only_accuracy] + [rep.by_source[s].accuracy for s in names[2:]]
    b.bar(names, [100 * (v or 0) for v in vals], color=["tab:green", "tab:grey"] + [colours.get(s, "tab:purple") for s in names[2:]])
    for i, v in enumerate(vals):
        b.text(i, 100 * (v or 0), _p(v), ha="center", va="bottom", fontsize=8)
    b.set_ylim(0, 105)
    b.set_ylabel("accuracy (%)")
    b.set_title("accuracy (by label source: on those frames)")
    fig.tight_layout()
    fig.savefig(out / "load.png", dpi=110)
    plt.close(fig)
