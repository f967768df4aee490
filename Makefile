PY ?= python3
N ?= 10000
# the demo replays as fast as the edge goes (FPS=0): a replay keeps at most --offload-window offloads
# unanswered, so it waits for the hub instead of falling back; then a paced run (PACED_FPS) for latency
FPS ?= 0
PACED_FPS ?= 200

.PHONY: install test test-fast demo sweep learn-round pack-cpu pack-gpu

install:
	PY=$(PY) bash scripts/install.sh

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

# The same without the tests marked slow (each over about 10 s here: end-to-end runs through brokers, training, the demo)
test-fast: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(PY) -m evaluation demo --frames $(N) --fps $(FPS) --paced-fps $(PACED_FPS)

sweep: install
	$(PY) -m evaluation sweep --pack packs/fashion-mnist

# One round of on-site learning on the camera-like shifted stream, live (README, "The edge learns from its experts")
learn-round: install
	$(PY) -m evaluation learn-round --pack packs/fashion-mnist

# The reference pack (CPU recipe: head dim 16, depth 3, 12H teacher; under 2 h on 2 cores; resumable: run it again after an interruption)
pack-cpu: install
	$(PY) -m trainer.cli pack --recipe cpu --out packs/fashion-mnist

# The paper's depth 12 on a GPU; the pack is over the repository's size limits, so it stays in runs/
pack-gpu: install
	$(PY) -m trainer.cli pack --recipe gpu --out runs/pack-fashion-mnist-gpu
