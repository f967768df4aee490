"""Print the package's runtime requirements from pyproject.toml, minus what the base image provides.

    python3 docker/deps.py pyproject.toml --skip torch --skip opencv-python-headless > /tmp/req.txt

Used by the Dockerfiles so that a base image's own CUDA builds of PyTorch and OpenCV (Jetson
wheels, not on PyPI) are never replaced by PyPI's CPU builds. Python 3.10 (JetPack 6) has no
tomllib, so the [project] dependencies array is read with a small parser when it is missing.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys


def dependencies(text: str) -> list[str]:
    try:
        import tomllib

        return list(tomllib.loads(text)["project"]["dependencies"])
    except ModuleNotFoundError:
        m = re.search(r"^\[project\]\s*$(.*?)^\[", text, re.S | re.M)
        block = m.group(1) if m else text
        d = re.search(r"^dependencies\s*=\s*(\[.*?\])", block, re.S | re.M)
        if not d:
            raise SystemExit("no [project] dependencies in pyproject.toml") from None
        return list(ast.literal_eval(d.group(1)))


def name_of(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pyproject")
    ap.add_argument("--skip", action="append", default=[], help="a distribution the base image provides")
    args = ap.parse_args()  # plots and tables (matplotlib, rich) are extras, never in this list
    skip = {s.lower() for s in args.skip}
    with open(args.pyproject, encoding="utf-8") as f:
        for req in dependencies(f.read()):
            if name_of(req) not in skip:
                sys.stdout.write(req + "\n")


if __name__ == "__main__":
    main()
