"""`edge-node` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from askexpert.cli_common import command_parser, dispatch, fail, load_pack, load_settings
from askexpert.datasets import DatasetError
from askexpert.engine_step import add_build_parser
from askexpert.frames import blank_frames
from askexpert.lifecycle import Server
from askexpert.mqtt import MqttClient
from askexpert.recording import RecordingError
from askexpert.reload import PackReloader, ignore_sighup, reload_on_sighup
from edge_node.collect import add_collect_parser
from edge_node.recording import add_record_parser
from edge_node.settings import EdgeSettings
from edge_node.sources import Source, SourceError, open_source

if TYPE_CHECKING:
    from askexpert.backends import Backend, Classifier
    from askexpert.pack import ModelEntry, Pack
    from edge_node.node import EdgeNode


class EdgeComponent:
    """The edge node as a lifecycle component (askexpert.lifecycle): one node, one source; SIGHUP
    reloads the pack from its path (askexpert/reload.py)."""

    def __init__(self, settings: EdgeSettings, pack: "Pack", client: MqttClient) -> None:
        self.s, self.pack, self.client = settings, pack, client
        self.node: "EdgeNode | None" = None
        self.source: "Source | None" = None
        self.reloader: PackReloader | None = None

    def _classifier(self, backend: "Backend", pack: "Pack") -> "Classifier":
        """The pack's generalist, built (engine first) and warmed up."""
        classifier = backend.classifier(pack, pack.manifest.generalist)
        for n in (self.s.batch_size, 1):  # warm up: the first frames must not pay lazy initialisation
            classifier(blank_frames(pack.manifest.input, n))
        return classifier

    def _on_reload(self, report: dict) -> None:
        assert self.node is not None
        self.client.update_status(**self.node.pack_report(), pack_reload=report)

    def load(self, backend: "Backend") -> None:
        from edge_node.node import EdgeNode

        classifier = self._classifier(backend, self.pack)
        try:  # after the model: a live stream is not left unread while an engine loads
            self.source = open_source(self.s.source, self.s.fps or None)
        except (SourceError, DatasetError, RecordingError, OSError) as exc:  # a source's own errors, not the backend's
            self.client.stop()
            fail(f"source {self.s.source!r}: {exc}")
        self.node = EdgeNode(self.s, self.pack, classifier, self.client)
        self.reloader = PackReloader(
            "edge",
            self.s.pack,
            self.pack,
            lambda pack: self._classifier(backend, pack),
            self.node.install,
            self._on_reload,
        )

    def serve(self, should_exit: threading.Event) -> int:
        assert self.node is not None and self.source is not None and self.reloader is not None
        with reload_on_sighup(self.reloader.request):
            stats = self.node.run(self.source)
        summary = json.dumps({"node": self.s.node_id, **vars(stats)})
        print(summary)
        if self.s.summary_json is not None:
            try:
                write_summary(self.s.summary_json, summary)
            except OSError as exc:
                fail(f"summary file {self.s.summary_json}: {exc}")
        if stats.unacknowledged:  # labelled into the void: say so, and fail
            never = "" if self.client.connects else f"; the broker at {self.s.broker} never answered"
            print(
                f"error: {stats.unacknowledged} messages ({stats.frames} frames' labels and the status) were not "
                f"acknowledged by the broker{never}",
                file=sys.stderr,
            )
            return 3
        return 0

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()

    def health(self) -> dict:
        return self.node.health() if self.node is not None else {"healthy": False}

    def snapshot(self) -> dict:
        return self.node.snapshot() if self.node is not None else {}


def write_summary(path: Path, summary: str) -> None:
    """Whole or not at all (a temporary file renamed): whoever reads it never sees half a summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(summary + "\n")
    os.replace(tmp, path)


def cmd_run(args: argparse.Namespace) -> int:
    s = load_settings(EdgeSettings, args)  # bad flags fail here, before torch is imported
    pack = load_pack(s.pack)
    ignore_sighup()
    status = {"pack": pack.pack_id, "pack_version": pack.version, "source": s.source}
    client = MqttClient(s, "edge", s.node_id, status)
    return Server(s, client, connect_timeout_s=s.connect_timeout_s).run(EdgeComponent(s, pack, client))


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("edge-node", __doc__, "classify a stream, offload uncertain frames, publish labels", EdgeSettings, cmd_run)
    add_record_parser(sub)
    add_collect_parser(sub)
    add_build_parser(sub, "build-engine", EdgeSettings, generalist_plan)
    return parser


def generalist_plan(s: EdgeSettings, pack: Pack) -> list[tuple[str, ModelEntry, str]]:
    """The one engine the edge runs."""
    from askexpert.backends.tensorrt_backend import onnx_plan

    return onnx_plan(pack, classifier=pack.manifest.generalist)


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
