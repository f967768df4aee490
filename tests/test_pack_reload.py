"""Pack hot reload (SIGHUP) during a live stream: a hub and an edge take a new pack version with
no frame lost or labelled twice, no more fallbacks than the same stream without the reload, every
expert label names the pack version that answered it (checked against both packs' experts run
offline), and a pack with a bad checksum is refused while serving goes on."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import Collector, start_hub, stop, wait_hub_online

from askexpert.backends import open_backend
from askexpert.datasets import load_dataset
from askexpert.localbroker import edge_args, spawn
from askexpert.pack import Pack
from askexpert.protocol import labels_topic, status_topic

FRAMES = 800  # at 100 frames/s: 8 s of stream
SLOW_BOX_DEADLINE_MS = 60000


def corrupt_copy(src: Path, dst: Path) -> Path:
    """`src` with one byte of its generalist and of every expert flipped: the manifest's sha256 no longer match."""
    shutil.copytree(src, dst)
    m = Pack.load(dst).manifest
    for entry in (m.generalist, *m.experts):
        path = dst / entry.file
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    return dst


def point(link: Path, target: Path) -> None:
    """Swap what `link` names in one step (rename over it), as `ln -sfn` does for an operator."""
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    tmp.replace(link)


def wait_for(sub: Collector, node: str, done, timeout: float = 60) -> None:
    """Until done(labels of `node`) or timeout."""
    deadline = time.monotonic() + timeout
    while not done([m for m in sub.labels() if m.node == node]) and time.monotonic() < deadline:
        time.sleep(0.05)


