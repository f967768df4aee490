"""Record then replay: the same frames (bit-exact), labels and timestamps; replay pacing."""

from __future__ import annotations

import numpy as np
import pytest

from askexpert.recording import Recording, RecordingWriter
from edge_node.recording import record
from edge_node.sources import ReplaySource, open_source
from evaluation.render import render_dataset


def _frames(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(28, 28, 1), (24, 32, 3)])
def test_write_then_replay_is_bit_exact(tmp_path, shape):
    imgs = _frames(40, shape)
    times = 1_700_000_000.0 + np.arange(40) * 0.04 + np.random.default_rng(1).uniform(0, 0.01, 40)
    with RecordingWriter(tmp_path / "rec", fps=25, classes=["a", "b"]) as w:
        for i, im in enumerate(imgs):
            w.write(im, times[i], i % 2 if i % 5 else None)
    rec = Recording(tmp_path / "rec")
    assert rec.meta["channels"] == shape[2] and rec.meta["frames"] == 40 and rec.classes == ["a", "b"]
    got = list(ReplaySource(tmp_path / "rec", fps=0).frames())
    assert [f.frame_id for f in got] == list(range(40))
    for i, f in enumerate(got):
        assert f.image.shape == shape and np.array_equal(f.image, imgs[i])
        assert f.t_recorded == times[i]  # repr round-trips floats exactly
        assert f.label == (None if i % 5 == 0 else i % 2)
    assert rec.truth()[1] == 1 and 0 not in rec.truth()


def test_record_dataset_source_then_replay(tmp_path):
    meta = record("dataset:fashion-mnist:test", tmp_path / "r", max_frames=50)
    assert meta["frames"] == 50 and meta["channels"] == 1 and meta["classes"][0] == "T-shirt/top"
    src = open_source(f"replay:{tmp_path / 'r'}?pace=max")
    assert not src.live
    ref = open_source("dataset:fashion-mnist:test")
    for a, b in zip(src.frames(), ref.frames()):
        assert a.frame_id == b.frame_id and a.label == b.label and np.array_equal(a.image, b.image)
    # re-record a replay: a recording of a recording is the same recording
    record(f"replay:{tmp_path / 'r'}?pace=max", tmp_path / "r2")
    r1, r2 = Recording(tmp_path / "r"), Recording(tmp_path / "r2")
    assert np.array_equal(r1.sidecar.labels, r2.sidecar.labels) and r2.classes == r1.classes
    for a, b in zip(r1.frames(), r2.frames()):
        assert np.array_equal(a.image, b.image)


def test_replay_paces_at_recorded_rate_and_fps(tmp_path):
    """Frames never leave before their recorded offset (a lower bound that holds on a busy box,
    unlike an upper one); --fps and ?pace= choose the pacing."""
    render_dataset("fashion-mnist", "test", tmp_path / "r", fps=50, max_frames=11, start=100.0)
    rec = Recording(tmp_path / "r")
    assert np.allclose(np.diff(rec.sidecar.t_capture), 0.02)
    frames = list(open_source(f"replay:{tmp_path / 'r'}").frames())  # recorded pace: 10 gaps of 20 ms
    assert [f.t_recorded for f in frames] == list(rec.sidecar.t_capture)
    left = np.array([f.t_capture for f in frames]) - frames[0].t_capture
    assert np.all(left >= (np.array(rec.sidecar.t_capture) - rec.sidecar.t_capture[0]) - 0.002)
    fast = open_source(f"replay:{tmp_path / 'r'}", fps=200)  # --fps overrides the recorded pace
    assert float(fast.pace) == 200 and [f.frame_id for f in fast.frames()] == list(range(11))
    flat_out = open_source(f"replay:{tmp_path / 'r'}?pace=max")
    assert flat_out.pace == "max" and [f.frame_id for f in flat_out.frames()] == list(range(11))
