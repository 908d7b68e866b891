#!/usr/bin/env bash
# testenv/setup-skypilot.sh — the real SkyPilot client (its sky/templates/websocket_proxy.py) in
# a virtualenv of its own, for the SkyPilot compatibility test and the benchmarks that run it.
# It is large (~450 MB) and must not change the test bed's packages, so only what uses it calls
# this, on first use. Idempotent: a finished install is kept. Prints the venv's path on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SKY_VENV="${WSGATE_SKY_VENV:-$ROOT/.venv-skypilot}"
SKY_VERSION="0.14.1"
if [ ! -f "$SKY_VENV/.wsgate-skypilot-$SKY_VERSION" ]; then
  printf 'setup-skypilot: installing skypilot %s into %s (the real SkyPilot SSH client)\n' \
    "$SKY_VERSION" "$SKY_VENV" >&2
  python3 -m venv "$SKY_VENV"
  "$SKY_VENV/bin/python" -m pip install --quiet "skypilot==$SKY_VERSION" "websockets==17.4"
  touch "$SKY_VENV/.wsgate-skypilot-$SKY_VERSION"
fi
printf '%s\n' "$SKY_VENV"
