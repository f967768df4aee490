"""Record any source to a recording folder, and replay one as a lossless source (`replay:DIR`).

Replay pacing, in this order of precedence:
  - `--fps F` (F > 0): F frames per second;  `--fps 0`: as fast as backpressure allows;
  - `replay:DIR?pace=max` (as fast as possible), `replay:DIR?pace=recorded` (the default) or
    `replay:DIR?pace=F` (F frames per second);
  - otherwise the recorded pace: frames leave with the gaps between their recorded timestamps.
Frame ids are the recording's frame indices and labels come from its sidecar. A replayed frame's
`t_capture` is the time it left the source (so latency is measured live); the recorded timestamp
travels beside it as `t_recorded`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs

from askexpert.log import get_logger
from askexpert.recording import Recording, RecordingError, RecordingWriter
from edge_node.sources import Frame, Pacer, Source, SourceError, open_source

log = get_logger("edge_node.recording")


@dataclass
class ReplayFrame(Frame):
    t_recorded: float = 0.0  # the frame's timestamp in the recording


class ReplaySource(Source):
    """`replay:DIR[?pace=recorded|max|F]`: a recording, lossless, in order."""

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


def open_replay(arg: str, fps: float | None) -> ReplaySource:
    """`replay:DIR[?pace=recorded|fps|none]` (registered in `edge_node.sources.SOURCE_KINDS`)."""
    path, _, query = arg.partition("?")
    pace = parse_qs(query).get("pace", ["recorded"])[-1]
    return ReplaySource(path, fps, pace)


def record(
    source_spec: str,
    out_dir: str | Path,
    *,
    max_frames: int | None = None,
    fps: float | None = None,
    classes: list[str] | None = None,
    progress: bool = False,
) -> dict:
    """Write frames of any source (`--source` syntax) into a new recording; returns its meta.

    The recording's nominal fps is `fps` if given, else measured from the captured timestamps
    (30 when it cannot be measured). Timestamps and true labels (dataset sources) go to the sidecar.
    """
    source = open_source(source_spec, fps)
    if classes is None:  # datasets and recordings know their class names
        classes = getattr(source, "classes", None) or getattr(getattr(source, "data", None), "classes", None)
    times: list[float] = []
    writer = RecordingWriter(out_dir, fps=fps or 30.0, classes=classes, source=source_spec)
    try:
        for frame in source.frames():
            if max_frames is not None and writer.count >= max_frames:
                break
            writer.write(frame.image, frame.t_capture, frame.label)
            times.append(frame.t_capture)
            if progress and writer.count % 1000 == 0:
                log.info("recording", frames=writer.count)
    except KeyboardInterrupt:
        log.warning("recording interrupted", frames=writer.count)
    finally:
        source.close()
        if not fps and len(times) > 1 and times[-1] > times[0]:
            writer.fps = round((len(times) - 1) / (times[-1] - times[0]), 3)
        meta = writer.close()
    log.info("recorded", out=str(out_dir), frames=meta["frames"], codec=meta["codec"], fps=meta["fps"])
    return meta


# ---------------------------------------------------------------------------------------- command line
def add_record_parser(sub) -> None:
    """`edge-node record --source SRC --out DIR [--max-frames N] [--fps F]`."""
    p = sub.add_parser("record", help="write a source to a recording (lossless video + CSV sidecar + meta.json)")
    p.add_argument("--source", required=True, help="any --source of `edge-node run` (camera, file, URL, dir:, dataset:, replay:)")
    p.add_argument("--out", required=True, help="new recording folder")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (Ctrl-C also ends cleanly)")
    p.add_argument("--fps", type=float, default=None, help="pace file/dataset sources and set the recording's nominal fps")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_cmd_record)


def _cmd_record(args) -> int:
    import json

    from askexpert.log import setup_logging

    setup_logging(args.log_level)
    try:
        meta = record(args.source, args.out, max_frames=args.max_frames, fps=args.fps)
    except (SourceError, RecordingError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps({"out": str(args.out), **{k: meta[k] for k in ("frames", "codec", "fps", "width", "height", "channels")}}))
    return 0
