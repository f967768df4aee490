"""Frame sources: camera, video file, RTSP/GStreamer URL, image folder, dataset split, replay.

Every source yields Frame objects in order. A *live* source (camera, network stream) runs ahead
of the pipeline and only its newest frames matter; a *lossless* one (file, folder, dataset,
recording) must never lose a frame, so the pipeline applies backpressure to it instead. The
`--source` text is parsed by `askexpert.sources_spec`, as everywhere else.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from askexpert import metrics
from askexpert.datasets import load_dataset
from askexpert.frames import dataset_frames
from askexpert.log import get_logger
from askexpert.recording import Recording, RecordingError
from askexpert.sources_spec import SourceError, SourceSpec, is_live_target, parse_source

log = get_logger("edge_node.sources")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}


@dataclass
class Frame:
    frame_id: int
    image: np.ndarray  # uint8 (H, W) or (H, W, C); BGR when colour, as OpenCV reads it
    t_capture: float  # unix seconds
    label: int | None = None  # ground truth where the source knows it (datasets, recordings)


class Source(ABC):
    live: bool = False
    description: str = ""

    @abstractmethod
    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None:
        """Release devices and files."""

    def interrupt(self) -> None:
        """From another thread: make frames() end soon (a stop while a live source waits to reopen)."""


class Pacer:
    """Sleeps so that frames leave at `fps` (None: as fast as the consumer takes them)."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if self.period:
            delay = self.next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.next = max(self.next + self.period, time.monotonic() - self.period)


class DatasetSource(Source):
    """`dataset:NAME:SPLIT`: the split in order; frame id = index in the split."""

    def __init__(self, name: str, split: str, fps: float | None) -> None:
        self.data = load_dataset(name, split)
        self.fps = fps
        self.description = f"dataset:{name}:{split}"

    def frames(self) -> Iterator[Frame]:
        pacer = Pacer(self.fps)
        for i, image, label in dataset_frames(self.data):
            pacer.wait()
            yield Frame(i, image, time.time(), label)


class FolderSource(Source):
    """`dir:PATH`: every image in the folder, sorted by name; unreadable files are skipped, logged."""

    def __init__(self, path: Path, fps: float | None, on_bad: Callable[[str], None] | None = None) -> None:
        if not path.is_dir():
            raise SourceError(f"{path} is not a folder")
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.fps, self.on_bad = fps, on_bad
        self.description = f"dir:{path}"

    def frames(self) -> Iterator[Frame]:
        pacer = Pacer(self.fps)
        for i, path in enumerate(self.files):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None or image.dtype != np.uint8:
                log.warning("unreadable image skipped", path=str(path))
                if self.on_bad:
                    self.on_bad("unreadable-image")
                continue
            if image.ndim == 3 and image.shape[2] == 4:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
            pacer.wait()
            yield Frame(i, image, time.time())


class CaptureSource(Source):
    """OpenCV VideoCapture: a camera index, a video file, an RTSP/HTTP URL or a GStreamer pipeline.

    A live one (camera, stream) that drops (USB unplug, RTSP hiccup) is reopened with exponential
    backoff, for as long as it takes: counted in `ate_source_reconnects_total{outcome}` and logged,
    instead of ending the stream (and the process, with exit 0) on the first failed read.
    """

    def __init__(self, spec: str, fps: float | None, live: bool | None = None, backoff_s: tuple[float, float] = (0.5, 30.0)) -> None:
        self.spec = spec
        self.live = is_live_target(spec) if live is None else live
        self.fps = None if self.live else fps
        self.backoff_s = backoff_s
        self.description = spec
        self.closed = threading.Event()
        self.cap = self._open()
        if not self.cap.isOpened():
            raise SourceError(f"OpenCV cannot open {spec!r}")

    def _open(self) -> cv2.VideoCapture:
        target: int | str = int(self.spec) if self.spec.isdigit() else self.spec
        return cv2.VideoCapture(target, cv2.CAP_GSTREAMER if "!" in self.spec else cv2.CAP_ANY)

    def _reopen(self) -> bool:
        """Reopen until it works (True) or the source is closed (False), waiting longer each time."""
        self.cap.release()
        delay, tries = self.backoff_s[0], 0
        while not self.closed.wait(delay):
            tries += 1
            self.cap = self._open()
            if self.cap.isOpened():
                metrics.SOURCE_RECONNECTS.labels("ok").inc()
                log.info("live source reopened", source=self.spec, tries=tries)
                return True
            self.cap.release()
            metrics.SOURCE_RECONNECTS.labels("failed").inc()
            if tries == 1 or delay >= self.backoff_s[1]:
                log.warning("live source still unavailable; retrying", source=self.spec, tries=tries, next_in_s=delay)
            delay = min(delay * 2, self.backoff_s[1])
        return False

    def frames(self) -> Iterator[Frame]:
        pacer = Pacer(self.fps)
        i = 0
        while not self.closed.is_set():
            ok, image = self.cap.read()
            if not ok:
                if not self.live:
                    return
                log.warning("live source dropped; reopening", source=self.spec, frames_so_far=i)
                if not self._reopen():
                    return
                continue
            pacer.wait()
            yield Frame(i, image, time.time())
            i += 1

    def interrupt(self) -> None:
        self.closed.set()  # ends a reopen wait; the capture itself is released by close(), in the reading thread

    def close(self) -> None:
        self.closed.set()
        self.cap.release()


