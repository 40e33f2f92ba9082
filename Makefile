# Two commands set up and run everything: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# compileall: an editable install runs fedsilo from the source tree, and with
# PYTHONDONTWRITEBYTECODE=1 (CI, this machine) every start would compile each of its modules
# again (~0.1-0.15 s of a ~2 s budget refusal). A stale .pyc is ignored (its source's mtime);
# __pycache__/ is gitignored.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,ray]'
	$(BIN)/pip install --quiet -e tests/plugin_backend
	$(BIN)/python -m compileall -q fedsilo
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedsilo simulate examples/hospitals_horizontal/federation.toml --backend ckks

lint: $(STAMP)
	$(BIN)/lint-imports

# pytest exits 5 when it collects nothing: that is not a code failure, every other status is.
# Tests marked `exclusive` (the 50-silo Ray job, ~19 GB) run alone after the rest: next to
# another worker's tests the machine ran out of memory.
test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --timeout=900 -m "not exclusive"; s=$$?; \
	if [ $$s -ne 0 ] && [ $$s -ne 5 ]; then exit $$s; fi; \
	$(BIN)/python -m pytest --timeout=900 -m exclusive; s=$$?; \
	if [ $$s -eq 5 ]; then echo "pytest collected no exclusive tests"; exit 0; fi; exit $$s

bench: $(STAMP)
	$(BIN)/python benchmarks/crypto_backends.py
	$(BIN)/python benchmarks/horizontal_round.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
