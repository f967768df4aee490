"""`edge-node build-engine` / `expert-hub build-engines`: TensorRT engines built in their own step.

Compose runs it as a one-shot service before the server starts (as Frigate builds its detector
models at start-up), so a first start's minutes of building are a step of their own, logged with
progress, and the server only loads engines. Other backends have nothing to build: it exits 0.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Callable

from askexpert.cli_common import fail, load_pack, load_settings
from askexpert.log import get_logger
from askexpert.settings import CommonSettings, add_settings_arguments

if TYPE_CHECKING:
    from askexpert.pack import ModelEntry, Pack

log = get_logger("askexpert.engines")
Plan = Callable[[CommonSettings, "Pack"], "list[tuple[str, ModelEntry, str]]"]  # (name, entry, onnx role)


def add_build_parser(sub: argparse._SubParsersAction, command: str, settings_cls: type[CommonSettings], plan: Plan) -> None:
    """The subcommand takes the same flags and ATE_* variables as `run`, so it builds what `run` loads."""
    parser = sub.add_parser(command, help="build the TensorRT engines `run` loads (with --backend tensorrt), then exit")
    add_settings_arguments(parser, settings_cls)
    parser.set_defaults(func=lambda args: cmd_build(args, settings_cls, plan))


def cmd_build(args: argparse.Namespace, settings_cls: type[CommonSettings], plan: Plan) -> int:
    s = load_settings(settings_cls, args)
    if s.backend != "tensorrt":
        log.info("no engines to build: only the tensorrt backend uses them", backend=s.backend)
        return 0
    pack = load_pack(s.pack)
    from askexpert.backends.tensorrt_backend import TensorRTBackend

    try:
        backend = TensorRTBackend(s.device)
        models = plan(s, pack)
        for i, (name, entry, role) in enumerate(models, 1):
            log.info("engine", model=name, role=role, step=i, of=len(models))
            backend.ensure_engine(pack, entry, role, name)
    except (ImportError, RuntimeError, ValueError) as exc:
        fail(f"building engines: {exc}")
    log.info("engines ready", models=len(models), cache=str(backend.cache_dir))
    return 0