@dataclass
class ReplayFrame(Frame):
    t_recorded: float = 0.0  # the frame's timestamp in the recording


class ReplaySource(Source):
    """`replay:DIR[?pace=recorded|max|F]`: a recording (askexpert.recording), lossless, in order.

    Pacing, in this order of precedence:
      - `--fps F` (F > 0): F frames per second;  `--fps 0`: as fast as backpressure allows;
      - `?pace=max` (as fast as possible), `?pace=recorded` (the default) or `?pace=F` (F frames per second);
      - otherwise the recorded pace: frames leave with the gaps between their recorded timestamps.
    Frame ids are the recording's frame indices and labels come from its sidecar. A replayed frame's
    `t_capture` is the time it left the source (so latency is measured live); the recorded timestamp
    travels beside it as `t_recorded`.
    """

    live = False

    def __init__(self, path: str | Path, fps: float | None = None, pace: str = "recorded") -> None:
        try:
            self.rec = Recording(path)
        except RecordingError as exc:
            raise SourceError(str(exc)) from exc
        if fps is not None:
            pace = "max" if fps <= 0 else str(fps)
        if pace not in ("recorded", "max"):
            try:
                if float(pace) <= 0:
                    pace = "max"
            except ValueError as exc:
                raise SourceError(f"replay pace must be recorded, max or a number, got {pace!r}") from exc
        self.pace = pace
        self.classes = self.rec.classes
        self.description = f"replay:{path} (pace {pace}, {len(self.rec)} frames)"

    def frames(self) -> Iterator[Frame]:
        if self.pace == "recorded":
            yield from self._recorded_pace()
            return
        pacer = Pacer(None if self.pace == "max" else float(self.pace))
        for rf in self.rec.frames():
            pacer.wait()
            yield ReplayFrame(rf.index, rf.image, time.time(), rf.label, rf.t_capture)

    def _recorded_pace(self) -> Iterator[Frame]:
        start = t0 = None
        for rf in self.rec.frames():
            if start is None:
                start, t0 = time.monotonic(), rf.t_capture
            delay = start + (rf.t_capture - t0) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield ReplayFrame(rf.index, rf.image, time.time(), rf.label, rf.t_capture)


# Every source kind, in one table (the kinds are askexpert.sources_spec's).
SOURCE_KINDS: dict[str, Callable[[SourceSpec, float | None], Source]] = {
    "dataset": lambda s, fps: DatasetSource(s.name, s.split, fps),
    "dir": lambda s, fps: FolderSource(Path(s.path), fps),
    "replay": lambda s, fps: ReplaySource(s.path, fps, s.pace),
    "capture": lambda s, fps: CaptureSource(s.text, fps),
}


def open_source(spec: str, fps: float | None = None) -> Source:
    """Open a --source value."""
    parsed = parse_source(spec)
    return SOURCE_KINDS[parsed.kind](parsed, fps)
