"""The collected-frames folder: offloaded frames with the experts' answers, as the trainer reads them.

    DIR/meta.json      format, version, pack id, classes, input spec, the sampling rules, and the
                       counts (frames seen, offloaded, kept, skipped by reason); rewritten as it goes
    DIR/frames.jsonl   one line per kept frame: image file, node, run, frame id, the expert's label
                       and confidence, the edge's label and confidence, expert subset, hub, the edge's
                       and the hub's pack versions, capture time
    DIR/images/*.png   the frames as the expert saw them (lossless; read back as the same arrays)

Written by `edge-node collect` (edge_node/collect.py) beside an edge, read by `trainer learn`. It is
bounded (`max_frames`, `max_bytes`): a full folder keeps nothing more. Frames stay where this folder
is: nothing here sends them anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

FORMAT, VERSION = "ate-collected", 1
META, INDEX, IMAGES = "meta.json", "frames.jsonl", "images"


class CollectedError(RuntimeError):
    """A collected-frames folder that cannot be written or read."""


@dataclass
class Kept:
    """What is known of one kept frame besides its pixels."""

    node: str
    run: str
    frame_id: int
    label: int  # the expert's answer: the training target
    conf: float  # the expert's confidence
    edge_label: int
    edge_conf: float
    expert: str  # the subset key it was routed to
    hub: str | None
    pack_version: str | None  # the edge's pack, that found the frame hard
    hub_pack_version: str | None  # the pack that answered it
    t_capture: float


class CollectedWriter:
    """Appends kept frames to a new folder, within `max_frames` and `max_bytes` (images and index)."""

    def __init__(self, out: str | Path, meta: dict, max_frames: int, max_bytes: int) -> None:
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()):
            raise CollectedError(f"{self.out} is not empty: collect into a new folder")
        (self.out / IMAGES).mkdir(parents=True)
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.meta = {"format": FORMAT, "version": VERSION, **meta}
        self.count = self.bytes = 0
        self._index = open(self.out / INDEX, "w")
        self.write_meta({})

    def full(self) -> bool:
        return self.count >= self.max_frames or self.bytes >= self.max_bytes

    def add(self, image: np.ndarray, kept: Kept) -> bool:
        """Keep one frame (False, nothing written, when the folder is full)."""
        if self.full():
            return False
        name = f"{IMAGES}/{self.count:07d}.png"
        ok, png = cv2.imencode(".png", image[..., ::-1] if image.shape[-1] == 3 else image)  # RGB frames, BGR files (OpenCV's)
        if not ok:
            raise CollectedError(f"cannot encode a {image.shape} frame as PNG")
        line = json.dumps({"file": name, **asdict(kept)}) + "\n"
        if self.bytes + len(png) + len(line) > self.max_bytes:
            self.bytes = self.max_bytes  # the next frame would pass the bound: full from now on
            return False
        (self.out / name).write_bytes(png.tobytes())
        self._index.write(line)  # after the image: a line always names a whole file
        self._index.flush()
        self.count += 1
        self.bytes += len(png) + len(line)
        return True

    def write_meta(self, counts: dict) -> None:
        """The meta with the latest counts, replaced whole (a reader never sees half of it)."""
        self.meta.update(counts, kept=self.count, bytes=self.bytes)
        tmp = self.out / f".{META}.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1) + "\n")
        os.replace(tmp, self.out / META)

    def close(self, counts: dict) -> None:
        self.write_meta(counts)
        self._index.close()


@dataclass
class Collected:
    """A collected folder in memory: images (N, H, W, C) uint8 and one Kept per image."""

    meta: dict
    images: np.ndarray
    frames: list[Kept]

    def __len__(self) -> int:
        return len(self.frames)

    def column(self, name: str) -> np.ndarray:
        return np.asarray([getattr(k, name) for k in self.frames])


def read_collected(path: str | Path) -> Collected:
    """A folder written by CollectedWriter (CollectedError when it is not one, or is empty)."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
        lines = (path / INDEX).read_text().splitlines()
    except (OSError, ValueError) as exc:
        raise CollectedError(f"{path} is not a collected-frames folder: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CollectedError(f"{path}: format {meta.get('format')} v{meta.get('version')}, want {FORMAT} v{VERSION}")
    if not lines:
        raise CollectedError(f"{path} holds no frames")
    rows = [json.loads(line) for line in lines]
    channels = int(meta["input"]["channels"])
    images = []
    for row in rows:
        im = cv2.imread(str(path / row.pop("file")), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise CollectedError(f"{path}: unreadable image of frame {row.get('frame_id')}")
        images.append(im[..., ::-1] if channels == 3 else im.reshape(*im.shape[:2], 1))
    return Collected(meta, np.stack(images), [Kept(**row) for row in rows])
