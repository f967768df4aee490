"""The main job: a private broker, the expert hub and the edge node, a replay, and the report.

    python -m evaluation demo [--frames 10000] [--pack packs/fashion-mnist] [--tau T] [--source SRC]

Starts Mosquitto on a free port (set_tcp_nodelay true), `expert-hub run` and `edge-node run`
as subprocesses with the pack, collects every final label, scores it against the truth, checks it
against Algorithm 1 computed offline with the same models (exactly, in this process), prints the
report and writes everything (report, plots, labels, logs) to runs/<timestamp>/. Every process it
started is stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from askexpert.lifecycle import capture_signals
from askexpert.localbroker import MOSQUITTO, free_port, wait_port, write_config
from askexpert.settings import CommonSettings
from askexpert.sources_spec import parse_source
from askexpert.subscriber import LabelSubscriber, wait_online
from evaluation import REFERENCE_PACK
from evaluation.results import RunScore

if TYPE_CHECKING:
    import numpy as np

    from askexpert.pack import Pack

console = Console(width=None if sys.stdout.isatty() else 110)
SUMMARY = "edge-summary.json"  # each replay's edge writes its summary here (edge-node --summary-json)
TRAIN_HINT = "trainer pack --dataset fashion-mnist --subsets 4 --k 2 --out packs/fashion-mnist"


class Stop(Exception):
    """SIGINT or SIGTERM: unwind so that every child is stopped."""


def interrupted() -> None:
    raise Stop()


class Children:
    """The processes this demo started; stop_all() ends each of them, by its own pid."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.run_dir = run_dir

    def start(self, name: str, argv: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
        log = open(log_path, "w")
        # own process group: a Ctrl-C in the terminal reaches only us; we stop the children in order
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append((name, proc))
        if self.run_dir is not None:  # for whoever must check that they are gone
            (self.run_dir / "pids.json").write_text(json.dumps({n: p.pid for n, p in self.procs}) + "\n")
        return proc

    def stop_all(self, timeout: float = 10.0) -> None:
        for name, proc in reversed(self.procs):  # edge, then hub, then broker
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    console.print(f"[yellow]{name} did not stop in {timeout:.0f} s; killing it")
                    proc.kill()
                    proc.wait()


def wait_hub(port: int, hub_id: str, timeout: float, children: Children) -> None:
    """Wait for the hub's retained `online` status; give up if any child died."""

    def alive() -> None:
        for name, p in children.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited early with code {p.returncode}")

    wait_online(CommonSettings(broker=f"mqtt://127.0.0.1:{port}"), "hub", hub_id, timeout=timeout, alive=alive)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="broker, hub and edge on this machine: replay, score, check against Algorithm 1 offline")
    p.add_argument("--frames", "-n", type=int, default=10000, help="frames to replay (default 10000: the whole test split)")
    p.add_argument("--pack", default=str(REFERENCE_PACK), help="model pack (default: the reference pack, packs/fashion-mnist)")
    p.add_argument("--source", default="dataset:fashion-mnist:test", help="edge source; truth from dataset:/replay: sources")
    p.add_argument("--tau", type=float, default=None, help="confidence threshold (default: the pack's)")
    p.add_argument("--taus", default=None, help="the sweep live: comma-separated taus, one replay each (hub stays up)")
    p.add_argument("--deadline-ms", type=float, default=1000.0)
    p.add_argument("--fps", type=float, default=None, help="pace the source (default: as fast as it goes)")
    p.add_argument(
        "--paced-fps",
        type=float,
        default=200.0,
        help="then a paced run at this rate, for latency (an as-fast-as-possible replay measures the queue); 0: none",
    )
    p.add_argument("--paced-frames", type=int, default=2000, help="frames of the paced run")
    p.add_argument("--backend", default="auto", help="auto (onnx on a CPU, torch on CUDA) | torch | onnx | tensorrt")
    p.add_argument("--runs", default="runs", help="parent folder of the run folder")
    p.add_argument(
        "--offline-check",
        choices=["auto", "exact", "stored", "none"],
        default="auto",
        help="compare with Algorithm 1 offline: exact (recompute with the same models here), stored "
        "(the pack's stored fp16 test logits: instant, may differ within fp16 noise of tau), "
        "auto (exact up to 10000 frames, else stored when the pack has them)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds of replay")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """The whole demo; every process it started is gone when it returns."""

    from askexpert.log import setup_logging
    from askexpert.pack import Pack, PackError

    setup_logging("error")  # the demo speaks through rich; the children log to their own files

    try:
        pack = Pack.load(a.pack)
    except PackError as exc:
        console.print(f"[red]The model pack is missing or unusable: {exc}")
        console.print(f"Train the reference pack first (CPU, hours):  [bold]{TRAIN_HINT}[/]\nor point --pack at another pack folder.")
        return 2
    if not Path(MOSQUITTO).exists():
        console.print("[red]Mosquitto is not installed: `make install` (or apt-get install mosquitto) first.")
        return 2
    taus = [float(t) for t in a.taus.split(",")] if a.taus else [pack.manifest.tau if a.tau is None else a.tau]
    run_dir = Path(a.runs) / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir.mkdir(parents=True, exist_ok=True)
    demo = Demo(a, pack, run_dir)
    console.print(
        f"[bold]Ask-the-Expert demo[/]: pack {a.pack} ({len(pack.manifest.experts)} experts, k={pack.manifest.k}, "
        f"served form {pack.resolve_form('auto')}), "
        f"tau {', '.join(f'{t:g}' for t in taus)}, {a.frames} frames of {a.source}, run folder {run_dir}"
    )
    with capture_signals(interrupted):  # Ctrl-C and SIGTERM unwind alike: every child is stopped
        try:
            demo.start(taus)
            reports = demo.replays(taus)
            console.print(f"whole demo {time.monotonic() - demo.t_start:.1f} s")
            console.print(f"\n[bold]Run folder:[/] {run_dir}")
            ok = all(not r.missing and r.duplicates == 0 for r in reports)
            return 0 if ok else 1
        except (KeyboardInterrupt, Stop):
            console.print("[yellow]interrupted: stopping everything this demo started")
            return 130
        except (RuntimeError, TimeoutError) as exc:
            console.print(f"[red]demo failed: {exc}[/]  (logs in {run_dir})")
            return 1
        finally:
            demo.stop()


