"""The grammar of a frame source, parsed in one place: the edge's `--source`, `edge-node record
--source` and the evaluation's truth (`--truth`, the demo) all read the same text the same way.

    dataset:NAME:SPLIT                 a data set split, frame id = index (NAME may hold ':': folder:/data)
    dir:PATH                           every image in a folder, sorted by name
    replay:DIR[?pace=recorded|max|F]   a recording, frame id = the recording's frame index
    anything else                      OpenCV's VideoCapture: a camera index, a video file, an RTSP/HTTP
                                       URL or a GStreamer pipeline (`!`); also a bare recording folder as truth
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs

SourceKind = Literal["dataset", "dir", "replay", "capture"]
PREFIXED: tuple[SourceKind, ...] = ("dataset", "dir", "replay")


class SourceError(RuntimeError):
    """A source that cannot be opened (its text included)."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: its kind and the parts that kind needs."""

    text: str  # as given
    kind: SourceKind
    path: str = ""  # dir: and replay: (without the query); capture: the whole text
    name: str = ""  # dataset:
    split: str = ""  # dataset:
    pace: str = "recorded"  # replay: as written; the replay source checks it

    @property
    def has_truth(self) -> bool:
        """Whether the frames come with their true labels (a data set split, a recording)."""
        return self.kind in ("dataset", "replay")

    @property
    def recording(self) -> str:
        """The recording folder a truth spec names: `replay:DIR[?pace=...]` or the bare folder."""
        return self.path if self.kind == "replay" else self.text.partition("?")[0]


def is_live_target(target: str) -> bool:
    """A VideoCapture target that is live (a camera index, a URL or a GStreamer pipeline): it runs
    ahead of the pipeline and only its newest frames matter; a video file is lossless."""
    return target.isdigit() or "://" in target or "!" in target


def parse_source(text: str) -> SourceSpec:
    """`text` as a SourceSpec; SourceError when a known prefix lacks what it needs."""
    kind, sep, arg = text.partition(":")
    if not sep or kind not in PREFIXED:
        return SourceSpec(text=text, kind="capture", path=text)
    if kind == "dataset":
        name, _, split = arg.rpartition(":")
        if not name:
            raise SourceError(f"dataset source needs NAME:SPLIT, got {arg!r}")
        return SourceSpec(text=text, kind="dataset", name=name, split=split)
    if kind == "replay":
        path, _, query = arg.partition("?")
        return SourceSpec(text=text, kind="replay", path=path, pace=parse_qs(query).get("pace", ["recorded"])[-1])
    return SourceSpec(text=text, kind="dir", path=arg)
