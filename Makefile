# One task runner for humans and CI.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up install sandbox browser podman kubectl image deploy-check test lint typecheck proto proto-check unit contract integration e2e bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# System packages the tests need, installed only if missing (as root, from Debian; a stale package
# index is refreshed once). `make up` needs neither: without bwrap, workers say what isolation they
# could not apply and run jobs anyway (best-effort).
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
# Job isolation sandboxes jobs with bubblewrap (`yard worker --isolation`).
sandbox:
	@command -v bwrap >/dev/null || $(APT) bubblewrap || (apt-get update && $(APT) bubblewrap)

# The browser tests drive Debian's Chromium (Playwright never downloads one).
browser:
	@test -x /usr/bin/chromium || $(APT) chromium || (apt-get update && $(APT) chromium)

# The docker executor's tests run containers through Podman's Docker-compatible API.
podman:
	@command -v podman >/dev/null || $(APT) podman runc || (apt-get update && $(APT) podman runc)

# The Kubernetes manifests' tests (tests/deploy) render them with `kubectl kustomize`: Debian's
# kubernetes-client (kubectl 1.20, kustomize v2.0.3, which deploy/kubernetes is written for; a newer
# kubectl renders them too).
kubectl:
	@command -v kubectl >/dev/null || $(APT) kubernetes-client || (apt-get update && $(APT) kubernetes-client)

## make deploy-check: render and validate deploy/kubernetes (every overlay), offline
deploy-check: install kubectl
	$(BIN)/pytest -q -p no:cacheprovider tests/deploy

## make up: install and run the whole platform on its embedded defaults (Ctrl-C stops it)
up: install
	$(BIN)/yard up $(ARGS)

proto: install
	$(BIN)/python scripts/gen_protos.py

proto-check: install
	$(BIN)/python scripts/gen_protos.py --check

lint: install
	$(BIN)/ruff check src tests bench examples scripts
	$(BIN)/ruff format --check src tests bench examples scripts

typecheck: install
	$(BIN)/mypy

## make test: install and run everything CI runs (stub freshness, lint, types, all tests)
test: install sandbox browser podman kubectl proto-check lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests

unit: install
	$(BIN)/pytest -q tests/unit

contract: install
	$(BIN)/pytest -q tests/contract

integration: install sandbox podman
	$(BIN)/pytest -q tests/integration

e2e: install browser
	$(BIN)/pytest -q tests/e2e

## make bench: measure and print a table; writes bench/results.json
bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
