#!/usr/bin/env bash
# Installs what a fresh machine lacks: Mosquitto, Redis, Prometheus and Fashion-MNIST from Debian, then the package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)  # the aedes cluster of the failover test
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || [ -n "${ATE_FASHION_MNIST_DIR:-}" ] \
  || need_apt+=(dataset-fashion-mnist)
# Prometheus and promtool for the monitoring test (it starts its own on a free port): the binaries
# only, no node exporter, and no service of its own holding port 9090.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing from Debian: ${need_apt[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  if [[ " ${need_apt[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus || true
  fi
fi

# timm needs torchvision, and torchvision must match torch exactly: install the pair together.
if ! $PY -c "import torch, torchvision, timm" >/dev/null 2>&1; then
  echo "installing torch + torchvision"
  $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
if ! $PY -c "import askexpert, edge_node, expert_hub, trainer, evaluation, matplotlib, rich, ruff, pytest_timeout" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .install-stamp ]; then
  $PY -m pip install -q -e ".[dev]"
  touch .install-stamp
fi

# A second MQTT 5 broker for the portability test (aedes on Node.js); the test skips without it.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/brokers/aedes/node_modules/aedes ]; then
  (cd tests/brokers/aedes && npm ci --no-audit --no-fund --silent) || echo "aedes not installed: its test will be skipped"
fi
# Two aedes nodes on Redis: the broker cluster of the failover test; the test skips without it.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/brokers/aedes-cluster/node_modules/mqemitter-redis ]; then
  (cd tests/brokers/aedes-cluster && npm ci --no-audit --no-fund --silent) || echo "aedes cluster not installed: its test will be skipped"
fi
