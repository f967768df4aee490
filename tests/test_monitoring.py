"""The monitoring profile for real: Debian's Prometheus scrapes a running broker (through
broker-metrics), hub and edge with the shipped scrape jobs and alert rules; every dashboard query
and every alert expression is evaluated through Prometheus's HTTP API.

A second edge streams the shifted scoring stream (askexpert/shift.py) and the drift alert fires for
it, not for the edge on the clean test split. Waits are on counts and states (frames gated, samples
scraped, alert states), never on wall-clock gaps.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from helpers import start_hub, stop, wait_hub_online

from askexpert.localbroker import Broker, free_port, spawn, wait_port
from askexpert.quality import WINDOW_ANSWERS

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "docker" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "fleet.json"
RULES = MONITORING / "rules.yml"
PACK = REPO / "packs" / "fashion-mnist"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(not (PROMETHEUS and PROMTOOL), reason="Debian's prometheus not installed (scripts/install.sh)")
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)")
CLEAN, SHIFTED = "cam-mon", "cam-shift"  # the edges on the clean test split and on the shifted scoring stream
DRIFT_FOR = "2s"  # the drift alert's `for` in the test's copy of the rules (shipped: 10m)


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def rules_with_short_drift_for(folder: Path) -> Path:
    """A copy of the shipped rules whose drift alert waits DRIFT_FOR instead of 10 minutes: the
    test sees it go pending and fire; nothing else differs."""
    rules = yaml.safe_load(RULES.read_text())
    drift = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ATEQualityDrift")
    drift["for"] = DRIFT_FOR
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def with_bool(expr: str) -> str:
    """`expr` with `bool` after each comparison outside label matchers: every matched series then
    comes back (0 or 1) instead of only those that fire, so an empty answer means a missing operand."""
    out, depth = [], 0
    for part in re.split(r"([{}])", expr):
        depth += part == "{"
        out.append(COMPARISON.sub(r"\1 bool", part) if depth == 0 else part)
        depth -= part == "}"
    return "".join(out)


def metric_names(expr: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\b(ate_[a-z_]+)", expr)}


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def scrape(url: str) -> str:
    """A component's /metrics, or nothing while it is still starting."""
    try:
        return get(url)
    except OSError:
        return ""


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """A sample's value in a /metrics text (NaN if absent)."""
    for line in metrics_text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return math.nan


