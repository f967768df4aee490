"""The recording format: a lossless video, a CSV sidecar and a small meta.json, in one folder.

    DIR/video.mkv    FFV1 (lossless) in Matroska; PNG-in-AVI (video.avi) where FFV1 is unavailable.
                     Grey frames are written grey and come back bit-exact; colour frames are BGR.
    DIR/frames.csv   frame,t_capture,label   (frame index from 0, unix seconds, true class index
                     or empty where unknown): one row per video frame, in order.
    DIR/meta.json    format, version, video file and codec, fps, width, height, channels, frames,
                     classes (names, or null), source, created.

Any tool opens it: ffprobe/VLC play the video, a spreadsheet reads the CSV. Shared by the edge node
(`edge-node record`, the `replay:DIR` source) and evaluation (rendering a data set split, truth
and frames for the scorer and the demo's offline check).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

FORMAT = "ate-recording"
VERSION = 1
META = "meta.json"
SIDECAR = "frames.csv"
# (fourcc, file name): tried in order; both round-trip grey and BGR frames bit-exactly here.
CODECS = (("FFV1", "video.mkv"), ("png ", "video.avi"))


class RecordingError(RuntimeError):
    """A recording that cannot be written or read."""


@dataclass
class RecordedFrame:
    index: int
    image: np.ndarray  # uint8 (H, W, C), C = 1 (grey) or 3 (BGR)
    t_capture: float  # unix seconds, as recorded
    label: int | None


def _as_hwc(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise RecordingError(f"frames must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise RecordingError(f"frames must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    return image


class RecordingWriter:
    """Append frames to a new recording; size and channels are fixed by the first frame."""

    def __init__(self, out_dir: str | Path, fps: float = 30.0, classes: list[str] | None = None, source: str = "") -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / META).exists():
            raise RecordingError(f"{self.dir} already holds a recording")
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.classes, self.source = classes, source
        self.writer: cv2.VideoWriter | None = None
        self.codec = self.video = ""
        self.shape: tuple[int, int, int] | None = None
        self.count = 0
        self._csv_file = open(self.dir / SIDECAR, "w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["frame", "t_capture", "label"])

    def _open(self, shape: tuple[int, int, int]) -> None:
        h, w, c = shape
        for fourcc, name in CODECS:
            path = self.dir / name
            vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), self.fps, (w, h), isColor=c == 3)
            if vw.isOpened():
                self.writer, self.codec, self.video, self.shape = vw, fourcc.strip(), name, shape
                return
            vw.release()
            path.unlink(missing_ok=True)
        raise RecordingError("OpenCV can write neither FFV1/MKV nor PNG/AVI here")

    def write(self, image: np.ndarray, t_capture: float | None = None, label: int | None = None) -> int:
        """Append one frame (grey or BGR); returns its index in the recording."""
        image = _as_hwc(image)
        if self.writer is None:
            self._open(image.shape)
        if image.shape != self.shape:
            raise RecordingError(f"frame {self.count} is {image.shape}, the recording is {self.shape}")
        self.writer.write(np.ascontiguousarray(image[:, :, 0] if image.shape[2] == 1 else image))
        t = time.time() if t_capture is None else float(t_capture)
        self._csv.writerow([self.count, repr(t), "" if label is None else int(label)])
        self.count += 1
        return self.count - 1

    def close(self) -> dict:
        """Finish the video and sidecar, write meta.json; returns the meta."""
        if self.writer is not None:
            self.writer.release()
        self._csv_file.close()
        h, w, c = self.shape or (0, 0, 0)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "video": self.video,
            "codec": self.codec,
            "sidecar": SIDECAR,
            "fps": self.fps,
            "width": w,
            "height": h,
            "channels": c,
            "frames": self.count,
            "classes": self.classes,
            "source": self.source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (self.dir / META).write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Sidecar:
    frames: np.ndarray  # int64 (N,)
    t_capture: np.ndarray  # float64 (N,)
    labels: np.ndarray  # int64 (N,), -1 where unknown


class Recording:
    """A recording folder opened for reading."""

    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)
        meta_path = self.dir / META
        if not meta_path.is_file():
            raise RecordingError(f"{self.dir} is not a recording (no {META})")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise RecordingError(f"{meta_path}: not an {FORMAT} v{VERSION} recording")
        self.sidecar = read_sidecar(self.dir / self.meta.get("sidecar", SIDECAR))

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    def __len__(self) -> int:
        return len(self.sidecar.frames)

    def truth(self) -> dict[int, int]:
        """frame index -> true label, for the frames whose label is known."""
        s = self.sidecar
        return {int(f): int(lab) for f, lab in zip(s.frames, s.labels) if lab >= 0}

    def frames(self) -> Iterator[RecordedFrame]:
        """Every frame in order, decoded bit-exactly (grey frames come back (H, W, 1))."""
        cap = cv2.VideoCapture(str(self.dir / self.meta["video"]))
        if not cap.isOpened():
            raise RecordingError(f"OpenCV cannot open {self.dir / self.meta['video']}")
        grey = int(self.meta["channels"]) == 1
        try:
            for i in range(len(self)):
                ok, image = cap.read()
                if not ok:
                    raise RecordingError(f"{self.dir}: video ends at frame {i}, sidecar has {len(self)}")
                if grey:
                    image = image[:, :, :1].copy() if image.ndim == 3 else image[:, :, None]
                yield RecordedFrame(
                    int(self.sidecar.frames[i]),
                    image,
                    float(self.sidecar.t_capture[i]),
                    int(self.sidecar.labels[i]) if self.sidecar.labels[i] >= 0 else None,
                )
        finally:
            cap.release()


def read_sidecar(path: Path) -> Sidecar:
    frames, times, labels = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            frames.append(int(row["frame"]))
            times.append(float(row["t_capture"]))
            labels.append(int(row["label"]) if row.get("label", "") != "" else -1)
    return Sidecar(np.asarray(frames, dtype=np.int64), np.asarray(times, dtype=np.float64), np.asarray(labels, dtype=np.int64))
