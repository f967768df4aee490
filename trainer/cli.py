"""`trainer`: train a model pack step by step, or all at once with `trainer pack`.

  trainer pack --dataset fashion-mnist --subsets 4 --k 2 --out packs/fashion-mnist
  trainer teacher|prune|baselines|partition|experts|report|export ... (same flags)
  trainer export-onnx --pack packs/fashion-mnist --onnx-out runs/onnx
  trainer served-form --pack packs/fashion-mnist   (the expert form hubs serve, chosen on validation)
  trainer learn --pack packs/fashion-mnist --collected DIR --out DIR   (on-site learning: trainer/learn.py)
  trainer epochs-control --recipe cpu --control-experts 0,2,0-1   (progressive vs static, longer: trainer/epochs_control.py)

Every step keeps its results in --work (default runs/<dataset>) and is skipped when they exist;
re-run the same command to resume after an interruption (fits resume after their last epoch).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import typing
from dataclasses import asdict

from rich.console import Console

from trainer.recipes import DEVIATIONS, RECIPES, TABLE6, overridden

# Help, choices and short names of the trainer's settings; their names, types and defaults come from
# `trainer.config.Config`, so a new setting is a new field there (and a line here).
HELP: dict[str, str] = {
    "dataset": "fashion-mnist | cifar100:PATH | folder:PATH",
    "work": "work folder (default runs/<dataset>)",
    "out": "pack folder (default packs/<dataset>)",
    "partition": "superclass: the data set's groups (or the garment groups of Fashion-MNIST); paper: Table 7's CIFAR-100 lists "
    "for S=4,6,8; confusion: from the 3H's confusions",
    "img_size": "every model's input size (0: the data's); images are resized per batch (e.g. 224 for a DeiT-Base start)",
    "stream": "folder:PATH data sets: decode images per batch in DataLoader workers instead of holding them in memory",
    "teacher_init": "pretrained ViT weights for the teachers (safetensors, or a .pth state dict read weights-only)",
    "subset_teacher_init": "teacher: each M_I starts from M_D; pretrained: from --teacher-init, as the paper",
    "teacher_clip_grad": "gradient-norm clipping of the teachers M_D and M_I (negative: --clip-grad; 0: none, Table 6)",
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
    "partition": ["superclass", "paper", "confusion"],
    "subset_teacher_init": ["teacher", "pretrained"],
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
    from trainer.config import Config

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
    a("--recipe", choices=sorted(RECIPES), default="", help="a reference recipe's settings as defaults (cpu | gpu | paper)")
    a("--no-size-limit", action="store_true", help="allow a pack over the repository's limits (32 MiB a file, 128 MiB)")
    a("--device-note", default="", help="appended to the device recorded in the manifest (e.g. 'shared with other jobs')")
    a("--as-command", default="", help=argparse.SUPPRESS)  # re-export: the pack command that trained --work
    a("--measure-batch", type=int, default=8, help="plan: the batch a training step is timed with (scaled to --batch-size)")


def config_from(ns: argparse.Namespace):
    from trainer.config import Config

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

    for s in (*STEPS, "export", "pack", "plan"):
        _common(sub.add_parser(s, help=f"run the {s} step (and the steps it needs)"))
    from trainer import epochs_control

    ec = sub.add_parser("epochs-control", help="chosen experts progressive and static at several epoch counts (trainer/epochs_control.py)")
    _common(ec)
    epochs_control.add_arguments(ec)
    ox = sub.add_parser("export-onnx", help="ONNX for every model of a pack, checked with onnxruntime")
    ox.add_argument("--pack", required=True)
    ox.add_argument("--onnx-out", required=True)
    qb = sub.add_parser("quality-band", help="record the label-free quality band of a pack made without one (trainer/band.py)")
    qb.add_argument("--pack", required=True)
    sf = sub.add_parser("served-form", help="choose the expert form hubs serve, on validation, for a pack made without a choice")
    sf.add_argument("--pack", required=True)
    from trainer import learn

    learn.add_parser(sub)
    ns = parser.parse_args(argv)
    if getattr(ns, "recipe", ""):  # parse again with the recipe as defaults, so explicit flags win
        sub.choices[ns.cmd].set_defaults(**RECIPES[ns.recipe])
        ns = parser.parse_args(argv)
        if not ns.work:
            ns.work = f"runs/{ns.dataset.replace(':', '-').replace('/', '_')}-{ns.recipe}"
    return ns


def recipe_record(ns: argparse.Namespace, cfg) -> dict:
    """What the pack's record says of its recipe: Table 6, the recipe's documented differences from
    it, the recipe's values that flags on this command line overrode, and the number of processes."""
    from trainer import distributed as dist

    # the data set's kind only: the record holds no paths of the training machine
    used = asdict(cfg) | {"no_size_limit": ns.no_size_limit, "dataset": cfg.dataset.split(":")[0]}
    over = overridden(ns.recipe, used)
    return {
        "paper": TABLE6,
        "recipe": ns.recipe,
        "overridden": over,
        "differences": DEVIATIONS.get(ns.recipe, {}),
        "processes": dist.world(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parse_args(argv)
    from trainer import distributed as dist

    console = Console(stderr=True)
    log = console.log if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)  # torchrun: rank 0 logs
    if ns.cmd == "export-onnx":
        from trainer.onnx_export import export_pack_onnx

        diffs = export_pack_onnx(ns.pack, ns.onnx_out)
        log(f"ONNX parity (max abs diff): {max(diffs.values()):.2e} over {len(diffs)} models -> {ns.onnx_out}")
        return 0
    if ns.cmd == "quality-band":
        from trainer.band import record_band

        log(record_band(ns.pack).model_dump_json(indent=2))
        return 0
    if ns.cmd == "served-form":
        from trainer.served_form import record_served_form

        log(record_served_form(ns.pack).model_dump_json(indent=2))
        return 0
    if ns.cmd == "learn":
        from trainer import learn

        return learn.run(ns, log)
    cfg = config_from(ns)
    if ns.cmd == "plan":
        from trainer.plan import plan

        print(plan(cfg, ns.measure_batch, log))
        return 0
    if ns.cmd == "epochs-control":
        from trainer import epochs_control

        return epochs_control.run(ns, cfg, log)
    dist.init_from_env(cfg.device)
    try:
        return _train(ns, argv, cfg, log)
    finally:
        dist.shutdown()


def _train(ns: argparse.Namespace, argv: list[str], cfg, log) -> int:
    """The steps of `ns.cmd`; under torchrun every rank runs them and rank 0 writes and prints."""
    from trainer import distributed as dist
    from trainer.context import RunContext
    from trainer.pipeline import STEPS, run_step, run_until
    from trainer.report_markdown import to_markdown

    t0 = time.time()
    run = RunContext.open(cfg, log=log)
    record = recipe_record(ns, cfg)
    run.set_info("recipe", record)
    if record["overridden"]:
        log(f"recipe {ns.recipe}: overridden by flags: {record['overridden']}")
    if ns.recipe == "paper" and not cfg.teacher_init:
        log("recipe paper without --teacher-init: the teachers start from random weights, not the paper's pretrained DeiT-Base")
    if ns.cmd in STEPS:
        run_until(run, ns.cmd)
        if ns.cmd == "report" and dist.is_main():
            print(to_markdown(run.report()))
        return 0
    # pack / export: every step, then the pack
    from trainer.assemble import Provenance, assemble, check_sizes

    prev = _previous_wall(run)
    for step in STEPS:
        run_step(run, step)
        _save_wall(run, prev + time.time() - t0)
    wall = time.time() - t0 + prev
    if not dist.is_main():
        return 0
    made = Provenance(
        command=ns.as_command or "trainer " + shlex.join(argv),
        wall_s=wall,
        device_note=ns.device_note,
        exported_by=("trainer " + shlex.join(argv)) if ns.as_command else "",
        table6=record,
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
