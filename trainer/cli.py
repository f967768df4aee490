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
import typing

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

# The paper's Table 6 (fine-tuning DeiT-Base on CIFAR-100) and each recipe's differences from it, with
# the reason: written into the pack's record (manifest training.table6).
TABLE6 = {
    "epochs": 200,
    "start": "ImageNet-pretrained DeiT-Base for every teacher",
    "batch": 256,
    "lr": {"teachers": 1e-4, "students": 8e-5},
    "warmup_epochs": 5,
    "clip_grad": {"students": 1.0},
    "W": 14,
    "k": 2,
    "distillation": "hard",
}
DEVIATIONS: dict[str, dict[str, str]] = {
    "cpu": {
        "epochs": "teacher 20, students 4, M_I 2, experts 5: 2 cores and a 2 h budget; the teacher gets 5x its students' epochs so "
        "it stays the strongest model (with 10 the 6H student reached the teacher on validation: 88.18 against 88.35)",
        "start": "M_D from scratch (no pretrained weights at head dim 16; nothing is downloaded); every M_I starts from M_D",
        "lr": "M_D, students and experts 1e-3: from scratch, and pruned models re-learn most weights; the premise sweep's 12H is "
        "strongest at 1e-3 on validation (85.18 against 84.78 at 5e-4, 84.47 at 2e-3); M_I 2e-4: it fine-tunes a trained model",
        "warmup_epochs": "0.5 for every fit: 2.5% of the 20-epoch teacher, as 5 of 200; longer warm-ups take most of a short fit",
        "clip_grad": "1.0 for every fit, teachers too: one rule",
    },
}


# Help, choices and short names of the trainer's settings; their names, types and defaults come from
# `trainer.pipeline.Config`, so a new setting is a new field there (and a line here).
HELP: dict[str, str] = {
    "dataset": "fashion-mnist | cifar100:PATH | folder:PATH",
    "work": "work folder (default runs/<dataset>)",
    "out": "pack folder (default packs/<dataset>)",
    "partition": "superclass: the data set's groups (or the garment groups of Fashion-MNIST); confusion: from the 3H's confusions",
    "teacher_recipe": "per-subset: a teacher M_I per expert (the paper's); shared: M_D's labels for every expert",
    "expert_shape": "the experts' shape (the paper's Table 3 has 4H and 6H)",
    "baseline_shapes": "same-size generalists of the controls, comma-separated",
    "head_dim": "every shape's head dim (the paper's DeiT: 64; 4H/16 = 4 heads of 16)",
    "depth": "ViT depth (the paper: 12)",
    "patch_size": "0: chosen from the image size (7 for 28, 4 for 32)",
    "tail_blocks": "blocks each compact expert owns on top of the shared trunk",
    "subset_teacher_lr": "LR of the subset teachers M_I (fine-tuned from M_D)",
    "warmup_epochs": "linear LR warm-up of every fit, in epochs",
    "clip_grad": "gradient-norm clipping of every fit (0: none)",
    "max_weight": "W in eq. 1",
    "max_train_samples": "use at most this many training images (0: all)",
    "expert_train_samples": "train subset teachers and experts on at most this many (0: all)",
    "max_test_samples": "smoke tests only: evaluate on part of the test split",
    "max_val_samples": "smoke tests only: a smaller validation split",
    "expert_init": "pruned-teacher: M_I pruned to the expert shape (the paper); generalist: start from the 4H generalist",
    "expert_seeds": "seeds of every expert and its static/uniform controls",
    "busy_experts": "N > 0: only the N busiest experts (validation offloads) get --expert-seeds seeds, the rest 1",
    "premise_grid": "premise sweep settings HEADDIMxDEPTH[@LR], comma-separated",
    "compact_experts": "also train compact experts (tails on the shared trunk)",
    "tau_tolerance": "default tau: the lowest whose validation accuracy is within this many points of the best",
    "tau": "default tau written to the manifest (default: chosen on validation)",
    "device": "cuda: data on the GPU, bf16 autocast",
    "threads": "torch CPU threads (0: torch's default)",
    "onnx": "with pack/export: also export ONNX into this folder and check parity",
}
CHOICES: dict[str, list[str]] = {
    "partition": ["superclass", "confusion"],
    "teacher_recipe": ["shared", "per-subset"],
    "expert_shape": ["4H", "6H"],
    "omega_schedule": ["step", "epoch"],
    "expert_init": ["pruned-teacher", "generalist"],
    "device": ["cpu", "cuda"],
}
SHORT = {"subsets": "-S", "max_weight": "-W"}


def _comma_list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def _common(p: argparse.ArgumentParser) -> None:
    """Every field of Config as a flag (--name-with-dashes, its type and default), then the flags of
    the command itself."""
    from askexpert.models import SHAPES
    from trainer.pipeline import Config

    c = Config()
    choices = CHOICES | {f: sorted(SHAPES) for f in ("teacher_shape", "edge_shape")}
    for f, typ in typing.get_type_hints(Config).items():
        names = [f"--{f.replace('_', '-')}", *([SHORT[f]] if f in SHORT else [])]
        kw: dict = {"default": getattr(c, f), "help": HELP.get(f)}
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typ == list[str]:
            kw["type"] = _comma_list
        else:
            kw["type"] = float if typ == (float | None) else typ
            kw["choices"] = choices.get(f)
        if f in ("work", "out"):
            kw["default"] = ""  # derived from the data set (and the recipe) when empty
        p.add_argument(*names, **kw)
    a = p.add_argument
    a("--epochs", type=int, default=0, help="set all epoch counts at once")
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
    return Config(**kw)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with a --recipe's values as defaults that explicit flags override."""
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    from trainer.pipeline import STEPS

    for s in (*STEPS, "export", "pack"):
        _common(sub.add_parser(s, help=f"run the {s} step (and the steps before it)"))
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
    from trainer.pipeline import STEPS, Run
    from trainer.report_markdown import to_markdown

    t0 = time.time()
    cfg = config_from(ns)
    run = Run(cfg, log=log)
    if ns.cmd in STEPS:
        run.run_until(ns.cmd)
        if ns.cmd == "report":
            print(to_markdown(run.report()))
        return 0
    # pack / export: every step, then the pack
    from trainer.assemble import Provenance, assemble, check_sizes

    prev = _previous_wall(run)
    for step in STEPS:
        run.run_step(step)
        _save_wall(run, prev + time.time() - t0)
    wall = time.time() - t0 + prev
    made = Provenance(
        command=ns.as_command or "trainer " + shlex.join(argv),
        wall_s=wall,
        device_note=ns.device_note,
        exported_by=("trainer " + shlex.join(argv)) if ns.as_command else "",
        table6={"paper": TABLE6, "differences": DEVIATIONS.get(ns.recipe, {})},
    )
    out = assemble(run, made, size_limit=not ns.no_size_limit)
    sizes = check_sizes(out, limited=not ns.no_size_limit)
    log(f"pack written to {out}: {sizes['total_mib']} MiB in {len(sizes['files'])} files")
    print(to_markdown(run.report()))
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
