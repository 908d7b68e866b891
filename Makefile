# wsgate — the two commands are `make demo` and `make test`; everything else is a building block.
SHELL := /bin/bash
.DEFAULT_GOAL := demo

VENV   := $(CURDIR)/.venv
PY     := $(VENV)/bin/python
WASM_RAW := target/wasm32-wasip1/wasm-release/wsgate_filter.wasm
WASM   := target/wsgate-filter.wasm
# Rust 1.95 enables these wasm features by default; binaryen 108 (Debian's wasm-opt) must be told, or it refuses the module.
WASM_OPT_FLAGS := -Oz --converge --strip-debug --strip-producers --strip-target-features \
	--enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	--enable-mutable-globals --enable-multivalue --enable-reference-types

## help: this list
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

.PHONY: help setup wasm-target filter sidecar client bench-tool demo bench soak fuzz images e2e-kind kind-render \
	kind-logs kind-down test unit e2e lint fmt clean crash-filter

## setup: install what a fresh machine lacks for the test bed (idempotent): the Rust target, a
## virtualenv with Envoy and the test clients, system packages (the SkyPilot client, which only
## its compatibility test and the benchmarks run, installs on first use)
setup:
	@bash testenv/setup.sh

## wasm-target: the one thing the filter build needs beyond cargo (idempotent). Not `setup`:
## building the images (make images, the kind end-to-end) must not install the test bed.
wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 \
		|| rustup target add wasm32-wasip1

## filter: build the proxy-wasm module (optimised with wasm-opt when available)
filter: wasm-target
	cargo build --profile wasm-release --locked --target wasm32-wasip1 -p wsgate-filter
	@if command -v wasm-opt >/dev/null; then \
		wasm-opt $(WASM_OPT_FLAGS) $(WASM_RAW) -o $(WASM); \
	else \
		echo "wasm-opt not found: using the unoptimised module"; cp $(WASM_RAW) $(WASM); \
	fi
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

## sidecar: build the release wsgate-sidecar binary
sidecar:
	cargo build --release --locked -p wsgate-sidecar

## client: build the release wsgate binary
client:
	cargo build --release --locked -p wsgate-client

## bench-tool: the load side of the benchmarks (also used by the e2e suite's bench smoke test)
bench-tool: setup
	cargo build --release --locked -p wsgate-bench
	cargo build --profile wasm-release --locked --target wasm32-wasip1 -p wsgate-noop-filter

## demo: ssh through the whole path on loopback, and a report of what it proved
demo: setup filter sidecar client
	WSGATE_WASM=$(CURDIR)/$(WASM) $(PY) testenv/demo.py

## bench: wsgate vs raw TCP, websocat 1.x/4.x, Python, Lua: tables of figures and ratios,
## written to bench/results.md (about 20 min; sizes: see bench/bench.py)
bench: setup filter sidecar client bench-tool
	@bash bench/setup.sh
	@bash testenv/setup-skypilot.sh >/dev/null
	WSGATE_WASM=$(CURDIR)/$(WASM) $(PY) bench/bench.py

## soak: SOAK_SESSIONS (8) concurrent ssh sessions through Envoy + filter + sidecar for
## SOAK_SECONDS (180), every byte hashed at both ends, sidecar RSS and fds watched
soak: setup filter sidecar client
	WSGATE_WASM=$(CURDIR)/$(WASM) $(PY) testenv/soak.py

## fuzz: each fuzz target of the filter core and the framing for FUZZ_SECS (default 60) on the
## nightly toolchain; new corpus entries land in filter/core/fuzz/corpus (commit them)
FUZZ_SECS ?= 60
FUZZ_TARGETS := token decide config framing wsframe
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd filter/core && for t in $(FUZZ_TARGETS); do \
		cargo +nightly fuzz run $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECS) -max_len=4096 || exit 1; \
	done

## unit: the crates' own tests (no Envoy)
unit:
	cargo test --workspace --locked

## crash-filter: a Wasm module that traps on request, for the e2e suite's failure-policy tests
crash-filter: wasm-target
	cargo build --profile wasm-release --locked --target wasm32-wasip1 -p wsgate-crash-filter

## e2e: the real-Envoy suite (builds websocat 1.x into bench/.tools once: a peer it runs)
e2e: setup filter sidecar client bench-tool crash-filter
	@bash bench/setup.sh websocat-1
	WSGATE_WASM=$(CURDIR)/$(WASM) $(PY) -m pytest -q testenv/e2e

## test: every test, and the lint (formatting, clippy, shellcheck): what CI runs
test: setup lint unit e2e

## lint: formatting, clippy (host and wasm32-wasip1), shellcheck
lint: setup
	shellcheck -x testenv/setup.sh testenv/setup-skypilot.sh testenv/kind/*.sh bench/setup.sh
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo clippy -p wsgate-filter -p wsgate-crash-filter --target wasm32-wasip1 --locked -- -D warnings

fmt:
	cargo fmt --all

## images: the filter's OCI image and the sidecar image (needs a Docker engine; builds only the
## filter module first, no test bed). IMAGE_REPO/IMAGE_TAG name them (the kind e2e pushes them
## to its local registry).
IMAGE_REPO ?= ghcr.io/wsgate
IMAGE_TAG  ?= 0.1.0
images: filter
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine"; exit 2; }
	docker build -f images/filter.Dockerfile -t $(IMAGE_REPO)/wsgate-filter:$(IMAGE_TAG) .
	docker build -f images/sidecar.Dockerfile -t $(IMAGE_REPO)/wsgate-sidecar:$(IMAGE_TAG) .

## e2e-kind: kind + istioctl end-to-end (needs Docker, kind, istioctl; see testenv/kind/README.md)
e2e-kind:
	bash testenv/kind/up.sh
	bash testenv/kind/e2e.sh

## kind-render: only generate the kind e2e's files (kind config, hosts.toml, Istio and kustomize
## overlays) into WSGATE_KIND_WORK or .testbed/kind; needs no Docker
kind-render:
	bash testenv/kind/render.sh

## kind-logs: collect the kind cluster's logs and state into .testbed/kind/logs
kind-logs:
	bash testenv/kind/logs.sh

## kind-down: delete the kind cluster and its registry
kind-down:
	bash testenv/kind/down.sh

clean:
	cargo clean
	rm -rf .testbed
