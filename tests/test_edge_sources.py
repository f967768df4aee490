"""Live sources keep only the newest frames (drops counted); lossless sources lose none."""

from __future__ import annotations

import time
from typing import Iterator

import cv2
import numpy as np
import pytest
from helpers import Collector

from askexpert.backends import open_backend
from askexpert.frames import fit_frame
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.sources_spec import SourceError, parse_source
from edge_node.node import EdgeNode
from edge_node.settings import EdgeSettings
from edge_node.sources import Frame, Source, open_source


class FastCamera(Source):
    """A live source that produces frames far faster than the edge can classify them."""

    live = True
    description = "fast-camera"

    def __init__(self, n: int) -> None:
        self.n = n

    def frames(self) -> Iterator[Frame]:
        img = np.zeros((28, 28, 1), np.uint8)
        for i in range(self.n):
            yield Frame(i, img, time.time())


def test_live_source_drops_oldest_and_counts(tiny_pack, broker):
    pack = Pack.load(tiny_pack)
    s = EdgeSettings(broker=broker.url, pack=tiny_pack, node_id="live1", tau=0.0, batch_size=4, live_queue=2, stats_interval_s=0)
    client = MqttClient(s, "edge", "live1")
    node = EdgeNode(s, pack, open_backend("torch").classifier(pack, pack.manifest.generalist), client)
    sub = Collector(broker.url, "ate/v1/nodes/live1/labels")
    client.start()
    assert client.wait_connected(10)
    stats = node.run(FastCamera(3000))
    client.stop()
    labels = sub.wait_labels(stats.frames, timeout=10)
    sub.close()
    assert stats.dropped > 0 and stats.frames + stats.dropped == 3000
    ids = [m.frame_id for m in labels]
    assert len(ids) == len(set(ids)) == stats.frames
    assert max(ids) == 2999, "the newest frame is never the one dropped"


