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
from askexpert.reload import PackReloader, ignore_sighup, reload_on_sighup
from expert_hub.settings import HubSettings

if TYPE_CHECKING:
    from askexpert.backends import Backend
    from askexpert.pack import ExpertEntry, ModelEntry, Pack
    from expert_hub.hub import ExpertHub

log = get_logger("expert_hub.cli")


class HubComponent:
    """The expert hub as a lifecycle component (askexpert.lifecycle): serves until a signal; SIGHUP
    reloads the pack from its path (askexpert/reload.py)."""

    def __init__(self, settings: HubSettings, pack: "Pack", client: MqttClient) -> None:
        self.s, self.pack, self.client = settings, pack, client
        self.hub: "ExpertHub | None" = None
        self.reloader: PackReloader | None = None

    def load(self, backend: "Backend") -> None:
        from expert_hub.hub import ExpertHub

        self.hub = ExpertHub(self.s, self.pack, self._library(backend, self.pack), self.client)
        self.reloader = PackReloader(
            "hub",
            self.s.pack,
            self.pack,
            lambda pack: self._library(backend, pack),
            self.hub.install,
            self._on_reload,
        )
        self.hub.start()  # subscribes: frames are answered from here on

    def _library(self, backend: "Backend", pack: "Pack"):
        """The experts this hub serves from `pack`, built (engines first) and warmed up."""
        entries = served_entries(self.s, pack, fatal=False)
        library = backend.experts(pack, entries)
        keys = [e.key for e in entries]
        library(blank_frames(pack.manifest.input, len(keys)), keys)  # warm up
        return library

    def _on_reload(self, report: dict) -> None:
        assert self.hub is not None
        self.client.update_status(pack=self.hub.pack.pack_id, pack_version=self.hub.pack.version, pack_reload=report)

    def serve(self, should_exit: threading.Event) -> int:
        assert self.hub is not None and self.reloader is not None
        with reload_on_sighup(self.reloader.request):
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
    ignore_sighup()
    status = {"pack": pack.pack_id, "pack_version": pack.version, "experts": wanted, "expert_form": pack.resolve_form(s.expert_form)}
    client = MqttClient(s, "hub", s.hub_id, status)
    return Server(s, client).run(HubComponent(s, pack, client))


def served_entries(s: HubSettings, pack: Pack, fatal: bool = True) -> list[ExpertEntry]:
    """The experts this hub serves (--experts, else all), in the form asked for; unknown ones fail
    the command (`fatal`) or raise PackError (a reloaded pack is refused, the old one serves on)."""
    from askexpert.pack import PackError

    try:
        entries = {e.key: e for e in pack.expert_entries(s.expert_form)}
        wanted = s.experts or list(entries)
        if unknown := [k for k in wanted if k not in entries]:
            raise PackError(f"pack {pack.root} has no experts {unknown}; it has {list(entries)}")
    except PackError as exc:
        if not fatal:
            raise
        fail(str(exc))
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