def stream(broker, link: Path, node: str) -> subprocess.Popen:
    # a deadline no busy box reaches (the reload builds models on two cores beside the serving):
    # a fallback here is a frame the swap lost, not a slow one
    args = edge_args(str(link), broker.url, node, FRAMES, "--fps", "100", "--tau", "1.0", "--deadline-ms", str(SLOW_BOX_DEADLINE_MS))
    return spawn("edge_node.cli", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(edge: subprocess.Popen) -> dict:
    out, err = edge.communicate(timeout=120)
    assert edge.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def offline_expert_labels(packs: list[Path], n: int) -> dict[tuple[str, str], list[int]]:
    """(version, expert key) -> each frame's expert label, computed in one process."""
    images = load_dataset("fashion-mnist", "test").images[:n]
    backend, out = open_backend("torch"), {}
    for root in packs:
        pack = Pack.load(root)
        lib = backend.experts(pack, pack.manifest.experts)
        for key in lib.keys:
            out[pack.version, key] = list(lib(images, [key] * n).argmax(axis=1))
    return out


@pytest.mark.slow
def test_hot_reload_during_a_live_stream(tiny_pack, broker, tmp_path):
    from trainer.export import build_random_pack

    v2 = build_random_pack(tmp_path / "v2", seed=1)  # same classes and partition (pack id), other weights
    bad = corrupt_copy(tiny_pack, tmp_path / "bad")
    v1_version, v2_version = Pack.load(tiny_pack).version, Pack.load(v2).version
    assert Pack.load(v2).pack_id == Pack.load(tiny_pack).pack_id and v1_version != v2_version
    link = tmp_path / "current"
    link.symlink_to(tiny_pack)
    sub = Collector(broker.url, labels_topic("ate/v1", "+"), status_topic("ate/v1", "+", "+"))
    hub = start_hub(link, broker.url, "--hub-id", "rh", "--reload-drain-s", "1", "--max-time-left-ms", str(SLOW_BOX_DEADLINE_MS))
    try:
        wait_hub_online(broker.url, "rh")
        baseline = finish(stream(broker, link, "plain"))  # the same stream, no reload
        edge = stream(broker, link, "swap")
        wait_for(sub, "swap", lambda labels: len(labels) >= 100)
        point(link, v2)
        for proc in (hub, edge):
            proc.send_signal(signal.SIGHUP)
        wait_for(sub, "swap", lambda labels: any(m.pack_version == v2_version for m in labels))
        point(link, bad)
        for proc in (hub, edge):
            proc.send_signal(signal.SIGHUP)
        summary = finish(edge)
        sub.wait_labels(2 * FRAMES, timeout=20)
        assert hub.poll() is None, "the hub serves on after the refused pack"
    finally:
        err = stop(hub)
        sub.close()
        (tmp_path / "hub.err").write_text(err)
    labels = [m for m in sub.labels() if m.node == "swap"]
    per_frame = Counter(m.frame_id for m in labels)
    assert len(per_frame) == FRAMES and max(per_frame.values()) == 1, "0 missing, 0 duplicates"
    assert summary["fallback"] <= baseline["fallback"], (summary, baseline)
    versions = [m.pack_version for m in sorted(labels, key=lambda m: m.frame_id)]
    assert set(versions) == {v1_version, v2_version}
    expected = offline_expert_labels([tiny_pack, v2], FRAMES)
    experts = [m for m in labels if m.source == "expert"]
    wrong = [m.frame_id for m in experts if expected[m.pack_version, m.expert][m.frame_id] != m.label]
    assert not wrong, f"labels that the pack they name did not make: {wrong[:10]}"
    statuses = {}
    with sub.lock:
        for topic, payload in sub.raw:
            if "/status/" in topic and payload and "pack_reload" in (status := json.loads(payload)):
                statuses[topic] = status  # the last that reported a reload (not the final `offline`)
    for role, ident in (("hub", "rh"), ("edge", "swap")):
        last = statuses[status_topic("ate/v1", role, ident)]
        assert last["pack_version"] == v2_version, (role, last)
        assert last["pack_reload"]["result"] == "refused" and "corrupt" in last["pack_reload"]["error"], (role, last)
    assert "pack reload refused" in err


def test_a_new_routing_or_input_is_refused(tiny_pack):
    from askexpert.pack import PackError
    from askexpert.reload import check_replaces

    old = Pack.load(tiny_pack)
    m = old.manifest
    check_replaces(old, Pack(old.root, m.model_copy(update={"tau": 0.42})))  # a new tau: same routing
    rerouted = Pack(old.root, m.model_copy(update={"partition": list(reversed(m.partition))}))
    with pytest.raises(PackError, match="needs a restart"):
        check_replaces(old, rerouted)
    resized = Pack(old.root, m.model_copy(update={"input": m.input.model_copy(update={"size": 32})}))
    with pytest.raises(PackError, match="other input"):
        check_replaces(old, resized)


def test_the_edge_takes_the_new_packs_tau_unless_an_operator_set_one(tiny_pack):
    from askexpert.mqtt import MqttClient
    from edge_node.node import EdgeNode
    from edge_node.settings import EdgeSettings

    pack = Pack.load(tiny_pack)
    s = EdgeSettings(pack=tiny_pack, node_id="taus", stats_interval_s=0)
    classifier = open_backend("torch").classifier(pack, pack.manifest.generalist)
    node = EdgeNode(s, pack, classifier, MqttClient(s, "edge", "taus", announce=False))
    v2 = Pack(pack.root, pack.manifest.model_copy(update={"tau": 0.42}))
    node.install(v2, classifier)
    assert node.tau.value == 0.42 and node._incoming is not None and node._incoming.pack.version == v2.version
    node.tau.set(0.3, source="mqtt")  # the operator's word stands from here on
    node.install(Pack(pack.root, pack.manifest.model_copy(update={"tau": 0.55})), classifier)
    assert node.tau.value == 0.3


@pytest.mark.parametrize("component, broken", [("edge", "expert"), ("hub", "generalist")])
def test_a_pack_with_any_bad_file_is_refused(tiny_pack, tmp_path, component, broken):
    """A new version whose file that this component does not run is corrupt on disk (an expert,
    for the edge; the generalist, for a hub) is refused all the same: edge and hub accept or refuse
    the same packs, so no label names a version that is broken on disk."""
    from askexpert.reload import PackReloader
    from trainer.export import build_random_pack

    v2 = build_random_pack(tmp_path / "v2", seed=1)
    m = Pack.load(v2).manifest
    path = v2 / (m.generalist if broken == "generalist" else m.experts[-1]).file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    installed: list = []
    reports: list = []
    reloader = PackReloader(
        component, v2, Pack.load(tiny_pack), lambda pack: "built", lambda pack, built: installed.append(pack), reports.append
    )
    reloader.request()
    reloader.join(30)
    assert installed == [] and reports[-1]["result"] == "refused" and "corrupt" in reports[-1]["error"], reports
