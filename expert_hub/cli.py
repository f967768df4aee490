"""`expert-hub` command line."""

from __future__ import annotations

import argparse
import threading
from typing import TYPE_CHECKING

from askexpert.cli_common import command_parser, dispatch, fail, load_pack, load_settings
from askexpert.engine_step import add_build_parser
from askexpert.frames import blank_frames
from askexpert.lifecycle import Server
from askexpert.log import get_logger
from askexpert.mqtt import MqttClient
from expert_hub.settings import HubSettings

if TYPE_CHECKING:
    from askexpert.backends import Backend
    from askexpert.pack import ExpertEntry, ModelEntry, Pack
    from expert_hub.hub import ExpertHub

log = get_logger("expert_hub.cli")


class HubComponent:
    """The expert hub as a lifecycle component (askexpert.lifecycle): serves until a signal."""

    def __init__(self, settings: HubSettings, pack: "Pack", entries: list["ExpertEntry"], client: MqttClient) -> None:
        self.s, self.pack, self.entries, self.client = settings, pack, entries, client
        self.hub: "ExpertHub | None" = None

    def load(self, backend: "Backend") -> None:
        from expert_hub.hub import ExpertHub

        library = backend.experts(self.pack, self.entries)
        keys = [e.key for e in self.entries]
        library(blank_frames(self.pack.manifest.input, len(keys)), keys)  # warm up
        self.hub = ExpertHub(self.s, self.pack, library, self.client)
        self.hub.start()  # subscribes: frames are answered from here on

    def serve(self, should_exit: threading.Event) -> int:
        assert self.hub is not None
        should_exit.wait()
        self.hub.stop()
        log.info("hub stopped", **vars(self.hub.stats))
        return 0

    def stop(self) -> None:
        """Nothing to interrupt: serve() returns once the lifecycle's should_exit is set."""

    def health(self) -> dict:
        return self.hub.health() if self.hub is not None else {"healthy": False}

    def snapshot(self) -> dict:
        return self.hub.snapshot() if self.hub is not None else {}


def cmd_run(args: argparse.Namespace) -> int:
    s = load_settings(HubSettings, args)  # bad flags fail here, before torch is imported
    pack = load_pack(s.pack)
    served = served_entries(s, pack)
    wanted = [e.key for e in served]
    if missing := pack.manifest.missing_experts():
        log.warning("pack lacks experts that top-k routing can ask for", missing=missing)
    client = MqttClient(s, "hub", s.hub_id, {"pack": pack.pack_id, "experts": wanted, "expert_form": s.expert_form})
    return Server(s, client).run(HubComponent(s, pack, served, client))


def served_entries(s: HubSettings, pack: Pack) -> list[ExpertEntry]:
    """The experts this hub serves (--experts, else all), in the form asked for; unknown ones fail."""
    from askexpert.pack import PackError

    try:
        entries = {e.key: e for e in pack.expert_entries(s.expert_form)}
    except PackError as exc:
        fail(str(exc))
    wanted = s.experts or list(entries)
    if unknown := [k for k in wanted if k not in entries]:
        fail(f"pack {s.pack} has no experts {unknown}; it has {list(entries)}")
    return [entries[k] for k in wanted]


def experts_plan(s: HubSettings, pack: Pack) -> list[tuple[str, ModelEntry, str]]:
    """The engines the hub runs: its experts, and the shared trunk when they are tails."""
    from askexpert.backends.tensorrt_backend import onnx_plan

    return onnx_plan(pack, served_entries(s, pack))


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("expert-hub", __doc__, "serve the pack's experts over MQTT", HubSettings, cmd_run)
    add_build_parser(sub, "build-engines", HubSettings, experts_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
