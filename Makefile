# One task runner for humans and CI.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up install sandbox browser podman kubectl image image-smoke deploy-check test lint typecheck proto proto-check unit contract integration e2e bench clean

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

## make image: build the control plane and agent image with podman (deploy/Containerfile). Without a
## registry the base image is made from Debian's packages first (deploy/image/base.sh, as root).
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGE ?= localhost/trainyard:$(VERSION)
BASE_IMAGE ?= localhost/trainyard-base:bookworm
comma := ,
# Behind a proxy that re-signs TLS, pip in the build needs its CA bundle (PIP_CERT, as pip reads it).
PIP_CERT_SECRET := $(if $(PIP_CERT),--secret id=pip_cert$(comma)src=$(PIP_CERT))
image: podman
	@podman image exists $(BASE_IMAGE) || { command -v debootstrap >/dev/null || $(APT) debootstrap \
		|| (apt-get update && $(APT) debootstrap); deploy/image/base.sh $(BASE_IMAGE); }
	podman build -f deploy/Containerfile --ignorefile deploy/containerignore \
		--build-arg BASE=$(BASE_IMAGE) $(PIP_CERT_SECRET) -t $(IMAGE) .

## make image-smoke: run the image for real (control plane, sandboxed agent, one job)
PODMAN_RUN_OPTS ?= --ulimit nofile=1024:1024 --ulimit nproc=4096:4096
image-smoke: image
	PODMAN_RUN_OPTS='$(PODMAN_RUN_OPTS)' deploy/image/smoke.sh $(IMAGE)

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
