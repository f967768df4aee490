"""What both command lines share: settings parsing, logging, pack loading, one-line errors."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Callable, NoReturn, TypeVar

from pydantic import ValidationError

from askexpert.log import get_logger, setup_logging
from askexpert.settings import CommonSettings, add_settings_arguments, settings_from_args

if TYPE_CHECKING:
    from askexpert.pack import Pack

S = TypeVar("S", bound=CommonSettings)
log = get_logger("askexpert.cli")


def fail(message: str, code: int = 2) -> NoReturn:
    """A clear error, said once: a plain `error: ...` line on a terminal, a JSON log line elsewhere."""
    if sys.stderr.isatty():
        print(f"error: {message}", file=sys.stderr)
    else:
        log.error(message)
    raise SystemExit(code)


def settings_errors(exc: ValidationError) -> str:
    """pydantic's report as one line per bad setting, named as the flag: `--tau: must be <= 1 (got '1.5')`."""
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        flag = "--" + name.replace("_", "-") if name != "settings" else name
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"{flag}: {msg}{got}")
    return "; ".join(lines)


def load_settings(cls: type[S], args: argparse.Namespace) -> S:
    try:
        settings = settings_from_args(cls, args)
    except ValidationError as exc:
        setup_logging()
        fail(f"bad settings: {settings_errors(exc)}")
    except Exception as exc:  # missing config file, bad YAML, unknown config key
        setup_logging()
        fail(f"bad settings: {exc}")
    setup_logging(settings.log_level)
    return settings


def load_pack(path) -> "Pack":
    from askexpert.pack import Pack, PackError  # torch and timm: only once the settings are good

    try:
        return Pack.load(path)
    except PackError as exc:
        fail(str(exc))


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
