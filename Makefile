# vvolguard: `make run` starts the local stack, `make test` runs every test (two workers: one per core).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The runtime (requirements.txt: what `make run` needs) and, on top, the development tools
# (requirements-dev.txt: tests, benchmarks, fuzzing, linters); each set has its own stamp.
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test venv bench fuzz soak openapi clean lint

# The pinned sets are installed by uv (a fast installer of the same packages from the same index: the
# development set in seconds, where pip took about 25 s of every fresh clone's `make test`); where uv
# cannot be installed, pip does it (docs/test-speed.md).
UV_VERSION := 0.13.9
INSTALL := sh -c 'if [ -x "$(BIN)/uv" ]; then exec "$(BIN)/uv" pip install --python "$(BIN)/python" -q "$$@"; \
	else exec "$(BIN)/python" -m pip install -q "$$@"; fi' install

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION) || echo "uv is not available: pip installs the requirements"
	@echo "installing requirements.txt and vvolguard (editable)"
	@$(INSTALL) -r requirements.txt
	@$(INSTALL) --no-deps -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	@echo "installing requirements-dev.txt"
	@$(INSTALL) -r requirements-dev.txt
	touch $(DEV_STAMP)

venv: $(DEV_STAMP)

run: $(STAMP)
	exec $(BIN)/python -m infra.local

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/cfn-lint template.yaml
	$(BIN)/checkov -f template.yaml --framework cloudformation --skip-download --compact --quiet

clean:
	rm -rf $(VENV) .pytest_cache

# The fleet (bench/fleet.py), the dashboard's pages (bench/pages.py), the event handler's cold start
# (bench/coldstart.py), then the measured exposure (bench/exposure.py): each merges the previous one's last
# JSON line into its own, so the last line holds every figure.
bench: $(DEV_STAMP)
	( $(BIN)/python -m bench.fleet $(BENCH_ARGS); echo $$? > .bench-fleet.rc ) | tee .bench-fleet.out
	test "$$(cat .bench-fleet.rc)" = 0
	( $(BIN)/python -m bench.pages $(PAGES_BENCH_ARGS) --merge .bench-fleet.out; echo $$? > .bench-pages.rc ) | tee .bench-pages.out
	test "$$(cat .bench-pages.rc)" = 0
	( $(BIN)/python -m bench.coldstart $(COLDSTART_BENCH_ARGS) --merge .bench-pages.out; echo $$? > .bench-coldstart.rc ) | tee .bench-coldstart.out
	test "$$(cat .bench-coldstart.rc)" = 0
	$(BIN)/python -m bench.exposure $(EXPOSURE_BENCH_ARGS) --merge .bench-coldstart.out  # its last line merges all four

# 10,000 requests generated from openapi.yaml against a fresh local stack (FUZZ_ARGS="--requests N --seed S").
fuzz: $(DEV_STAMP)
	$(BIN)/python -m bench.fuzz $(FUZZ_ARGS)

# The soak test at full size: 200 VMs (`make test` runs 130; SOAK_VMS=N to choose).
SOAK_VMS ?= 200
soak: $(DEV_STAMP)
	VVG_SOAK_VMS=$(SOAK_VMS) $(BIN)/python -m pytest tests/test_soak.py -p no:cacheprovider -q -s $(PYTEST_ARGS)

# Regenerate openapi.yaml from the code's event schema (tests/test_openapi.py fails while it is stale).
openapi: $(STAMP)
	$(BIN)/python -m infra.openapi > openapi.yaml
