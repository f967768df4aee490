"""What both command lines share: settings parsing, logging, pack loading, clean signals."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable, TypeVar

from askexpert.log import get_logger, setup_logging
from askexpert.mqtt import MqttClient
from askexpert.ops import StatsPublisher, start_ops_server
from askexpert.protocol import stats_topic
from askexpert.pack import Pack, PackError
from askexpert.settings import CommonSettings, add_settings_arguments, settings_from_args

S = TypeVar("S", bound=CommonSettings)
log = get_logger("askexpert.cli")


def fail(message: str, code: int = 2) -> None:
    """A clear one-line error for the user, in the log stream too."""
    log.error(message)
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_settings(cls: type[S], args: argparse.Namespace) -> S:
    try:
        settings = settings_from_args(cls, args)
    except Exception as exc:  # pydantic ValidationError, missing config file, bad YAML
        setup_logging()
        fail(f"bad settings: {exc}")
    setup_logging(settings.log_level)
    return settings


def load_pack(path) -> Pack:
    try:
        return Pack.load(path)
    except PackError as exc:
        fail(str(exc))
    raise AssertionError  # unreachable: fail() exits


def on_signals(stop: Callable[[], None]) -> None:
    """SIGINT and SIGTERM ask for a clean stop; a second one exits at once."""

    def handler(signum: int, frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def start_ops(settings: CommonSettings, client: MqttClient, health: Callable[[], dict], stats: Callable[[], dict]) -> Callable[[], None]:
    """/metrics + /healthz (when metrics_port is set) and periodic stats on MQTT; returns a stopper."""
    stoppers: list[Callable[[], None]] = []
    if settings.metrics_port:
        stoppers.append(start_ops_server(settings.metrics_port, health).stop)
    if settings.stats_interval_s > 0:
        topic = stats_topic(settings.prefix, client.role, client.ident)
        stoppers.append(StatsPublisher(client, topic, stats, settings.stats_interval_s).start().stop)

    def stop_all() -> None:
        for stop in stoppers:
            stop()

    return stop_all


def command_parser(
    prog: str, description: str | None, run_help: str, settings_cls: type[CommonSettings], cmd_run: Callable
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A component's parser with its `run` subcommand (one flag per setting); more may be added."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=run_help)
    add_settings_arguments(run, settings_cls)
    run.set_defaults(func=cmd_run)
    return parser, sub


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    return args.func(args)
