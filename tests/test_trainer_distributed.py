"""torchrun + DDP on the 2 CPU cores (gloo): a small progressive fit under 2 ranks trains the same
weights as one process on the same global batches, the loss normalisation holds however the target
samples split across the ranks, and a fit interrupted under 2 ranks resumes under 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from trainer.losses import distill_loss, sample_weights

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
WORKER = Path(__file__).with_name("ddp_fit.py")


def _run(out: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([*head, str(WORKER), str(out), *extra], capture_output=True, text=True, env=env, timeout=240)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    r = _run(out, 1)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _close(a: Path, b: Path, atol: float = 1e-4) -> float:
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert set(wa) == set(wb)
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diff < atol, diff
    return diff


def test_two_ranks_train_as_one_process(one_process, tmp_path):
    r = _run(tmp_path, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    s1, s2 = (json.loads((p / "summary.json").read_text()) for p in (one_process, tmp_path))
    assert (s1["world"], s2["world"], s1["steps"], s2["steps"]) == (1, 2, 18, 18)
    assert s1["final_loss"]["m"] == pytest.approx(s2["final_loss"]["m"], rel=1e-4)
    _close(one_process, tmp_path)
    assert (
        not (tmp_path / "ckpt" / "state.json.tmp").exists()
        and json.loads((tmp_path / "ckpt" / "state.json").read_text())["epochs_done"] == 3
    )


def test_target_samples_split_unevenly_and_the_loss_still_adds_up():
    """With D_I one class of six, the 2 ranks' shares of a global batch hold different numbers of
    target samples; each rank divides eq. 3 by its own (equal) share, so the mean of the ranks'
    losses (what DDP's gradient average follows) is the one-process loss of the whole batch. A
    per-rank division by the weight sum would not be."""
    sys.path.insert(0, str(WORKER.parent))
    from ddp_fit import BATCH, TARGETS, data

    _, y, _ = data()
    mask = torch.zeros(6, dtype=torch.bool)
    mask[list(TARGETS)] = True
    shares = []
    for r in (0, 1):
        s = DistributedSampler(range(len(y)), 2, r, shuffle=True, seed=1000, drop_last=True)
        s.set_epoch(0)
        shares.append(torch.tensor(list(s)).view(-1, BATCH // 2))  # rank r's share of each global batch
    counts = [(int(mask[y[a]].sum()), int(mask[y[b]].sum())) for a, b in zip(*shares)]
    uneven = [i for i, (a, b) in enumerate(counts) if a != b]
    assert uneven, counts  # some global batches put more target samples on one rank
    orders = [shares[0][uneven[0]], shares[1][uneven[0]]]
    logits = torch.randn(len(y), 6, generator=torch.Generator().manual_seed(0))
    whole = torch.cat(orders)
    w = 14.0
    one = distill_loss(logits[whole], y[whole], None, sample_weights(y[whole], mask, w))
    ranks = [distill_loss(logits[o], y[o], None, sample_weights(y[o], mask, w)) for o in orders]
    assert float(sum(ranks) / 2) == pytest.approx(float(one), rel=1e-6)
    by_weight_sum = [float(r * len(o) / sample_weights(y[o], mask, w).sum()) for r, o in zip(ranks, orders)]
    assert sum(by_weight_sum) / 2 != pytest.approx(float(one * len(whole) / sample_weights(y[whole], mask, w).sum()), rel=1e-3)


def test_interrupted_under_two_ranks_resumes_under_one(one_process, tmp_path):
    r = _run(tmp_path, 2, "--crash-after-epoch", "1")
    assert r.returncode != 0 and not (tmp_path / "weights.safetensors").exists()
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["epochs_done"] == 1
    r = _run(tmp_path, 1)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming after epoch 1/3" in r.stdout
    _close(one_process, tmp_path)
