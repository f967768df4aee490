"""The paper's own setting on written data: `--partition paper` gives Table 7's groups on CIFAR-100
folders (python and binary), `--teacher-init` loads a timm checkpoint at another image size as timm
does and refuses one of another architecture, `trainer plan` prints the fits and an estimate, and a
2-epoch `--recipe paper` run with tiny shapes ends in a pack that the edge and the hub serve."""

import json
import pickle

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from askexpert.models import ViTArch
from trainer.cli import main, parse_args
from trainer.teacher_init import pretrained_vit

# CIFAR-100's coarse label names, in its meta file's order
COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices household_furniture "
    "insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores "
    "medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2"
).split()
# Table 7 of the paper, copied by hand from its text (S = 4 and 8; S = 6 is checked against the module)
TABLE7_S4 = [
    "Fruit and vegetables, People, Large man-made outdoor things, Household electrical devices, Vehicles 2",
    "Household furniture, Vehicles 1, Invertebrates, Reptiles, Medium-sized mammals",
    "Fish, Large omnivores and herbivores, Large natural outdoor scenes, Trees, Flowers",
    "Large carnivores, Aquatic mammals, Insects, Food containers, Small mammals",
]
TABLE7_S8 = [
    "People, Household electrical devices, Vehicles 2",
    "Fruit and vegetables, Large man-made outdoor things, Invertebrates",
    "Household furniture, Vehicles 1, Reptiles",
    "Large natural outdoor scenes, Medium-sized mammals, Trees",
    "Fish, Large omnivores and herbivores",
    "Small mammals, Flowers",
    "Insects, Large carnivores",
    "Aquatic mammals, Food containers",
]
FINE_TO_COARSE = [(f * 7) % 20 for f in range(100)]  # 5 fine classes per superclass, not in blocks


def _images(n: int, rng) -> tuple[np.ndarray, list[int]]:
    fine = [i % 100 for i in range(n)]
    x = rng.integers(0, 60, (n, 3, 32, 32), dtype=np.uint8)
    for i, f in enumerate(fine):  # a learnable signal: a bright band whose row depends on the superclass
        x[i, :, FINE_TO_COARSE[f] + 6, :] = 250
    return x.reshape(n, -1), fine


def write_cifar(root, fmt: str, n_train: int = 600, n_test: int = 200) -> str:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        x, fine = _images(n, rng)
        coarse = [FINE_TO_COARSE[f] for f in fine]
        if fmt == "python":
            batch = {b"data": x, b"fine_labels": fine, b"coarse_labels": coarse}
            (root / split).write_bytes(pickle.dumps(batch, protocol=2))
        else:
            np.concatenate([np.array([coarse, fine], dtype=np.uint8).T, x], axis=1).tofile(root / f"{split}.bin")
    fine_names, coarse_names = [f"class{i}" for i in range(100)], COARSE
    if fmt == "python":
        meta = {b"fine_label_names": [n.encode() for n in fine_names], b"coarse_label_names": [n.encode() for n in coarse_names]}
        (root / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    else:
        (root / "fine_label_names.txt").write_text("\n".join(fine_names))
        (root / "coarse_label_names.txt").write_text("\n".join(coarse_names))
    return f"cifar100:{root}"


def _as_cifar(paper_names: str) -> set[str]:
    special = {"Invertebrates": "non-insect_invertebrates", "Medium-sized mammals": "medium_mammals"}
    return {special.get(n, n.lower().replace(" ", "_")) for n in paper_names.split(", ")}


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_partition_paper_is_table7(tmp_path, fmt):
    from trainer.partition import TABLE7

    dataset = write_cifar(tmp_path / fmt, fmt, n_train=200, n_test=100)
    want = {4: [_as_cifar(s) for s in TABLE7_S4], 8: [_as_cifar(s) for s in TABLE7_S8], 6: [_as_cifar(", ".join(g)) for g in TABLE7[6]]}
    assert [len(g) for g in TABLE7[6]] == [4, 4, 3, 3, 3, 3]
    for S in (4, 6, 8):
        work = tmp_path / f"work{S}"
        assert (
            main(["partition", "--recipe", "paper", "--dataset", dataset, "--subsets", str(S), "--work", str(work), "--device", "cpu"]) == 0
        )
        p = json.loads((work / "partition.json").read_text())["partition"]
        got = [{COARSE[FINE_TO_COARSE[c]] for c in range(100) if p[c] == s} for s in range(S)]
        assert got == want[S]
        assert all(sum(1 for c in range(100) if p[c] == s) == 5 * len(want[S][s]) for s in range(S))
    with pytest.raises(SystemExit, match="S = 4, 6, 8"):
        main(["partition", "--recipe", "paper", "--dataset", dataset, "--subsets", "5", "--work", str(tmp_path / "w5"), "--device", "cpu"])


def _tiny_checkpoint(path, embed: int = 48, depth: int = 2, heads: int = 4) -> VisionTransformer:
    """A ViT as timm would save it: 16 px, patch 8, 10 classes (not the run's)."""
    torch.manual_seed(1)
    src = VisionTransformer(img_size=16, patch_size=8, num_classes=10, embed_dim=embed, depth=depth, num_heads=heads)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)  # a training checkpoint: the weights under "model"
    return src


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_teacher_init_loads_as_timm_does_at_another_size(tmp_path, suffix):
    path = tmp_path / f"deit-tiny{suffix}"
    _tiny_checkpoint(path)
    arch = ViTArch(48, 2, 4, 4.0, 4, 32, 3, 100)  # 32 px, patch 4, 100 classes
    ours = pretrained_vit(arch, path).eval()
    assert ours.pos_embed.shape == (1, 65, 48) and ours.patch_embed.proj.weight.shape == (48, 3, 4, 4) and ours.head.out_features == 100
    ref = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        img_size=32,
        patch_size=4,
        embed_dim=48,
        num_heads=4,
        depth=2,
        num_classes=100,
    ).eval()
    ref.head.load_state_dict(ours.head.state_dict())  # the head is new in both: compare with the same one
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
        assert torch.allclose(
            ours(torch.nn.functional.interpolate(x, size=16)),
            ours(torch.nn.functional.interpolate(torch.nn.functional.interpolate(x, size=16), size=32, mode="bilinear")),
            atol=1e-5,
        )


