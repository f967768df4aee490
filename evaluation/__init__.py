"""Evaluation: what judges a run. Scoring labels against the truth, the offline tau sweep and the
paper's four scenarios, the latency/energy cost model, reports and plots, comparing runs, the demo
driver and rendering a data set as a recording (`python -m evaluation`, `ate-eval`).

It imports `askexpert` only, never the edge, hub or trainer: it drives them as processes."""

from __future__ import annotations

from pathlib import Path

# The pack committed with the repository: a default that holds from any working directory.
REFERENCE_PACK = Path(__file__).resolve().parent.parent / "packs" / "fashion-mnist"
