# `make demo`: create .venv, install from the lock, run the quickstart study end to end.
# `make test`: the same install, then every test (`make test-fast`, like plain `pytest`, skips the slow ones).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast clean

install: $(STAMP)

# torch first, pinned: an unpinned torch (or one pulled in by a dependency) takes a multi-GB CUDA build.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$$(grep '^torch==' requirements.lock)"
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	# scGPT's model code only, without its pins (scvi-tools < 1.0, torchtext, ...): README "Foundation models"
	$(BIN)/pip install --quiet --no-deps "$$(grep '^scgpt==' requirements.lock)"
	touch $(STAMP)

demo: install
	rm -rf studies/quickstart
	$(BIN)/scssl run experiments/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q -m ""

test-fast: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) studies .pytest_cache
