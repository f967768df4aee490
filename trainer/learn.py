"""`trainer learn`: one round of on-site learning, a new edge model from the frames the edge offloaded.

    trainer learn --pack packs/fashion-mnist --collected runs/collected --out runs/pack-v2

- Targets: the experts' answers on the collected frames (`edge-node collect`): nobody labels anything.
- Not forgetting: every epoch mixes in `replay` times as many of the pack's own training images
  (its recipe's training split, clean, with their true labels): what the edge knew.
- Fine-tuning: it starts from the pack's generalist, same shape, a few CPU minutes.
- tau: the new pack keeps the old one (`--tau-rule keep`, the default), or takes a recalibrated one
  (`recalibrate`): a seeded `holdout` share of the collected frames is never trained on; tau is chosen there by
  the pack's own rule (`trainer.report.choose_tau`: the lowest tau whose system accuracy is within
  the pack's tolerance of the best), with the experts' answers standing in for the truth, which
  on site nobody has. Those frames are only the offloaded share (alpha) of the stream, so the
  tolerance, in points of the stream, is divided by alpha (the collector's count).
- The result is a copy of the pack with the new generalist and tau: the same routing (pack id), a
  new version. The old pack's reports and stored test logits describe the old edge and are left out.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from askexpert.collected import CollectedError, read_collected
from askexpert.datasets import LabelledImages, load_dataset, train_val_split
from askexpert.hardware import cpu_name
from askexpert.pack import Manifest, Pack, PackError, save_weights, write_manifest
from askexpert.routing import decide
from trainer.data import to_tensor
from trainer.engine import FitEnv, FitSpec, Job, fit, predict
from trainer.report import choose_tau, topk_acc


@dataclass
class LearnConfig:
    """A round's learning step (the flags: HELP)."""

    pack: str
    collected: str
    out: str
    epochs: int = 4
    lr: float = 2e-4  # a fine-tune: a fifth of the rate the pack's generalists were trained with
    batch_size: int = 128
    replay: float = 4.0  # the smallest mix costing under 0.5 pt on clean validation: 2 cost 0.50, 4 cost 0.20 (docs/results/edge-learning)
    holdout: float = 0.2
    seed: int = 0
    dataset: str = ""
    test_samples: int = 0
    tau_rule: str = "keep"


def _holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of n collected frames: a seeded, sorted split."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])


def _known(m: Manifest, cfg: LearnConfig) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """What the edge knew: its recipe's training split of its data set; and two clean sets to
    measure whether it forgot: the validation split (what a choice of the learning's settings may
    look at; a shifted copy of it is the collection stream) and the test split (for the report only)."""
    recipe = m.training.get("recipe") if isinstance(m.training.get("recipe"), dict) else {}
    name = cfg.dataset or m.dataset
    train, val = train_val_split(load_dataset(name, "train"), recipe.get("val_fraction", 0.1), recipe.get("seed", 0))
    test = load_dataset(name, "test")
    n = cfg.test_samples or len(test)
    return train, val, LabelledImages(test.images[:n], test.labels[:n], test.classes)


def _tensors(images: np.ndarray, labels: np.ndarray, m: Manifest) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised as the pack's edge normalises frames."""
    return to_tensor(LabelledImages(images, labels.astype(np.int64), m.classes), np.asarray(m.input.mean), np.asarray(m.input.std))


def recalibrate_tau(edge_logits: np.ndarray, answers: np.ndarray, m: Manifest, alpha: float):
    """choose_tau on held-out collected frames, the experts' answers as truth (module docstring)."""
    keys = set(decide(edge_logits, m.partition, m.k).expert)
    onehot = np.eye(len(m.classes), dtype=np.float32)[answers]
    tolerance = m.training.get("default_tau", {}).get("tolerance_pt", 0.25)
    return choose_tau(edge_logits, dict.fromkeys(keys, onehot), answers, m.partition, m.k, tolerance / max(alpha, 1e-3))