def test_teacher_init_refuses_another_architecture_naming_both(tmp_path):
    path = tmp_path / "other.safetensors"
    _tiny_checkpoint(path, embed=32, heads=2)
    with pytest.raises(SystemExit, match=r"holds a ViT 32 wide, depth 2.*teacher is a ViT 48 wide, depth 2"):
        pretrained_vit(ViTArch(48, 2, 4, 4.0, 4, 32, 3, 100), path)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": {"x": __import__("os").system}}))
    with pytest.raises(SystemExit, match="not a weights-only state dict"):
        pretrained_vit(ViTArch(48, 2, 4, 4.0, 4, 32, 3, 100), evil)


TINY_PAPER = ["--device", "cpu", "--head-dim", "16", "--depth", "2", "--img-size", "32", "--patch-size", "8", "--batch-size", "64"]
SMALL = ["--expert-train-samples", "128", "--max-test-samples", "100", "--max-val-samples", "100", "--importance-batches", "1"]


def test_recipe_paper_is_table6_and_records_overrides():
    ns = parse_args(["pack", "--recipe", "paper", "--epochs-expert", "7"])
    assert (ns.batch_size, ns.epochs_teacher, ns.lr, ns.distill_lr, ns.expert_lr, ns.subset_teacher_lr) == (
        256,
        200,
        1e-4,
        8e-5,
        8e-5,
        1e-4,
    )
    assert (ns.warmup_epochs, ns.clip_grad, ns.teacher_clip_grad, ns.max_weight, ns.k, ns.partition) == (5.0, 1.0, 0.0, 14.0, 2, "paper")
    assert (ns.depth, ns.head_dim, ns.teacher_shape, ns.expert_shape, ns.img_size, ns.patch_size) == (12, 64, "12H", "4H", 224, 16)
    from trainer.cli import config_from, recipe_record

    rec = recipe_record(ns, config_from(ns))
    assert rec["overridden"] == {"epochs_expert": {"recipe": 200, "used": 7}} and rec["paper"]["W"] == 14


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_plan_then_a_two_epoch_paper_run_ends_in_a_served_pack(tmp_path, capsys):
    dataset = write_cifar(tmp_path / "cifar-100-python", "python", n_train=400, n_test=100)
    ckpt = tmp_path / "deit-12h16.safetensors"
    torch.manual_seed(2)
    src = VisionTransformer(img_size=16, patch_size=8, num_classes=1000, embed_dim=192, depth=2, num_heads=12)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(ckpt))
    assert main(["plan", "--recipe", "paper", "--dataset", dataset, *TINY_PAPER, "--measure-batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "| teacher M_D | 1 | 12H | 200 |" in out and "| subset teachers M_I | 10 | 12H | 200 |" in out
    assert "| experts (progressive, static, uniform) | 10 | 4H+4H+4H | 200 |" in out and "device-hours" in out
    argv = ["pack", "--recipe", "paper", "--dataset", dataset, *TINY_PAPER, "--epochs", "2", "--teacher-init", str(ckpt)]
    argv += ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "pack"), *SMALL, "--threads", "2"]
    assert main(argv) == 0
    from askexpert.backends import open_backend
    from askexpert.pack import Pack

    pack = Pack.load(tmp_path / "pack")
    m = pack.manifest
    assert len(m.experts) == 10 and not m.missing_experts() and m.generalist
    t6 = m.training["table6"]
    assert t6["recipe"] == "paper" and {"epochs_teacher", "device", "depth", "head_dim", "img_size", "patch_size"} <= set(t6["overridden"])
    assert t6["overridden"]["img_size"] == {"recipe": 224, "used": 32}
    assert "dataset" not in t6["overridden"] and str(tmp_path) not in json.dumps(t6) and t6["processes"] == 1
    assert json.loads((tmp_path / "work" / "partition.json").read_text())["how"].startswith("the paper's Table 7")
    backend = open_backend("torch")
    frames = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    assert backend.classifier(pack, m.generalist)(frames).shape == (4, 100)
    assert backend.experts(pack, pack.expert_entries("full"))(frames, ["0", "0-1", "2-3", "3"]).shape == (4, 100)