@dataclass(frozen=True)
class Replay:
    """One pass of the frames through the running hub, at one tau, into its own folder."""

    tau: float
    node: str  # the edge's node id
    name: str  # the edge's name among the demo's processes (pids.json)
    out: Path
    frames: int
    fps: float | None


class Demo:
    """One demo run: the processes it started (stopped by stop(), whatever happens) and what every
    replay shares: the settings, the broker, the hub, the truth and the offline reference."""

    NODE, HUB = "demo-edge", "demo-hub"

    def __init__(self, a: argparse.Namespace, pack: Pack, run_dir: Path) -> None:
        self.a, self.pack, self.run_dir = a, pack, run_dir
        self.port = free_port()
        self.broker = f"mqtt://127.0.0.1:{self.port}"
        self.settings = CommonSettings(broker=self.broker)
        self.children = Children(run_dir)
        self.collectors: list[LabelSubscriber] = []  # open subscriptions, closed by stop() on any exit
        self.env = {**os.environ, "ATE_LOG_LEVEL": os.environ.get("ATE_LOG_LEVEL", "info"), "PYTHONUNBUFFERED": "1"}
        self.env.pop("ATE_CONFIG", None)
        self.py = [sys.executable, "-m"]
        self.common = ["--pack", str(a.pack), "--broker", self.broker, "--backend", a.backend, "--stats-interval-s", "0"]
        self.hub: subprocess.Popen | None = None
        self.truth: np.ndarray | None = None  # label by frame id
        self.classes: list[str] | None = None
        self.reference: Reference | None = None
        self.t_start = time.monotonic()

    def start(self, taus: list[float]) -> None:
        """The broker, then the hub (until it says `online`), then the truth for the source."""
        conf = write_config(self.run_dir / "mosquitto.conf", self.port, "log_type warning\nmax_queued_messages 100000")
        mosq = self.children.start("mosquitto", [MOSQUITTO, "-c", str(conf)], self.run_dir / "mosquitto.log")
        wait_port(self.port, proc=mosq)

        hub_argv = self.py + ["expert_hub.cli", "run", *self.common, "--hub-id", self.HUB]
        with console.status("starting the expert hub (loading experts)..."):
            self.hub = self.children.start("expert-hub", hub_argv, self.run_dir / "hub.log", self.env)
            wait_hub(self.port, self.HUB, 180, self.children)
        self.target(self.a.source, self.pack, taus)

    def target(self, source: str, pack: Pack, taus: list[float]) -> None:
        """What the next replays play (`source`) and are checked against: its truth, and Algorithm 1
        offline with `pack` (a round of on-site learning changes both between replays)."""
        from evaluation.score import load_truth

        self.a.source, self.pack = source, pack
        self.truth, self.classes = load_truth(source) if parse_source(source).has_truth else (None, None)
        self.reference = Reference(pack, self.a, taus, self.truth)

    def replays(self, taus: list[float]) -> list[RunScore]:
        """One replay per tau (and the live sweep table when several), then the paced one."""
        a, reports = self.a, []
        for i, tau in enumerate(taus):
            sweep = len(taus) > 1
            out = self.run_dir / f"tau-{tau:g}" if sweep else self.run_dir
            node, name = (f"{self.NODE}-{i}", f"edge-node@{tau:g}") if sweep else (self.NODE, "edge-node")
            rep = self.replay(Replay(tau=tau, node=node, name=name, out=out, frames=a.frames, fps=a.fps))
            rep.demo_wall_s = time.monotonic() - self.t_start
            rep.save(out)
            reports.append(rep)
        if len(taus) > 1:
            live_sweep_table(reports, self.run_dir)
        if a.paced_fps > 0 and not a.fps:  # latency at a rate the system keeps up with, reported on its own
            frames = min(a.paced_frames, a.frames)
            paced = Replay(
                tau=taus[0], node=f"{self.NODE}-paced", name="edge-node-paced", out=self.run_dir / "paced", frames=frames, fps=a.paced_fps
            )
            reports.append(self.replay(paced))
        return reports

    def replay(self, r: Replay) -> RunScore:
        """One replay through the running hub: collect, score, report into `r.out`."""
        r.out.mkdir(parents=True, exist_ok=True)
        collector = LabelSubscriber(self.settings, r.node).start()
        self.collectors.append(collector)
        t_edge = time.monotonic()
        edge = self.children.start(r.name, self._edge_argv(r), r.out / "edge.log", self.env)
        why = self._collect(r, collector, edge, t_edge)
        replay_s = time.monotonic() - t_edge
        try:
            edge.wait(15)
        except subprocess.TimeoutExpired:
            pass
        collector.stop()
        self.collectors.remove(collector)
        return self._report(r, collector, why, replay_s)

    def _edge_argv(self, r: Replay) -> list[str]:
        a = self.a
        argv = self.py + ["edge_node.cli", "run", *self.common, "--node-id", r.node, "--source", a.source, "--max-frames", str(r.frames)]
        argv += ["--tau", repr(r.tau), "--deadline-ms", repr(a.deadline_ms), "--summary-json", str(r.out / SUMMARY)]
        return argv + (["--fps", repr(r.fps)] if r.fps else [])

    def _collect(self, r: Replay, collector: LabelSubscriber, edge: subprocess.Popen, t_edge: float) -> str:
        """Labels until every frame has one, the edge ended (plus 3 s for its last labels), or a timeout."""
        hub = self.hub
        assert hub is not None
        exited_at: list[float] = []

        def stop_now() -> bool:
            if edge.poll() is not None and not exited_at:
                exited_at.append(time.monotonic())
            if hub.poll() is not None:
                raise RuntimeError(f"the expert hub died (code {hub.returncode}); see its hub.log")
            return bool(exited_at) and time.monotonic() - exited_at[0] > 3.0  # the edge ended: last labels, then stop

        with Progress(
            TextColumn(f"[bold]replay tau={r.tau:g}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as prog:
            task = prog.add_task("labels", total=r.frames, rate="")

            def progress(n: int) -> None:
                dt = time.monotonic() - t_edge
                prog.update(task, completed=n, rate=f"{n / dt:7.1f} frames/s" if dt > 0 else "")

            return collector.wait(r.frames, idle_timeout=60.0, timeout=self.a.timeout, progress=progress, stop=stop_now)

    def _report(self, r: Replay, collector: LabelSubscriber, why: str, replay_s: float) -> RunScore:
        """Score the labels against the truth and Algorithm 1 offline; write and print the report."""
        from evaluation.report import print_report, write_report
        from evaluation.score import score

        assert self.reference is not None
        labels = list(collector.labels)
        offline, offline_acc = self.reference.at(r.tau)
        n_expected = min(r.frames, len(self.truth)) if self.truth is not None else r.frames
        rep = score(
            labels,
            self.truth,
            expected=range(n_expected),
            classes=self.classes or self.pack.manifest.classes,
            offline=offline,
            wall_s=replay_s,
            malformed=collector.malformed,
        )
        meta = dict(
            tau=r.tau,
            pack=str(self.a.pack),
            pack_id=self.pack.pack_id,
            source=self.a.source,
            stopped=why,
            edge=_read_json(r.out / SUMMARY),
            offline_accuracy=offline_acc,
            offline_check=self.reference.mode,
            expert_form=self.pack.resolve_form("auto"),
            replay_s=replay_s,
            date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            machine=_machine(),
        )
        for k, v in meta.items():
            setattr(rep, k, v)
        pace = f"paced at {r.fps:g} frames/s" if r.fps else "as fast as possible (latency is mostly queueing)"
        title = f"Ask-the-Expert demo, tau {r.tau:g}, {rep.frames} frames, {pace}"
        write_report(rep, r.out, labels, title=title)
        console.print()
        print_report(rep, title=title, console=console)
        console.print(
            f"3H alone on these frames: {_pc(rep.edge_only_accuracy)}   system: {_pc(rep.accuracy)}   "
            f"alpha: {_pc(rep.alpha)}   replay {replay_s:.1f} s"
        )
        if rep.missing:
            console.print(f"[yellow]{rep.missing} frames got no label (see report.json)")
        return rep

    def stop(self) -> None:
        """Every subscription still open, then every process, edge first."""
        for c in list(self.collectors):
            try:
                c.stop()
            except Exception:  # already stopped
                pass
        self.children.stop_all()


class Reference:
    """Algorithm 1 offline on the demo's frames, for the live-vs-offline check at every tau."""

    def __init__(self, pack, a, taus: list[float], truth) -> None:
        self.pack, self.a, self.taus, self.truth = pack, a, taus, truth
        mode = a.offline_check
        if mode == "auto":
            mode = "exact" if a.frames <= 10000 else "stored"
        self.mode = "none" if truth is None else mode
        self._data = None

    def _load(self):
        if self._data is None and self.mode == "stored":
            self._data = stored_reference(self.pack, self.a.source, self.a.frames)
            if self._data is None:
                self.mode = "none"
        elif self._data is None and self.mode == "exact":
            with console.status("Algorithm 1 offline on the same frames, same models (exactness check)..."):
                # experts run only on the frames offloaded at the largest tau: a superset of the others
                self._data = exact_reference(self.pack, self.a.source, self.a.frames, max(self.taus), self.a.backend)
        return self._data

    def at(self, tau: float):
        """frame id -> offline label at tau, and the offline accuracy on those frames (or None, None)."""
        import numpy as np

        from askexpert.routing import offline_labels

        data = self._load() if self.mode != "none" else None
        if data is None:
            return None, None
        ids, decision, routed = data
        labels, _ = offline_labels(decision, routed, tau)
        y = np.asarray([self.truth[i] for i in ids])
        return {int(i): int(v) for i, v in zip(ids, labels)}, float((labels == y).mean())


def live_sweep_table(reports: list[RunScore], run_dir: Path) -> None:
    """The tau sweep live next to the same sweep offline: sweep.md in the run folder and a table."""
    from rich.table import Table

    rows = []
    for r in reports:
        o = r.offline
        rows.append(
            (
                f"{r.tau:g}",
                _pc(r.alpha),
                _pc(r.accuracy),
                _pc(r.offline_accuracy),
                _pc(r.edge_only_accuracy),
                f"{o.agree}/{o.compared}" if o else "-/-",
                str(r.fallbacks),
                f"{r.latency_ms.get('p50', float('nan')):.1f}",
                f"{r.latency_ms.get('p99', float('nan')):.1f}",
                f"{r.fps or 0:.1f}",
            )
        )
    head = ("tau", "alpha", "acc. live", "acc. offline", "3H alone", "= offline", "fallbacks", "p50 ms", "p99 ms", "fps")
    t = Table(title="tau sweep, live through the broker")
    for h in head:
        t.add_column(h, justify="right")
    for row in rows:
        t.add_row(*row)
    console.print(t)
    md = ["# tau sweep, live through the broker", "", "| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    (run_dir / "sweep-live.md").write_text("\n".join(md) + "\n")
    (run_dir / "sweep-live.json").write_text(
        json.dumps(
            [
                {
                    k: r.get(k)
                    for k in (
                        "tau",
                        "alpha",
                        "accuracy",
                        "offline_accuracy",
                        "edge_only_accuracy",
                        "offline",
                        "fallbacks",
                        "latency_ms",
                        "fps",
                    )
                }
                for r in reports
            ],
            indent=2,
            default=float,
        )
        + "\n"
    )


def exact_reference(pack, source: str, frames: int, tau_max: float, backend: str):
    """Algorithm 1's inputs computed here with the same models on the same frames (exact):
    frame ids, the edge decisions, and routed expert logits for frames offloaded at tau_max."""
    import numpy as np

    from askexpert.frames import fit_frame
    from askexpert.routing import decide
    from evaluation.logits import pack_logits
    from evaluation.score import truth_frames

    images, ids = [], []
    for fid, image in truth_frames(source, frames):
        images.append(fit_frame(image, pack.manifest.input))
        ids.append(fid)
    lg = pack_logits(pack, np.stack(images), backend=backend, baselines=False, tau=tau_max)
    return np.asarray(ids), decide(lg["edge"], pack.manifest.partition, pack.manifest.k), lg["routed"]


def stored_reference(pack, source: str, frames: int):
    """The same from the pack's stored fp16 test logits (instant; frames within fp16 noise of tau
    may differ from the live run): only for the pack's own test split."""
    import numpy as np

    from askexpert.routing import decide
    from evaluation.logits import scenarios_from_stored, served_label, stored_logits

    src = parse_source(source)
    if (src.kind, src.name, src.split) != ("dataset", pack.manifest.dataset, "test"):
        return None
    z = stored_logits(pack)
    if z is None:
        return None
    sc = scenarios_from_stored(pack, z)
    n = min(frames, len(sc["y"]))
    routed = sc["specialists"].get(served_label(pack))
    if routed is None:
        return None
    routed = routed[:n]
    return np.arange(n), decide(sc["edge_logits"][:n], pack.manifest.partition, pack.manifest.k), routed


def _read_json(path: Path) -> dict | None:
    """The edge's own summary file (`--summary-json`); None when it ended before writing one."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pc(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _machine() -> str:
    import platform

    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
