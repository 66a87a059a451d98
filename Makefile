# `make demo`: create .venv, install from the lock, run the quickstart study end to end.
# `make test`: the same install, then every test (`make test-fast`, like plain `pytest`, skips the slow ones).
# the Python of the venv; unset, tools/find-python finds one >= 3.12 (python3, else a newer one installed beside it)
PYTHON ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast clean

install: $(STAMP)

# torch first, pinned, so that no dependency pulls another build (on Python 3.12 PyPI's is a 4.7 GB CUDA build).
$(STAMP): pyproject.toml requirements.lock
	# a missing venv, or one of an older Python (made before scssl needed 3.12), is made anew
	$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null || \
		{ py="$(PYTHON)"; py="$${py:-$$(tools/find-python)}" && rm -rf $(VENV) && "$$py" -m venv $(VENV); }
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
