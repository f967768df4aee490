"""Performance at the limit of this machine: the measurements of issue 11 side by side, in one run.

Runs the other bench scripts one after another (each its own process: thread settings are
per process), then prints one JSON line: every script's result, and a `targets` table (what was
measured against what was asked, and whether it was met). About 20 minutes on 2 cores; run it on
a quiet machine (nothing else training or testing), as the numbers are speeds.

    python bench/limits.py [--pack packs/fashion-mnist] [--quick] [--md docs/results/limits.md]

- raw loops: torch fp32 at the library's old default (every core, batch 32) is the reference;
  the fast paths (torch bf16, ONNX Runtime int8) run on every core at batch 64, with top-1
  agreement with fp32 on the whole test split (bench/precision.py);
- the edge pipeline against its raw loop at the same backend, precision, threads and batch
  (bench/edge_throughput.py);
- the expert hub against its raw expert loop, fed batched messages (as replay-rate edges send
  them) and single-frame messages (as cameras do), with its CPU per frame outside inference
  (bench/hub_throughput.py);
- a camera fleet at 30 frames/s each to one hub: the largest fleet it holds with every offload
  answered in time and p99 <= 100 ms, and 1.5x that fleet (bench/cameras.py);
- the offload round trip beyond the expert's own inference (bench/offload_rtt.py);
- paced latency at 200 frames/s, tau 0.8, broker + hub + edge on this machine: the old defaults
  (torch, every core in each process) and the new ones (auto backend, half the cores each)
  (bench/paced_latency.py);
- a fleet at twice what its hub answers, fixed and adaptive tau (bench/overload.py; the hub is
  slowed to 10 ms per frame so that its capacity is known and the edges here can outrun it).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from askexpert.hardware import cpu_name

HERE = Path(__file__).parent
# the hub's CPU per frame outside inference with protocol v1 (one frame a message, v5 properties),
# bench/hub_throughput.py's method on main 82a4e78, this machine (Intel Xeon with AMX, 2 cores)
V1_OUTSIDE_INFERENCE_US = 237.3


def bench(script: str, *args: str) -> dict:
    """Run one bench script; its last stdout line is its JSON result."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{script} {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    print(f"{script} {' '.join(args)}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return json.loads(lines[-1])


