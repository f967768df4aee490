"""`expert-hub` command line."""

from __future__ import annotations

import argparse
import threading
from typing import TYPE_CHECKING

import numpy as np

from askexpert.cli_common import command_parser, dispatch, fail, load_pack, load_settings, on_signals, start_ops
from askexpert.engine_step import add_build_parser
from askexpert.log import get_logger
from askexpert.mqtt import MqttClient
from expert_hub.settings import HubSettings

if TYPE_CHECKING:
    from askexpert.pack import ExpertEntry, ModelEntry, Pack

log = get_logger("expert_hub.cli")


def cmd_run(args: argparse.Namespace) -> int:
    s = load_settings(HubSettings, args)  # bad flags fail here, before torch is imported
    from askexpert.backends import open_backend
    from expert_hub.hub import ExpertHub

    pack = load_pack(s.pack)
    served = served_entries(s, pack)
    wanted = [e.key for e in served]
    if missing := pack.manifest.missing_experts():
        log.warning("pack lacks experts that top-k routing can ask for", missing=missing)
    client = MqttClient(s, "hub", s.hub_id, {"pack": pack.pack_id, "experts": wanted, "expert_form": s.expert_form})
    client.start()  # status `starting` while models load (TensorRT engines can take minutes)
    try:
        backend = open_backend(s.backend, s.device, s.threads)
        if hasattr(backend, "on_status"):
            backend.on_status = lambda state, **info: client.publish_status(state, **info)
        library = backend.experts(pack, served)
    except (ImportError, RuntimeError, ValueError) as exc:
        client.stop()
        fail(f"backend {s.backend}: {exc}")
    spec = pack.manifest.input
    library(np.zeros((len(wanted), spec.size, spec.size, spec.channels), np.uint8), wanted)  # warm up
    hub = ExpertHub(s, pack, library, client)
    stopped = threading.Event()
    on_signals(stopped.set)
    hub.start()
    stop_ops = start_ops(s, client, hub.health, hub.snapshot)
    client.publish_status("online")
    while not stopped.wait(0.5):
        pass
    hub.stop()
    stop_ops()
    client.stop()
    log.info("hub stopped", **vars(hub.stats))
    return 0


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
