# Set-up and main jobs. Every target is idempotent: re-running skips what is already done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup sandbox test demo lock clean

setup: $(VENV)/.installed

# constraints.txt pins every other package to one tested resolution (`make lock` refreshes it).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,deepspeed]" -c constraints.txt
	touch $@

# Re-resolve pyproject.toml's ranges in a throwaway venv (ignoring constraints.txt) and freeze the result into it.
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install -q torch==2.13.0; \
	"$$tmp/venv/bin/python" -m pip install -q -e ".[dev,deepspeed]"; \
	grep '^#' constraints.txt > "$$tmp/constraints.txt"; \
	"$$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v '^torch==' >> "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt; echo "make lock: constraints.txt holds $$(grep -c '==' constraints.txt) pins"

# The code sandbox: a Docker engine (Debian's docker.io + debootstrap, installed and started as root when missing)
# and the prorl-sandbox:py3 image, built offline. Without root/apt it explains why and the Docker tests skip;
# with CI=true a missing engine fails.
sandbox:
	@docker/setup-engine.sh

# Runs the whole test suite. pytest exits 5 when it collects no test: reported loudly, not as a crash.
test: setup sandbox
	@$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc

# The embedded default (datasets/tiny.yaml): tiny model -> SFT -> ProRL -> held-out eval, ~7 min on 2 idle cores.
# Resumable and idempotent: finished steps in runs/demo are reused; a finished run just prints its table.
demo: setup
	$(VENV)/bin/prorl demo --output runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