class Prometheus:
    """Debian's prometheus on a free port, the shipped jobs, the given rules, the test's targets, 1 s scrapes."""

    def __init__(self, tmp: Path, targets: dict[str, list[str]], rules: Path = RULES) -> None:
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(rules)]
        for job in config["scrape_configs"]:
            path = Path(job["file_sd_configs"][0]["files"][0])
            (tmp / path.name).write_text(yaml.safe_dump([{"targets": targets[path.stem]}]))
            job["file_sd_configs"][0]["files"] = [str(tmp / path.name)]
        self.config = tmp / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.port = free_port()
        args = [f"--config.file={self.config}", f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen([PROMETHEUS, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_port(self.port, timeout=30, proc=self.proc)

    def api(self, path: str, **params: str) -> dict:
        body = json.loads(get(f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"))
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A broker (with $SYS every second), broker-metrics, a hub, an edge replaying the clean test
    split of the reference pack and one the shifted scoring stream at a steady pace, each with its
    /metrics, and Prometheus on them (the shipped rules, the drift alert's `for` shortened)."""
    tmp = tmp_path_factory.mktemp("monitoring")
    broker = Broker(extra_conf="sys_interval 1").start()
    ports = {"edge": free_port(), "shifted": free_port(), "hub": free_port(), "broker": free_port()}
    procs = [
        spawn("askexpert.broker_metrics", "run", "--broker", broker.url, "--metrics-port", str(ports["broker"]), stderr=subprocess.DEVNULL),
        start_hub(PACK, broker.url, "--hub-id", "mon1", "--metrics-port", str(ports["hub"])),
    ]
    prom = None
    try:
        wait_hub_online(broker.url, "mon1")
        # the shifted edge first: it shifts its 10,000 images before it streams
        for node, port, source in (
            (SHIFTED, ports["shifted"], "shifted-fashion-mnist:score"),
            (CLEAN, ports["edge"], "fashion-mnist:test"),
        ):
            edge_args = ["--pack", str(PACK), "--broker", broker.url, "--node-id", node, "--metrics-port", str(port)]
            edge_args += ["--source", f"dataset:{source}", "--max-frames", "10000", "--fps", "300", "--deadline-ms", "5000"]
            procs.append(spawn("edge_node.cli", "run", *edge_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        targets = {
            "edges": [f"127.0.0.1:{ports['edge']}", f"127.0.0.1:{ports['shifted']}"],
            "hubs": [f"127.0.0.1:{ports['hub']}"],
            "broker": [f"127.0.0.1:{ports['broker']}"],
        }
        prom = Prometheus(tmp, targets, rules_with_short_drift_for(tmp))
        urls = {k: f"http://127.0.0.1:{p}/metrics" for k, p in ports.items() if k != "shifted"}  # the shifted edge: its own test
        wait_until(
            lambda: not math.isnan(sample(scrape(urls["edge"]), "ate_quality_window", node=CLEAN, signal="disagreement")),
            180,
            "the edge's windows to fill",
        )
        yield prom, urls
    finally:
        if prom is not None:
            prom.stop()
        with ThreadPoolExecutor() as pool:  # each edge takes seconds to stop: together, not in turn
            list(pool.map(stop, procs))
        broker.stop()


def wait_until(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@needs_prometheus
@pytest.mark.slow
def test_every_dashboard_query_and_alert_rule_returns_data(fleet):
    prom, urls = fleet
    queries = dashboard_queries()
    rules = alert_rules()
    # until every query has data (1 s scrapes, rates need two samples) and a scrape saw both windows full
    wait_until(lambda: len(prom.query(f'ate_quality_window{{node="{CLEAN}"}} >= 0')) == 2, 60, "full windows in Prometheus")
    wait_until(lambda: all(prom.query(q) for q in queries + [with_bool(r["expr"]) for r in rules]), 60, "data for every query")
    empty = [q for q in queries if not prom.query(q)]
    assert not empty and len(queries) == 21, empty
    no_data = [r["alert"] for r in rules if not prom.query(with_bool(r["expr"]))]
    assert not no_data and len(rules) == 7, no_data
    # Prometheus evaluated every rule itself, without an error
    evaluated = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert len(evaluated) == 7 and all(r["health"] == "ok" for r in evaluated), evaluated
    # the clean test split sits inside the pack's band: the drift alert's expression has no clean series
    drift = next(r for r in rules if r["alert"] == "ATEQualityDrift")
    assert [r for r in prom.query(drift["expr"]) if r["metric"]["node"] == CLEAN] == []
    windows = {r["metric"]["signal"]: float(r["value"][1]) for r in prom.query(f'ate_quality_window{{node="{CLEAN}"}}')}
    assert set(windows) == {"alpha", "disagreement"} and not any(map(math.isnan, windows.values()))
    print(f"\n{len(queries)} dashboard queries and {len(rules)} alert rules returned data; windows {windows}")


@needs_prometheus
@pytest.mark.slow
def test_every_metric_the_dashboard_and_rules_name_is_exported(fleet):
    _, urls = fleet
    exported = "\n".join(get(u) for u in urls.values())
    named = set().union(*(metric_names(q) for q in dashboard_queries() + [r["expr"] for r in alert_rules()]))
    missing = sorted(n for n in named if not re.search(rf"^{n}(_bucket|_sum|_count)?[{{ ]", exported, re.M))
    assert len(named) == 19 and not missing, missing


@needs_prometheus
@pytest.mark.slow
def test_the_drift_alert_fires_for_the_shifted_stream_and_never_for_the_clean_one(fleet):
    """The shipped drift rule, its `for` aside: the test's copy of the rules waits DRIFT_FOR, not 10
    minutes. Prometheus puts the edge on the shifted scoring stream into pending, then firing; the
    edge on the clean test split, its windows full all the while, never even goes pending."""
    prom, _ = fleet

    def drift_alerts() -> list[dict]:
        return [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "ATEQualityDrift"]

    def firing() -> list[dict]:
        return [a for a in drift_alerts() if a["labels"]["node"] == SHIFTED and a["state"] == "firing"]

    def history(node: str, state: str = "") -> list[dict]:
        """Prometheus's own record of the alert's states (ALERTS) over the whole run."""
        return prom.query(f'ALERTS{{alertname="ATEQualityDrift",node="{node}",alertstate=~"{state or ".+"}"}}[1h]')

    def gated_at(when: str) -> int:
        return int(float(prom.api("query", query=f'ate_gated_frames_total{{node="{SHIFTED}"}}', time=when)["result"][0]["value"][1]))

    wait_until(firing, 180, "the drift alert to fire for the shifted stream")
    assert {a["labels"]["node"] for a in drift_alerts()} == {SHIFTED}
    assert history(SHIFTED, "pending") and history(SHIFTED, "firing") and history(CLEAN) == []
    # the clean edge was judged all along: both its windows full in Prometheus
    full = prom.query(f'count_over_time((ate_quality_window{{node="{CLEAN}"}} >= 0)[1h:1s])')
    assert {r["metric"]["signal"] for r in full} == {"alpha", "disagreement"}
    # frames the shifted edge had gated when a signal's alert went pending: the scrape that first saw its window out
    frames = {a["labels"]["signal"]: gated_at(a["activeAt"]) for a in firing()}
    assert min(frames.values()) >= WINDOW_ANSWERS, frames  # no window is judged before it is full
    print(f"\ndrift alert for {SHIFTED} pending at frame (by signal) {frames}, firing {DRIFT_FOR} later; for {CLEAN} never")


@needs_prometheus
def test_promtool_passes_the_rules_and_the_config(tmp_path):
    rules = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert rules.returncode == 0 and "SUCCESS: 7 rules found" in rules.stdout, rules.stdout + rules.stderr
    shipped = subprocess.run(
        [PROMTOOL, "check", "config", "--syntax-only", str(MONITORING / "prometheus.yml")], capture_output=True, text=True
    )
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    # with its files: the rules and a target file of each layout in their place
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES)]
    for layout in ("one-box", "two-box"):
        for job in config["scrape_configs"]:
            name = Path(job["file_sd_configs"][0]["files"][0]).name
            job["file_sd_configs"][0]["files"] = [str(MONITORING / "targets" / layout / name)]
        (tmp_path / "p.yml").write_text(yaml.safe_dump(config))
        full = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "p.yml")], capture_output=True, text=True)
        assert full.returncode == 0 and "SUCCESS" in full.stdout, full.stdout + full.stderr


def test_with_bool_leaves_label_matchers_alone():
    expr = 'a{x!="1"} > on (n) b{bound="high"} or c <= 0.5'
    assert with_bool(expr) == 'a{x!="1"} > bool on (n) b{bound="high"} or c <= bool 0.5'