def test_folder_source_sorted_skips_corrupt(tmp_path):
    for name, value in (("b.png", 20), ("a.png", 10), ("c.jpg", 30)):
        cv2.imwrite(str(tmp_path / name), np.full((40, 50, 3), value, np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    frames = list(open_source(f"dir:{tmp_path}").frames())
    assert [int(f.image.mean()) for f in frames] == [10, 20, 30]


def test_fit_frame_resizes_and_converts():
    from askexpert.pack import InputSpec

    grey = InputSpec(size=28, channels=1, mean=[0.5], std=[0.5])
    colour = InputSpec(size=32, channels=3, mean=[0.5] * 3, std=[0.5] * 3)
    assert fit_frame(np.zeros((480, 640, 3), np.uint8), grey).shape == (28, 28, 1)
    assert fit_frame(np.zeros((28, 28), np.uint8), grey).shape == (28, 28, 1)
    bgr = np.zeros((10, 10, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's BGR
    out = fit_frame(bgr, colour)
    assert out.shape == (32, 32, 3) and out[0, 0, 2] == 255 and out[0, 0, 0] == 0  # models see RGB


def test_colour_dataset_frames_are_bgr_and_reach_the_model_as_rgb(tmp_path):
    from askexpert.pack import InputSpec

    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 2] = 255  # red, in OpenCV's BGR order on disk
    (tmp_path / "red").mkdir()
    cv2.imwrite(str(tmp_path / "red" / "a.png"), red)
    (frame,) = open_source(f"dataset:folder:{tmp_path}:test").frames()
    assert frame.image[0, 0].tolist() == [0, 0, 255], "frames are BGR, like a camera's"
    rgb = fit_frame(frame.image, InputSpec(size=8, channels=3, mean=[0.5] * 3, std=[0.5] * 3))
    assert rgb[0, 0].tolist() == [255, 0, 0], "the model sees RGB, as in training"


@pytest.mark.parametrize(
    "text, kind, parts, truth",
    [
        ("dataset:fashion-mnist:test", "dataset", {"name": "fashion-mnist", "split": "test"}, True),
        ("dataset:folder:/data/x:train", "dataset", {"name": "folder:/data/x", "split": "train"}, True),
        ("dir:/tmp/imgs", "dir", {"path": "/tmp/imgs"}, False),
        ("replay:/r/rec?pace=max", "replay", {"path": "/r/rec", "pace": "max", "recording": "/r/rec"}, True),
        ("replay:/r/rec", "replay", {"path": "/r/rec", "pace": "recorded"}, True),
        ("0", "capture", {"path": "0"}, False),
        ("rtsp://cam:554/s?x=1", "capture", {"path": "rtsp://cam:554/s?x=1"}, False),
        ("/r/rec?pace=max", "capture", {"recording": "/r/rec"}, False),
    ],
)
def test_one_grammar_for_every_source(text, kind, parts, truth):
    """The edge, `record` and the evaluation's truth all read a source with askexpert.sources_spec."""
    spec = parse_source(text)
    assert (spec.kind, spec.has_truth) == (kind, truth)
    assert {k: getattr(spec, k) for k in parts} == parts


def test_a_dataset_source_without_a_split_is_refused():
    with pytest.raises(SourceError, match="NAME:SPLIT"):
        open_source("dataset:fashion-mnist")


def test_replay_source_needs_no_import_side_effect(tmp_path):
    """`replay:` is in the source table itself, beside the other sources: opening a recording
    imports no recording command (no import circle between sources and recording)."""
    import subprocess
    import sys

    code = (
        "import sys; from edge_node.sources import open_source, SourceError\n"
        "try:\n    open_source(sys.argv[1])\nexcept SourceError as e:\n    print(e)\n"
        "assert 'edge_node.recording' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code, f"replay:{tmp_path}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "not a recording" in out.stdout


def _write_video(path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(n):
        writer.write(np.full((32, 32, 3), i * 20, np.uint8))
    writer.release()


def _reconnects(outcome: str) -> float:
    from askexpert import metrics

    return metrics.SOURCE_RECONNECTS.labels(outcome)._value.get()


def test_a_live_source_that_drops_is_reopened_with_backoff_and_counted(tmp_path):
    """A real VideoCapture on a real file, read as a live source: at its end the stream "drops",
    the file disappears, reopening fails (counted) until the file is back, then frames go on."""
    import threading

    video = tmp_path / "cam.avi"
    _write_video(video, 5)
    hidden = tmp_path / "unplugged.avi"
    ok0, failed0 = _reconnects("ok"), _reconnects("failed")
    from edge_node.sources import CaptureSource

    source = CaptureSource(str(video), None, live=True, backoff_s=(0.01, 0.04))
    video.rename(hidden)  # unplugged while the first 5 frames are read
    frames = source.frames()
    got = [next(frames).frame_id for _ in range(5)]

    def plug_back_in() -> None:
        while _reconnects("failed") - failed0 < 3:
            time.sleep(0.01)
        hidden.rename(video)

    threading.Thread(target=plug_back_in, daemon=True).start()
    got += [next(frames).frame_id for _ in range(5)]  # blocks while it retries, then reads the file again
    source.close()
    assert got == list(range(10))
    assert _reconnects("ok") - ok0 == 1 and _reconnects("failed") - failed0 >= 3
    assert list(frames) == []  # closed: the stream ends instead of retrying


def test_a_frozen_live_source_turns_the_edge_unhealthy(tiny_pack, broker, tmp_path):
    from edge_node.sources import CaptureSource

    video = tmp_path / "cam.avi"
    _write_video(video, 3)
    source = CaptureSource(str(video), None, live=True, backoff_s=(0.05, 0.05))
    video.unlink()  # gone for good: the source keeps retrying, no frame comes
    pack = Pack.load(tiny_pack)
    s = EdgeSettings(broker=broker.url, pack=tiny_pack, node_id="frozen1", tau=0.0, max_frame_age_s=0.5, stats_interval_s=0)
    client = MqttClient(s, "edge", "frozen1")
    node = EdgeNode(s, pack, open_backend("torch").classifier(pack, pack.manifest.generalist), client)
    client.start()
    assert client.wait_connected(10)
    import threading

    runner = threading.Thread(target=node.run, args=(source,), daemon=True)
    runner.start()
    seen = []
    end = time.monotonic() + 10
    while time.monotonic() < end and (not seen or seen[-1]["healthy"]):
        seen.append(node.health())
        time.sleep(0.05)
    node.stop()  # alone: it must end a reader that waits for the source to come back (SIGTERM in a container)
    runner.join(10)
    client.stop()
    assert seen[0]["healthy"] and not seen[-1]["healthy"]
    assert seen[-1]["connected"] and seen[-1]["last_frame_age_s"] >= 0.5 and seen[-1]["frames"] == 3  # reported rounded to ms
    assert not runner.is_alive()