def learn(cfg: LearnConfig, log=print) -> dict:
    """The round's learning step; returns its record (also in the new pack's manifest)."""
    t0 = time.time()
    pack = Pack.load(cfg.pack)
    m = pack.manifest
    col = read_collected(cfg.collected)
    if col.meta.get("pack") != m.pack_id:
        raise SystemExit(f"{cfg.collected} was collected under pack id {col.meta.get('pack')}, not this pack's {m.pack_id}")
    train_idx, hold_idx = _holdout(len(col), cfg.holdout, cfg.seed)
    train, val, test = _known(m, cfg)
    pick = np.sort(np.random.default_rng(cfg.seed + 1).permutation(len(train))[: int(cfg.replay * len(train_idx))])
    x_known, y_known = _tensors(train.images[pick], train.labels[pick], m)
    x_col, y_col = _tensors(col.images[train_idx], col.column("label")[train_idx], m)
    x_test, y_test = _tensors(test.images, test.labels, m)
    x_val, y_val = _tensors(val.images, val.labels, m)
    x, y = torch.cat([x_known, x_col]), torch.cat([y_known, y_col])
    model = pack.load_generalist()
    before, val_before = predict(model, x_test).numpy(), predict(model, x_val).numpy()
    fill = -torch.tensor(m.input.mean) / torch.tensor(m.input.std)  # a black pixel, as the pack's training pads
    spec = FitSpec(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, aug={"pad": 2, "flip": True, "fill": fill}, seed=cfg.seed)
    log(f"learn: {len(train_idx)} collected frames (expert answers) + {len(pick)} of the pack's training images, {cfg.epochs} epochs")
    fitted = fit([Job("edge", model)], x, y, None, spec, FitEnv(desc="learn", log=log))
    model.eval()
    after, val_after = predict(model, x_test).numpy(), predict(model, x_val).numpy()
    x_hold, y_hold = _tensors(col.images[hold_idx], col.column("label")[hold_idx], m)
    counts = col.meta.get("counts", {})
    alpha = counts.get("offloaded", 0) / max(1, counts.get("seen", 0))
    tau = recalibrate_tau(predict(model, x_hold).numpy(), y_hold.numpy(), m, alpha)
    if cfg.tau_rule not in ("keep", "recalibrate"):
        raise PackError(f"tau rule {cfg.tau_rule!r}: keep or recalibrate")
    new_tau = tau.tau if cfg.tau_rule == "recalibrate" else m.tau
    y_test = y_test.numpy()
    record = {
        "config": asdict(cfg),
        "from_version": pack.version,
        "collected": {"frames": len(col), "trained_on": len(train_idx), "held_out": len(hold_idx), "alpha_at_collection": round(alpha, 4)},
        "replay_images": len(pick),
        "fit": fitted,
        "clean_val_top1": {"before": topk_acc(val_before, y_val.numpy(), 1), "after": topk_acc(val_after, y_val.numpy(), 1)},
        "clean_test_top1": {"before": topk_acc(before, y_test, 1), "after": topk_acc(after, y_test, 1)},
        "tau": tau.model_dump(mode="json")
        | {"rule": "trainer.report.choose_tau on the held-out collected frames, expert answers as truth, tolerance / alpha"},
        "new_tau": {"tau": new_tau, "rule": cfg.tau_rule},
        "device": cpu_name(),
        "wall_s": round(time.time() - t0, 1),
    }
    metrics = {f"top{k}": topk_acc(after, y_test, k) for k in (1, 2, 3)}
    out = write_pack(pack, model, Path(cfg.out), new_tau, metrics, record)
    log(
        f"learn: pack {out} (version {Pack.load(out).version}), tau {new_tau} (recalibrated: {tau.tau}), clean test top-1 {record['clean_test_top1']}"
    )
    return record


def write_pack(old: Pack, model: torch.nn.Module, out: Path, tau: float, metrics: dict, record: dict) -> Path:
    """The old pack's files with the new generalist: a new version of the same routing."""
    if out.exists():
        raise SystemExit(f"{out} exists: learn into a new folder")
    m = old.manifest.model_copy(deep=True)
    out.mkdir(parents=True)
    for entry in old.entries:
        if entry.file != m.generalist.file:
            shutil.copy2(old.root / entry.file, out / entry.file)
    m.generalist.sha256 = save_weights(model, out / m.generalist.file)
    m.generalist.metrics = metrics
    m.tau, m.reports = tau, {}
    m.training = {**m.training, "learned": [*m.training.get("learned", []), record]}
    write_manifest(out, m)
    Pack.load(out).verify(Pack.load(out).entries)
    return out


HELP = {
    "epochs": "passes over the collected frames and the replayed training images",
    "lr": "peak learning rate (a fine-tune)",
    "batch_size": "mini-batch size",
    "replay": "the pack's training images per collected frame",
    "holdout": "share of the collected frames held out for tau, never trained on",
    "seed": "seed of the hold-out, the replayed images and the batches",
    "dataset": "the pack's training data set (default: the manifest's)",
    "test_samples": "the first N clean test images measure forgetting (0: all)",
    "tau_rule": "keep: the new pack keeps the old tau (the hub stays sized for its alpha); recalibrate: it takes the tau "
    "chosen on the held-out collected frames, which leans to offloading (the experts' answers stand in for the truth, so "
    "offloading looks right by construction: docs/results/edge-learning)",
}


def add_parser(sub) -> None:
    p = sub.add_parser("learn", help="a new edge generalist from collected frames (edge-node collect): a new version of the pack")
    p.add_argument("--pack", required=True, help="the pack the frames were collected under")
    p.add_argument("--collected", required=True, help="the folder `edge-node collect` wrote")
    p.add_argument("--out", required=True, help="a new pack folder")
    for name, default in asdict(LearnConfig("", "", "")).items():
        if name in HELP:
            p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, help=f"{HELP[name]} (default {default!r})")


def run(ns, log) -> int:
    import json

    cfg = LearnConfig(**{k: v for k, v in vars(ns).items() if k in LearnConfig.__dataclass_fields__})
    try:
        record = learn(cfg, log)
    except (CollectedError, PackError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(json.dumps(record))
    return 0