def target(name: str, measured: float, op: str, wanted: float, **context: object) -> dict:
    met = measured >= wanted if op == ">=" else measured <= wanted
    return {"target": name, "measured": measured, "wanted": f"{op} {wanted:g}", "met": met, **context}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--quick", action="store_true", help="fewer frames and repeats: a smoke run, not numbers to quote")
    ap.add_argument("--md", type=Path, default=None, help="also write the targets as markdown here (and the JSON beside it)")
    a = ap.parse_args()
    pk = ["--pack", a.pack]
    frames, repeats, paced = ("2000", "1", "400") if a.quick else ("10000", "3", "2000")
    r: dict = {}
    r["precision_torch"] = bench("precision.py", *pk, "--frames", frames, "--threads", "2", "--batch", "64")
    r["precision_onnx"] = bench("precision.py", *pk, "--frames", frames, "--threads", "2", "--backend", "onnx", "--batch", "64")
    common = [*pk, "--frames", frames, "--repeats", repeats]
    r["edge_torch"] = bench("edge_throughput.py", *common, "--threads", "2", "--batch", "32", "--precisions", "fp32,bf16")
    r["edge_onnx"] = bench(
        "edge_throughput.py", *common, "--threads", "1", "--batch", "64", "--backend", "onnx", "--precisions", "fp32,int8"
    )
    r["hub"] = bench("hub_throughput.py", *pk, "--frames", "2000" if a.quick else "10000", "--repeats", repeats)
    fleets = "100,200" if a.quick else "100,150,200,250,300"
    r["cameras"] = bench("cameras.py", *pk, "--cameras", fleets, "--seconds", "4" if a.quick else "8", "--find-max")
    r["rtt_torch"] = bench("offload_rtt.py", *pk, "--backend", "torch", "--threads", "2")
    r["rtt_auto"] = bench("offload_rtt.py", *pk, "--backend", "auto")
    pace = [*pk, "--fps", "200", "--frames", paced, "--tau", "0.8"]
    r["paced_old_defaults"] = bench("paced_latency.py", *pace, "--backend", "torch", "--edge-threads", "2", "--hub-threads", "2")
    r["paced_defaults"] = bench("paced_latency.py", *pace, "--backend", "auto")
    # a hub slowed to 10 ms per frame (bench/slow_hub.py): a known capacity that edges on this box can outrun
    ovl = ["--frames", "1000" if a.quick else "6000", "--calibrate-frames", "1500", "--expert-ms", "10"]
    r["overload"] = bench("overload.py", *pk, *ovl, "--edges", "2")

    today = r["edge_torch"]["fp32"]["raw_fps"]  # torch fp32, every core, batch 32: the reference
    t = []
    for name, res, prec in (("torch bf16", r["precision_torch"], "bf16"), ("onnx int8", r["precision_onnx"], "int8")):
        fast = res["generalist"][prec]["img_s"]
        t.append(target(f"raw loop through the fast path ({name}) vs today's fp32", round(fast / today, 2), ">=", 1.8, img_s=fast))
        for model in ("generalist", "experts"):
            t.append(target(f"top-1 agreement with fp32, {name}, {model}", res[model][prec]["agreement_with_fp32_pct"], ">=", 99.5))
    for key in ("edge_torch", "edge_onnx"):
        res = r[key]
        for prec in res["precisions"]:
            ctx = {"backend": res["backend"], "threads": res["threads"], "batch": res["batch"]}
            t.append(target(f"edge pipeline vs raw loop, {res['backend']} {prec}", res[prec]["pipeline_vs_raw"], ">=", 0.95, **ctx))
    for key in ("rtt_torch", "rtt_auto"):
        t.append(
            target(f"offload round trip beyond inference, p50 ms ({r[key]['backend']})", r[key]["beyond_inference_ms"]["p50"], "<=", 2.0)
        )
    for key in ("paced_old_defaults", "paced_defaults"):
        by = r[key]["by_source"]
        t.append(
            target(
                f"paced 200/s tau 0.8, expert labels p99 ms ({key})", by.get("expert", {}).get("latency_ms", {}).get("p99", 0.0), "<=", 30.0
            )
        )
        t.append(target(f"paced 200/s tau 0.8, edge labels p99 ms ({key})", by["edge"]["latency_ms"]["p99"], "<=", 10.0))
    hub = r["hub"]
    t.append(target("hub vs its raw expert loop, batched messages", hub["batched"]["hub_vs_raw"], ">=", 0.8))
    t.append(target("hub vs its raw expert loop, single-frame messages", hub["single"]["hub_vs_raw"], ">=", 0.5))
    t.append(
        target(
            "hub CPU us per frame outside inference, single-frame messages",
            hub["single"]["cpu_us_per_frame"]["hub_outside_inference"],
            "<=",
            round(V1_OUTSIDE_INFERENCE_US / 3, 1),
            protocol_v1=V1_OUTSIDE_INFERENCE_US,
        )
    )
    cams = r["cameras"]
    held = {run["cameras"]: run for run in cams["runs"]}.get(200)
    t.append(target("cameras at 30/s held by one hub (all in time, p99 <= 100 ms)", cams.get("largest_held") or 0, ">=", 200))
    if held is not None:
        t.append(
            target(
                "200 cameras: offload round trip p99 ms",
                held["p99_ms"] or math.inf,
                "<=",
                100.0,
                answered=held["answered_in_time"],
                sent=held["sent"],
            )
        )
    if "in_time_1_5x_vs_max" in cams:
        t.append(target("1.5x the largest fleet: answered in time vs at the largest", cams["in_time_1_5x_vs_max"], ">=", 0.9))
    ovl = r["overload"]
    t.append(
        target(
            "overload 2x, adaptive tau: fallbacks % of frames",
            ovl["adaptive"]["fallback_pct"],
            "<=",
            1.0,
            fixed_tau_fallback_pct=ovl["fixed"]["fallback_pct"],
            fixed_tau_fallbacks=ovl["fixed"]["sources"].get("edge-fallback", 0),
        )
    )
    out = {"bench": "limits", "quick": a.quick, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name()}
    out["today_fp32_raw_fps"] = today
    out |= {"targets": t, "results": r}
    if a.md:
        a.md.write_text(markdown(out))
        a.md.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


def markdown(out: dict) -> str:
    """The targets as a table, with the context each was measured in."""
    rows = ["| target | measured | wanted | met |", "| --- | --- | --- | --- |"]
    for t in out["targets"]:
        extra = {k: v for k, v in t.items() if k not in ("target", "measured", "wanted", "met")}
        note = f" ({', '.join(f'{k} {v}' for k, v in extra.items())})" if extra else ""
        rows.append(f"| {t['target']}{note} | {t['measured']} | {t['wanted']} | {'yes' if t['met'] else '**no**'} |")
    head = [
        f"# Performance at the limit of this machine ({out['date']})",
        "",
        f"`python bench/limits.py --md docs/results/limits.md` on {out['cpu']},",
        f"nothing else running. Today's fp32 reference: {out['today_fp32_raw_fps']} frames/s",
        "(torch fp32 generalist, every core, batch 32). Every script's full result is in `limits.json`.",
        "",
    ]
    return "\n".join(head + rows) + "\n"


if __name__ == "__main__":
    main()
