# Two commands on a fresh machine:  `make train` (the main job, embedded default) and `make test`.
# Both set everything up first, idempotently, in ./.venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vjepa_fast-installed

.PHONY: setup train test bench extract-demo

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*)
	@missing=""; \
	  ldconfig -p 2>/dev/null | grep -q libavcodec || command -v ffmpeg >/dev/null || missing="ffmpeg"; \
	  ldconfig -p 2>/dev/null | grep -q libOSMesa || missing="$$missing libosmesa6"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing (torchcodec needs FFmpeg's libraries; MuJoCo renders headless with OSMesa)"; \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
	    else sudo apt-get update -qq && sudo apt-get install -y -qq $$missing; fi; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0 triton==3.7.1 torchcodec==0.13.0 pybind11 ninja numpy
	$(PY) -m pip install -q -e ".[test,sim]" --no-build-isolation
	$(PY) -m pip install -q --no-deps torchvision==0.28.0  # the reference processor's kernels (tests only)
	$(PY) .ci/patch_torchvision.py
	@touch $@

train: setup
	$(PY) -m vjepa_fast.train

extract-demo: setup
	$(PY) -m vjepa_fast.extract --demo

test: setup
	$(PY) -m pytest tests -q

bench: setup
	@mkdir -p outputs
	$(PY) -m pytest benchmarks --benchmark-only -q --benchmark-json=outputs/benchmarks.json
	$(PY) benchmarks/write_results.py --json outputs/benchmarks.json --readme README.md
