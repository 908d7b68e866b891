#!/usr/bin/env bash
# websocat, built from crates.io into bench/.tools (not on PATH): `make bench` compares wsgate
# with 1.x and 4.x; `make test` builds 1.x only, for the e2e check that a peer which knows
# nothing of resumption works as before. Idempotent: a version already built is kept.
# Usage: bench/setup.sh [websocat-1] [websocat-4]   (no argument: both)
set -euo pipefail
cd "$(dirname "$0")"
declare -A versions=([websocat-1]=1.14.1 [websocat-4]=4.0.0-alpha3)
install() { # <dir> <version>
	local dir=".tools/$1"
	if [[ -x "$dir/bin/websocat" ]] && "$dir/bin/websocat" --version 2>/dev/null | grep -qF "$2"; then
		return
	fi
	echo "bench/setup.sh: building websocat $2 into bench/$dir (a minute or two, once)"
	cargo install websocat --version "$2" --locked --root "$dir" --quiet
}
(($#)) || set -- websocat-1 websocat-4
for name in "$@"; do
	[[ -n "${versions[$name]:-}" ]] || { echo "bench/setup.sh: unknown peer '$name' (known: ${!versions[*]})" >&2; exit 2; }
	install "$name" "${versions[$name]}"
done
