"""The pack report's typed results read the reference pack's report.json back exactly, and render
its committed report.md byte for byte: the JSON and the Markdown come from one typed model."""

import json
from pathlib import Path

from trainer.report_markdown import to_markdown
from trainer.results import PackReport

PACK = Path(__file__).resolve().parents[1] / "packs" / "fashion-mnist"


def test_reference_report_round_trips_through_the_typed_model():
    data = json.loads((PACK / "reports" / "report.json").read_text())
    rep = PackReport.model_validate(data)
    assert rep.to_json() == data
    assert rep.table3.multi_seed.progressive.target.values == data["table3"]["multi_seed"]["progressive"]["target"]["values"]
    assert set(rep.at_default_tau.coinference) == {"4H", "6H"}


def test_reference_report_markdown_is_rendered_from_the_model():
    rep = PackReport.model_validate_json((PACK / "reports" / "report.json").read_text())
    assert to_markdown(rep) == (PACK / "reports" / "report.md").read_text()
