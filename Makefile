PY ?= python3
N ?= 10000

.PHONY: install test demo sweep

install:
	PY=$(PY) bash scripts/install.sh

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m tools.demo --frames $(N)

sweep: install
	$(PY) -m tools.sweep --pack packs/fashion-mnist
