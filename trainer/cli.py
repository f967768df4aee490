"""`trainer`: train a model pack step by step, or all at once with `trainer pack`.

  trainer pack --dataset fashion-mnist --subsets 4 --k 2 --out packs/fashion-mnist
  trainer teacher|prune|baselines|partition|experts|report|export ... (same flags)
  trainer export-onnx --pack packs/fashion-mnist --onnx-out runs/onnx

Every step keeps its results in --work (default runs/<dataset>) and is skipped when they exist;
re-run the same command to resume after an interruption (fits resume after their last epoch).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from rich.console import Console

# The two reference recipes (`trainer pack --recipe cpu|gpu`); any flag given as well overrides them.
RECIPES: dict[str, dict] = {
    # The reference pack (make pack-cpu), within 2 h on 2 AVX-512/AMX cores. Head dim 16 at depth 3 is
    # the cheapest setting of the premise sweep (step premise) where 3H < 4H < 6H < 12H by >= 1 pt
    # each on validation; every difference from the paper's Table 6 is in docs/results/fashion-mnist.
    "cpu": dict(
        head_dim=16,
        depth=3,
        patch_size=7,
        teacher_shape="12H",
        epochs_teacher=20,
        epochs_distill=4,
        epochs_subset_teacher=2,
        epochs_expert=5,
        expert_seeds=3,
        busy_experts=3,
        batch_size=256,
        lr=1e-3,
        distill_lr=1e-3,
        subset_teacher_lr=2e-4,
        expert_lr=1e-3,
        warmup_epochs=0.5,
        expert_init="pruned-teacher",
        threads=2,
    ),
    # the paper's depth 12 on one GPU; the pack exceeds the repository's size limits (it stays in runs/)
    "gpu": dict(
        depth=12,
        patch_size=4,
        epochs_teacher=30,
        epochs_distill=30,
        epochs_subset_teacher=3,
        epochs_expert=3,
        expert_train_samples=20000,
        expert_seeds=3,
        batch_size=512,
        expert_lr=5e-4,
        device="cuda",
        no_size_limit=True,
    ),
}

STEPS = ["premise", "teacher", "prune", "baselines", "partition", "subset-teachers", "experts", "report", "export", "pack"]


def _common(p: argparse.ArgumentParser) -> None:
    from askexpert.models import SHAPES
    from trainer.pipeline import Config

    c = Config()
    a = p.add_argument
    a("--dataset", default=c.dataset, help="fashion-mnist | cifar100:PATH | folder:PATH")
    a("--work", default="", help="work folder (default runs/<dataset>)")
    a("--out", default="", help="pack folder (default packs/<dataset>)")
    a("--subsets", "-S", type=int, default=c.subsets)
    a("--k", type=int, default=c.k)
    a("--partition", choices=["superclass", "confusion"], default=c.partition)
    a("--teacher-recipe", choices=["shared", "per-subset"], default=c.teacher_recipe)
    a("--teacher-shape", default=c.teacher_shape, choices=sorted(SHAPES))
    a("--expert-shape", default=c.expert_shape, choices=["4H", "6H"], help="the experts' shape (the paper's Table 3 has both)")
    a("--head-dim", type=int, default=c.head_dim, help="every shape's head dim (the paper's DeiT: 64; 4H/16 = 4 heads of 16)")
    a("--depth", type=int, default=c.depth, help="ViT depth (the paper: 12)")
    a("--patch-size", type=int, default=c.patch_size, help="0: chosen from the image size (7 for 28, 4 for 32)")
    a("--tail-blocks", type=int, default=c.tail_blocks, help="blocks each expert owns on top of the shared trunk")
    a("--epochs-teacher", type=int, default=c.epochs_teacher)
    a("--epochs-distill", type=int, default=c.epochs_distill)
    a("--epochs-expert", type=int, default=c.epochs_expert)
    a("--epochs-subset-teacher", type=int, default=c.epochs_subset_teacher)
    a("--epochs", type=int, default=0, help="set all epoch counts at once")
    a("--batch-size", type=int, default=c.batch_size)
    a("--lr", type=float, default=c.lr)
    a("--distill-lr", type=float, default=c.distill_lr)
    a("--subset-teacher-lr", type=float, default=c.subset_teacher_lr)
    a("--expert-lr", type=float, default=c.expert_lr)
    a("--warmup-epochs", type=float, default=c.warmup_epochs, help="linear LR warm-up of every fit, in epochs")
    a("--clip-grad", type=float, default=c.clip_grad, help="gradient-norm clipping of every fit (0: none)")
    a("--max-weight", "-W", type=float, default=c.max_weight, help="W in eq. 1")
    a("--omega-schedule", choices=["step", "epoch"], default=c.omega_schedule)
    a("--max-train-samples", type=int, default=0, help="use at most this many training images (0: all)")
    a("--expert-train-samples", type=int, default=0, help="train experts on at most this many (0: all)")
    a("--max-test-samples", type=int, default=0, help="smoke tests only: evaluate on part of the test split")
    a("--max-val-samples", type=int, default=0, help="smoke tests only: a smaller validation split")
    a(
        "--expert-init",
        choices=["pruned-teacher", "generalist"],
        default=c.expert_init,
        help="pruned-teacher: M_I pruned to the expert shape (the paper); generalist: start from the 4H generalist",
    )
    a("--expert-seeds", type=int, default=c.expert_seeds, help="seeds of every expert and its static/uniform controls")
    a("--busy-experts", type=int, default=c.busy_experts, help="N > 0: only the N busiest experts get --expert-seeds seeds, the rest 1")
    a("--premise-grid", type=lambda v: [x for x in v.split(",") if x], default=c.premise_grid, help="premise sweep: HDxDEPTH[@LR],...")
    a("--premise-epochs", type=int, default=c.premise_epochs)
    a("--no-compact-experts", action="store_true", help="skip the compact (tail on shared trunk) experts")
    a(
        "--tau-tolerance",
        type=float,
        default=c.tau_tolerance,
        help="default tau: the lowest whose validation accuracy is within this many points of the best",
    )
    a("--importance-batches", type=int, default=c.importance_batches)
    a("--val-fraction", type=float, default=c.val_fraction)
    a("--tau", type=float, default=None, help="default tau written to the manifest (default: chosen on validation)")
    a("--no-augment", action="store_true")
    a("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: data on the GPU, bf16 autocast")
    a("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a("--seed", type=int, default=0)
    a("--onnx", default="", help="with pack/export: also export ONNX into this folder and check parity")
    a("--name", default="")
    a("--recipe", choices=sorted(RECIPES), default="", help="a reference recipe's settings as defaults (cpu | gpu)")
    a("--no-size-limit", action="store_true", help="allow a pack over the repository's limits (32 MiB a file, 128 MiB)")
    a("--device-note", default="", help="appended to the device recorded in the manifest (e.g. 'shared with other jobs')")
    a("--as-command", default="", help=argparse.SUPPRESS)  # re-export: the pack command that trained --work


def config_from(ns: argparse.Namespace):
    from trainer.pipeline import Config

    kw = {k: v for k, v in vars(ns).items() if k in Config.__dataclass_fields__}
    if ns.epochs:
        for k in ("epochs_teacher", "epochs_distill", "epochs_expert", "epochs_subset_teacher"):
            kw[k] = ns.epochs
    kw["augment"] = not ns.no_augment
    kw["compact_experts"] = not ns.no_compact_experts
    return Config(**kw)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with a --recipe's values as defaults that explicit flags override."""
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for s in STEPS:
        _common(sub.add_parser(s, help=f"run the {s} step (and the steps it needs)"))
    ox = sub.add_parser("export-onnx", help="ONNX for every model of a pack, checked with onnxruntime")
    ox.add_argument("--pack", required=True)
    ox.add_argument("--onnx-out", required=True)
    ns = parser.parse_args(argv)
    if getattr(ns, "recipe", ""):  # parse again with the recipe as defaults, so explicit flags win
        sub.choices[ns.cmd].set_defaults(**RECIPES[ns.recipe])
        ns = parser.parse_args(argv)
        if not ns.work:
            ns.work = f"runs/{ns.dataset.replace(':', '-').replace('/', '_')}-{ns.recipe}"
    return ns


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parse_args(argv)
    console = Console(stderr=True)
    log = console.log
    if ns.cmd == "export-onnx":
        from trainer.onnx_export import export_pack_onnx

        diffs = export_pack_onnx(ns.pack, ns.onnx_out)
        log(f"ONNX parity (max abs diff): {max(diffs.values()):.2e} over {len(diffs)} models -> {ns.onnx_out}")
        return 0
    from trainer.pipeline import Run

    t0 = time.time()
    cfg = config_from(ns)
    run = Run(cfg, log=log)
    if ns.cmd in ("premise", "teacher", "prune", "baselines", "partition", "subset-teachers", "experts", "report"):
        getattr(run, f"step_{ns.cmd.replace('-', '_')}")()
        if ns.cmd == "report":
            print(run.info("report")["markdown"])
        return 0
    # pack / export: every step, then the pack
    from trainer.assemble import assemble, check_sizes

    prev = _previous_wall(run)
    for step in ("premise", "teacher", "prune", "baselines", "partition", "subset_teachers", "experts", "report"):
        getattr(run, f"step_{step}")()
        _save_wall(run, prev + time.time() - t0)
    wall = time.time() - t0 + prev
    command = ns.as_command or "trainer " + shlex.join(argv)
    out = assemble(
        run,
        command,
        wall,
        device_note=ns.device_note,
        size_limit=not ns.no_size_limit,
        exported_by=("trainer " + shlex.join(argv)) if ns.as_command else "",
    )
    sizes = check_sizes(out, limited=not ns.no_size_limit)
    log(f"pack written to {out}: {sizes['total_mib']} MiB in {len(sizes['files'])} files")
    print(run.info("report")["markdown"])
    if cfg.onnx:
        from trainer.onnx_export import export_pack_onnx

        diffs = export_pack_onnx(out, cfg.onnx)
        log(f"ONNX parity (max abs diff): {max(diffs.values()):.2e} over {len(diffs)} models -> {cfg.onnx}")
    return 0


def _previous_wall(run) -> float:
    """Wall time spent on this work folder by earlier (interrupted) invocations, up to their last step."""
    info = run.info("wall")
    return float(info["wall_s"]) if info else 0.0


def _save_wall(run, wall_s: float) -> None:
    run.set_info("wall", {"wall_s": round(wall_s, 1)})


if __name__ == "__main__":
    raise SystemExit(main())
