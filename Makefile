PY ?= python3
N ?= 10000

.PHONY: install test demo lint

install:
	PY=$(PY) bash scripts/install.sh

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m tools.demo --frames $(N)
