"""docker-compose.yml, its two-box override, the Dockerfiles and the broker config, checked statically.

There is no Docker engine on CI: these tests parse the files (pyyaml) and check that everything a
service names exists in the repo and is wired consistently. Building and running the images is
verified only on the target machines (docs/deploy.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
TWO_BOX = REPO / "docker-compose.two-box.yml"
PLATFORMS = ("jetson", "cuda")
GENERATED = {  # files a user makes before `docker compose up`, with the script that makes them
    "docker/mosquitto/passwd": "docker/mosquitto/make-passwords.sh",
}
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?error} against `env` (defaults otherwise)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


ENV = {"ATE_HUB_PASSWORD": "h", "ATE_EDGE_PASSWORD": "e", "ATE_OPS_PASSWORD": "o"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


def services(env: dict[str, str] | None = None) -> dict:
    return interpolate(load(COMPOSE), {**ENV, **(env or {})})["services"]


def test_compose_parses_and_has_the_three_services(compose):
    assert set(compose["services"]) == {"broker", "hub", "edge"}
    assert set(compose["volumes"]) >= {"mosquitto-data", "trt-engines"}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_build_and_dockerfile_target_exists(platform):
    for name in ("hub", "edge"):
        svc = services({"ATE_PLATFORM": platform})[name]
        build = svc["build"]
        context = REPO / build["context"]
        dockerfile = context / build["dockerfile"]
        assert context.is_dir() and dockerfile.is_file(), dockerfile
        text = dockerfile.read_text()
        assert re.search(rf"^FROM \S+ AS {build['target']}$", text, re.M), f"{dockerfile} has no stage {build['target']}"
        assert svc["image"].endswith(f":{platform}")


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


def test_every_bind_mount_and_config_file_exists(compose):
    named = set(compose["volumes"])
    for name, svc in services().items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith((".", "/")):
                rel = str(Path(src).relative_to(".")) if src.startswith(".") else src
                assert not src.startswith("/"), f"{name}: host-absolute bind {src} is not portable"
                if rel in GENERATED:
                    assert (REPO / GENERATED[rel]).is_file(), f"{rel}'s generator is missing"
                else:
                    assert (REPO / rel).exists(), f"{name}: {src} does not exist in the repo"
            else:
                assert src in named, f"{name}: volume {src} is not declared"


def test_app_services_gpu_camera_cache_health_restart():
    svcs = services()
    for name, port in (("edge", "9101"), ("hub", "9102")):
        svc = svcs[name]
        assert svc["runtime"] == "nvidia" and svc["restart"] in ("unless-stopped", "always", "on-failure")
        assert "trt-engines:/cache" in svc["volumes"] and "./packs:/packs:ro" in svc["volumes"]
        assert svc["environment"]["ATE_METRICS_PORT"] == port
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(svc["healthcheck"]["test"])
        assert f"{port}:{port}" in svc["ports"]
        assert svc["environment"]["ATE_PACK"].startswith("/packs/")
    assert svcs["edge"]["devices"] == ["/dev/video0:/dev/video0"]
    assert svcs["edge"]["environment"]["ATE_USERNAME"] == svcs["edge"]["environment"]["ATE_NODE_ID"]
    assert svcs["hub"]["environment"]["ATE_USERNAME"] == svcs["hub"]["environment"]["ATE_HUB_ID"] == "hub1"
    assert svcs["edge"]["environment"]["ATE_BROKER"] == "mqtt://broker:1883"
    assert svcs["broker"]["restart"] == "unless-stopped" and "healthcheck" in svcs["broker"]
    assert svcs["hub"]["depends_on"]["broker"]["condition"] == "service_healthy"


def test_required_secrets_fail_loudly_and_env_example_names_them():
    with pytest.raises(KeyError, match="ATE_HUB_PASSWORD"):
        interpolate(load(COMPOSE), {})
    names = set(VAR.findall(COMPOSE.read_text() + TWO_BOX.read_text()))
    example = (REPO / "docker" / "env.example").read_text()
    for name, op, _ in names:
        if op and op.endswith("?"):
            assert re.search(rf"^#? ?{name}=", example, re.M), f"docker/env.example lacks {name}"


def test_two_box_override_splits_the_services_and_takes_the_broker_from_env():
    over = load(TWO_BOX)["services"]
    assert over["broker"]["profiles"] == over["hub"]["profiles"] == ["hub-box"]
    assert over["edge"]["profiles"] == ["edge-box"]
    edge = interpolate(over["edge"], {"ATE_BROKER_HOST": "10.0.0.5"})
    assert edge["environment"]["ATE_BROKER"] == "mqtt://10.0.0.5:1883"
    unset = interpolate(over["edge"], {})["environment"]["ATE_BROKER"]  # must not abort the hub box
    assert "set-ATE_BROKER_HOST" in unset
    base_edge = load(COMPOSE)["services"]["edge"]
    assert base_edge["depends_on"]["broker"]["required"] is False  # edge box has no broker
    assert set(over) <= set(load(COMPOSE)["services"])


def test_broker_config_has_the_required_settings():
    conf = (REPO / "docker/mosquitto/mosquitto.conf").read_text()
    lines = {ln.strip() for ln in conf.splitlines() if ln.strip() and not ln.lstrip().startswith("#")}
    for want in (
        "listener 1883",
        "set_tcp_nodelay true",
        "persistence true",
        "allow_anonymous false",
        "password_file /mosquitto/config/passwd",
        "acl_file /mosquitto/config/acl",
    ):
        assert want in lines, want
    mounts = " ".join(services()["broker"]["volumes"])
    for target in ("/mosquitto/config/mosquitto.conf", "/mosquitto/config/passwd", "/mosquitto/config/acl", "/mosquitto/data"):
        assert target in mounts
    assert "/mosquitto/data/" in conf
    assert "passwd" in (REPO / "docker/mosquitto/.gitignore").read_text().split()


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
    """Every package but evaluation: the serving images leave it out, as they leave out its plotting deps."""
    text = (REPO / dockerfile).read_text()
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", (REPO / "pyproject.toml").read_text()).group(1)
    for pattern in re.findall(r'"([^"]+)"', include):
        pkg = pattern.rstrip("*")
        if pkg == "evaluation":
            continue
        assert re.search(rf"^COPY {pkg} {pkg}$", text, re.M), f"{dockerfile} does not COPY {pkg}"


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
