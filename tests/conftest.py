"""Shared fixtures: a real Mosquitto on a free port and a tiny random model pack."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from askexpert.localbroker import Broker  # noqa: E402


@pytest.fixture
def broker():
    b = Broker().start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory) -> Path:
    from trainer.export import build_random_pack

    return build_random_pack(tmp_path_factory.mktemp("pack") / "tiny")
