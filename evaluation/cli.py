"""`ate-eval` / `python -m evaluation`: score, sweep, system-figures, demo, compare, render, shift, learn-round."""

from __future__ import annotations

import argparse

from evaluation import compare, demo, learn_round, render, score, shift, sweep, system


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ate-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (score, sweep, system, demo, compare, render, shift, learn_round):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
