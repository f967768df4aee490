"""Record any source to a recording folder (`edge-node record`); `replay:DIR` plays one back
(edge_node.sources.ReplaySource, beside the other sources).
"""

from __future__ import annotations

from pathlib import Path

from askexpert.log import get_logger
from askexpert.recording import RecordingError, RecordingWriter
from edge_node.sources import SourceError, open_source

log = get_logger("edge_node.recording")


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
