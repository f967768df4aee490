"""A one-epoch tiny `trainer pack` on a few hundred images, in the reference recipe's shapes (head
dim 16, a 12H teacher): the premise sweep runs first, the pack loads, the edge's and the hub's
backends run it (full and compact experts), experts start as their pruned per-subset teacher and
train on its labels, only the busiest experts get several seeds, the report holds every control
and claim, ONNX matches PyTorch, and a fit resumes from its checkpoint."""

import json

import numpy as np
import pytest
import torch

from askexpert.pack import Pack
from trainer.cli import main, parse_args

# a whole (tiny) training run: minutes on a busy 2-core box, so a longer limit than the default
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").is_file()
        and not __import__("os").environ.get("ATE_FASHION_MNIST_DIR"),
        reason="Fashion-MNIST not installed",
    ),
]


TINY = [
    "--dataset",
    "fashion-mnist",
    "--depth",
    "2",
    "--epochs",
    "1",
    "--max-train-samples",
    "256",
    "--expert-train-samples",
    "128",
    "--max-test-samples",
    "200",
    "--max-val-samples",
    "200",
    "--batch-size",
    "64",
    "--importance-batches",
    "1",
    "--expert-seeds",
    "2",
    "--busy-experts",
    "3",
    "--head-dim",
    "16",
    "--teacher-shape",
    "12H",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    argv = [
        "pack",
        "--dataset",
        "fashion-mnist",
        "--work",
        str(root / "work"),
        "--out",
        str(root / "pack"),
        *TINY,
        "--threads",
        "2",
        "--premise-grid",
        "16x2,8x2@2e-3",
        "--premise-epochs",
        "1",
    ]
    assert main(argv) == 0
    return root


def test_tiny_pack_loads_and_runs(tiny):
    pack = Pack.load(tiny / "pack")
    m = pack.manifest
    assert len(m.experts) == 10 and not m.missing_experts()
    assert all(e.kind == "vit" and (e.vit_arch.embed_dim, e.vit_arch.num_heads) == (64, 4) for e in m.experts)  # whole 4H/16 ViTs
    assert [e.key for e in m.compact_experts] == [e.key for e in m.experts]
    assert all(e.kind == "tail" and e.tail_blocks == 1 for e in m.compact_experts)
    assert m.trunk is not None and m.trunk.blocks == 1
    assert set(m.baselines) == {"4H", "6H"}
    assert m.training["recipe"]["depth"] == 2 and m.training["wall_s"] > 0
    # no paths of the training machine in the recipe (the command keeps what its user typed)
    assert "work" not in m.training["recipe"] and str(tiny) not in json.dumps(m.training["recipe"])
    assert m.training["recipe"]["max_weight"] == 14.0 and m.training["teacher_recipe"] == "per-subset"
    assert m.training["device"].startswith("cpu")
    assert m.tau == m.training["default_tau"]["tau"]  # chosen on the validation split
    x = torch.zeros(3, 1, 28, 28)
    assert pack.load_generalist()(x).shape == (3, 10)
    for e in m.experts:
        assert pack.load_expert(e)(x).shape == (3, 10)
    tokens = pack.load_trunk()(x)
    for e in m.compact_experts:
        assert pack.load_expert(e)(tokens).shape == (3, 10)
    # what the edge and the hub load: the runtime backends on uint8 frames
    from askexpert.backends import open_backend

    backend = open_backend("torch")
    frames = np.random.default_rng(0).integers(0, 255, (4, 28, 28, 1), dtype=np.uint8)
    assert backend.classifier(pack, m.generalist)(frames).shape == (4, 10)
    for form in ("full", "compact"):  # what `expert-hub run --expert-form` serves
        lib = backend.experts(pack, pack.expert_entries(form))
        assert lib(frames, ["0", "0-1", "2-3", "0"]).shape == (4, 10)
    # reports and logits: every expert kind over both seeds, the system controls, the claims
    rep = json.loads((tiny / "pack" / "reports" / "report.json").read_text())
    assert {"generalists", "table3", "experts", "system_sweep", "claims", "default_tau", "alpha", "recall"} <= set(rep)
    per_expert = rep["expert_training"]["seeds_per_expert"]
    busy = [k for k, s in per_expert.items() if s == [0, 1]]
    assert len(busy) == 3 and all(s in ([0], [0, 1]) for s in per_expert.values())  # the 3 busiest get both seeds
    assert rep["table3"]["multi_seed"]["experts"] == busy
    for kind in ("progressive", "static", "uniform"):
        assert len(rep["table3"][kind]["target"]["values"]) == 2
        assert all(len(e[kind]["overall"]["values"]) == 2 for e in rep["experts"].values())
        one_seed = [k for k in per_expert if k not in busy]
        assert all(len(set(rep["experts"][k][kind]["overall"]["values"])) == 1 for k in one_seed)
    assert {c["target_pt"] for c in rep["claims"]} >= {0.0, 1.5, 2.0, 3.0}
    dom = rep["offload_domains_tau_0.9"]
    off = next(r for r in rep["system_sweep"] if r["tau"] == 0.9)["alpha_pct"]
    assert dom["in_domain"]["n"] + dom["out_of_domain"]["n"] == round(off * 200 / 100)
    assert set(rep["subset_teachers"]) == set(per_expert)
    prem = rep["premise"]
    assert set(prem["settings"]) == {"16x2", "8x2@2e-3"} and prem["ladder"] == ["3H", "4H", "6H", "12H"]
    assert prem["settings"]["8x2@2e-3"]["lr"] == 2e-3 and prem["settings"]["8x2@2e-3"]["head_dim"] == 8
    row = rep["at_default_tau"]
    assert {"progressive", "static", "uniform", "compact", "coinference_4H", "coinference_6H", "fixed_expert"} <= set(row)
    assert {c["verdict"] for c in rep["claims"]} <= {"holds", "mixed", "does not hold"}
    assert (tiny / "pack" / "reports" / "report.md").is_file()
    with np.load(tiny / "pack" / "eval" / "logits-test.npz", allow_pickle=False) as z:
        assert {"labels", "generalist-3H", "baseline-4H", "baseline-6H", "progressive-0-1"} <= set(z.files)
        assert z["generalist-3H"].shape == (200, 10) and z["generalist-3H"].dtype == np.float16


def test_rerun_resumes_without_retraining(tiny):
    before = (tiny / "work" / "teacher.safetensors").stat().st_mtime_ns
    assert main(["report", "--work", str(tiny / "work"), *TINY]) == 0
    assert (tiny / "work" / "teacher.safetensors").stat().st_mtime_ns == before
    with pytest.raises(SystemExit):  # a work folder never mixes settings
        main(["teacher", "--work", str(tiny / "work"), "--depth", "3", "--max-train-samples", "256"])


def test_onnx_parity(tiny, tmp_path):
    from trainer.onnx_export import export_pack_onnx

    diffs = export_pack_onnx(tiny / "pack", tmp_path)
    assert {"generalist-3H", "trunk", "expert-0-1", "baseline-6H", "compact-expert-0"} <= set(diffs)
    assert max(diffs.values()) < 1e-3


def test_fit_resumes_after_interruption(tmp_path):
    from askexpert.models import ViTArch, build_vit
    from trainer.engine import FitEnv, FitSpec, Job, fit

    arch = ViTArch(64, 1, 1, 2.0, 7, 28, 1, 10)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    torch.manual_seed(0)
    a = build_vit(arch)
    b = build_vit(arch)
    b.load_state_dict(a.state_dict())
    two, one = FitSpec(epochs=2, batch_size=32, lr=1e-3, seed=3), FitSpec(epochs=1, batch_size=32, lr=1e-3, seed=3)

    def env(name):
        return FitEnv(ckpt_dir=tmp_path / name, log=lambda s: None)

    fit([Job("m", a)], x, y, None, two, env("straight"))
    fit([Job("m", b)], x, y, None, one, env("split"))  # "interrupted" after epoch 1
    state = json.loads((tmp_path / "split" / "state.json").read_text())
    assert state["epochs_done"] == 1
    # a new process: fresh model, resumes from the checkpoint (weights, AdamW state) at epoch 2 of 2
    c = build_vit(arch)
    c.load_state_dict(a.state_dict())
    import shutil

    shutil.copytree(tmp_path / "split", tmp_path / "resumed")
    st = json.loads((tmp_path / "resumed" / "state.json").read_text())
    assert st["epochs_done"] == 1
    fit([Job("m", c)], x, y, None, two, env("resumed"))
    for k, v in a.state_dict().items():
        assert torch.allclose(v, c.state_dict()[k], atol=1e-5), k


def test_experts_start_as_their_pruned_subset_teacher(tiny):
    """The paper's init: m_I is M_I pruned to 4H by loss-based importance; M_I is fine-tuned from the
    generalist teacher (so differs from it) and its hard labels are what the experts learn from."""
    from safetensors.torch import load_file

    from trainer.cli import config_from
    from trainer.context import RunContext
    from trainer.prune import compute_importance, prune_vit
    from trainer.steps.s7_experts import expert_teacher_labels

    run = RunContext.open(config_from(parse_args(["experts", "--work", str(tiny / "work"), *TINY])), log=lambda s: None)
    key = "0-2"
    m_i = run.load_vit("12H", run.expert_teacher_rel(key))
    assert run.expert_teacher_rel(key) != "teacher.safetensors"
    generalist = run.load_vit("12H", "teacher.safetensors")
    assert any(not torch.equal(a, b) for a, b in zip(m_i.state_dict().values(), generalist.state_dict().values()))
    imp = compute_importance(m_i, run.importance_batches())
    want = prune_vit(m_i, run.arch("12H"), run.arch("4H"), imp).state_dict()
    got = load_file(str(tiny / "work" / "experts" / "init" / f"expert-{key}.safetensors"))
    assert set(got) == set(want) and all(torch.allclose(got[k], want[k]) for k in want)
    x = run.data.x_train[run.expert_samples()]
    assert torch.equal(expert_teacher_labels(run, key), run.logits(m_i, x).argmax(1))
    # every kind of every seed was trained away from that same init
    seed = run.info("experts")["seeds_per_expert"][key][-1]
    for kind in ("progressive", "static", "uniform"):
        trained = load_file(str(tiny / "work" / f"experts/{kind}/seed{seed}/expert-{key}.safetensors"))
        assert not torch.equal(trained["head.weight"], got["head.weight"])


def test_recipes_are_defaults_that_flags_override():
    ns = parse_args(["pack", "--recipe", "cpu", "--epochs-expert", "7"])
    assert (ns.head_dim, ns.depth, ns.patch_size, ns.teacher_shape, ns.expert_seeds, ns.epochs_expert) == (16, 3, 7, "12H", 3, 7)
    assert ns.premise_grid == [] and parse_args(["premise", "--premise-grid", "16x3,24x3@5e-4"]).premise_grid == ["16x3", "24x3@5e-4"]
    assert ns.work == "runs/fashion-mnist-cpu" and ns.device == "cpu" and not ns.no_size_limit
    ns = parse_args(["pack", "--recipe", "gpu", "--device", "cpu"])
    assert (ns.depth, ns.device, ns.no_size_limit) == (12, "cpu", True)


def test_every_setting_is_a_flag_with_its_type():
    """The trainer's flags come from Config: a new field is a new flag, typed as the field."""
    from trainer.cli import config_from
    from trainer.config import Config

    ns = parse_args(["pack"])
    assert set(Config.__dataclass_fields__) <= set(vars(ns))
    cfg = config_from(parse_args(["pack", "--tau", "0.7", "--no-augment", "--baseline-shapes", "6H", "--warmup-epochs", "1.5", "-W", "4"]))
    assert (cfg.tau, cfg.augment, cfg.baseline_shapes, cfg.warmup_epochs, cfg.max_weight) == (0.7, False, ["6H"], 1.5, 4.0)
    assert config_from(parse_args(["pack"])).tau is None and config_from(parse_args(["pack"])).compact_experts


def test_a_step_reads_its_inputs_from_the_work_folder(tiny, tmp_path):
    """Steps never run each other: a step whose inputs are missing says which step to run; with
    them in the work folder it is done (its record is read back, nothing retrains)."""
    from trainer.cli import config_from
    from trainer.context import RunContext
    from trainer.pipeline import STEPS, run_step

    fresh = RunContext.open(config_from(parse_args(["experts", "--work", str(tmp_path / "w"), *TINY])), log=lambda s: None)
    with pytest.raises(SystemExit, match="step teacher has not run"):
        run_step(fresh, "prune")
    done = RunContext.open(config_from(parse_args(["report", "--work", str(tiny / "work"), *TINY])), log=lambda s: None)
    assert STEPS.index("partition") < STEPS.index("subset-teachers") < STEPS.index("experts") < STEPS.index("report")
    assert done.report().to_json() == json.loads((tiny / "work" / "report.json").read_text())


def test_a_step_command_runs_only_the_steps_it_needs():
    """`trainer partition` on the data set's groups needs no model; on the 3H's confusions it needs
    the pruned generalists, so the teacher and prune run first; the report needs them all."""
    from trainer.cli import config_from
    from trainer.pipeline import steps_for

    assert steps_for(config_from(parse_args(["partition"])), "partition") == ["partition"]
    assert steps_for(config_from(parse_args(["partition", "--partition", "confusion"])), "partition") == ["teacher", "prune", "partition"]
    everything = ["teacher", "prune", "baselines", "partition", "subset-teachers", "experts", "report"]
    assert steps_for(config_from(parse_args(["report"])), "report") == everything


def test_epochs_control_reuses_the_recipes_experts_and_trains_longer_ones_apart(tiny, tmp_path):
    """`trainer epochs-control`: at the recipe's epochs it scores the experts step's own experts (as
    the report scores them), at another count it trains progressive and static apart from them, its
    gap is progressive minus static, and a re-run trains nothing; unknown experts are refused."""
    import shutil

    work, out = tmp_path / "work", tmp_path / "out"
    shutil.copytree(tiny / "work", work)
    recipe_files = {p: p.read_bytes() for p in (work / "experts").rglob("*.safetensors")}
    argv = ["epochs-control", "--work", str(work), *TINY, "--threads", "2", "--control-experts", "0,0-1", "--control-epochs", "1,2"]
    assert main([*argv, "--control-out", str(out), "--control-pack", str(tiny / "pack")]) == 0
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["fits"]) == ["0-1/epochs2/seed0", "0/epochs2/seed0"]  # epoch 1 is the recipe's: nothing trained
    assert all(p.read_bytes() == b for p, b in recipe_files.items())
    longer = sorted(p.relative_to(work / "experts").as_posix() for p in (work / "experts" / "epochs2").rglob("*.safetensors"))
    assert longer == sorted(f"epochs2/{kind}/seed0/expert-{k}.safetensors" for kind in ("progressive", "static") for k in ("0", "0-1"))
    report = json.loads((work / "report.json").read_text())
    for key in ("0", "0-1"):
        for kind in ("progressive", "static"):
            assert res["per_expert"]["1"][key][kind]["target"]["values"] == report["experts"][key][kind]["target"]["values"][:1]
    for e in ("1", "2"):
        mean, gap = res["mean_over_experts"][e], res["gap_progressive_minus_static"][e]
        for where in ("target", "overall"):
            assert gap[where]["mean"] == pytest.approx(mean["progressive"][where]["mean"] - mean["static"][where]["mean"], abs=0.011)
    system = res["system_at_pack_tau"]
    assert system["1"]["these_experts"]["mean"] == pytest.approx(
        system["1"]["pack_experts"], abs=0.51
    )  # the pack's own (fp16 logits there)
    assert 0 < system["1"]["offloaded_to_these_pct"] <= system["1"]["alpha_pct"]
    table = (out / "results.md").read_text()
    gap2 = res["gap_progressive_minus_static"]["2"]["overall"]
    assert "| 2 | " in table and f"| {gap2['mean']:.2f} ± {gap2['std']:.2f} |" in table
    assert main([*argv, "--control-out", str(tmp_path / "again"), "--control-pack", str(tiny / "pack")]) == 0
    assert json.loads((tmp_path / "again" / "results.json").read_text()) == res
    with pytest.raises(SystemExit, match="unknown"):
        main([*argv[:-4], "--control-experts", "0,9", "--control-epochs", "1"])
