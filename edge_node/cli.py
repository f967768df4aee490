"""`edge-node` command line."""

from __future__ import annotations

import argparse
import json
import sys

from askexpert.cli_common import command_parser, dispatch, fail, load_pack, load_settings, on_signals, start_ops
from askexpert.log import get_logger
from askexpert.mqtt import MqttClient
from edge_node.recording import add_record_parser
from edge_node.settings import EdgeSettings
from edge_node.sources import SourceError, open_source

log = get_logger("edge_node.cli")


def cmd_run(args: argparse.Namespace) -> int:
    s = load_settings(EdgeSettings, args)  # bad flags fail here, before torch is imported
    from askexpert.backends import open_backend
    from edge_node.node import EdgeNode

    pack = load_pack(s.pack)
    try:
        source = open_source(s.source, s.fps or None)
    except (SourceError, OSError) as exc:
        fail(f"source {s.source!r}: {exc}")
    client = MqttClient(s, "edge", s.node_id, {"pack": pack.pack_id, "source": s.source})
    client.start()  # status `starting` while the model loads (a TensorRT engine can take minutes)
    try:
        backend = open_backend(s.backend, s.device)
        if hasattr(backend, "on_status"):
            backend.on_status = lambda state, **info: client.publish_status(state, **info)
        classifier = backend.classifier(pack, pack.manifest.generalist)
    except (ImportError, RuntimeError, ValueError) as exc:
        client.stop()
        fail(f"backend {s.backend}: {exc}")
    node = EdgeNode(s, pack, classifier, client)
    on_signals(node.stop)
    stop_ops = start_ops(s, client, node.health, node.snapshot)
    if not client.wait_connected(s.connect_timeout_s):
        log.warning("broker not reachable yet; going on, labels queue until it answers", broker=s.broker)
    client.publish_status("online")
    try:
        stats = node.run(source)
    finally:
        stop_ops()
        client.stop()
    print(json.dumps({"node": s.node_id, **vars(stats)}))
    if stats.unacknowledged:  # labelled into the void: say so, and fail
        never = "" if client.connects else f"; the broker at {s.broker} never answered"
        print(f"error: {stats.unacknowledged} messages ({stats.frames} frames' labels and the status) were not "
              f"acknowledged by the broker{never}", file=sys.stderr)  # fmt: skip
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("edge-node", __doc__, "classify a stream, offload uncertain frames, publish labels", EdgeSettings, cmd_run)
    add_record_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
