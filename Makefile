# Set-up and entry points. Every install the project needs happens here (no hand installs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extras from setup.cfg: `make install EXTRAS=tpu` on a Cloud TPU VM, `EXTRAS=cuda12` on NVIDIA GPUs.
EXTRAS ?= test
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install pretrain test test-fast clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# Pretrain a tiny T5.1.1 on the bundled offline corpus: progress, checkpoint, decoded sample.
pretrain: $(STAMP)
	$(PY) -m t5x_lite.train --gin_file=gin/runs/pretrain_tiny.gin $(ARGS)

# The whole suite (slow tests included), as CI runs it.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "slow or not slow" $(ARGS)

# Fast tests only.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
