#!/usr/bin/env bash
# The peers `make bench` compares wsgate with, built from crates.io into bench/.tools (not on
# PATH, not part of `make test`). Idempotent: a version already built is kept.
set -euo pipefail
cd "$(dirname "$0")"
install() { # <dir> <version>
	local dir=".tools/$1"
	if [[ -x "$dir/bin/websocat" ]] && "$dir/bin/websocat" --version 2>/dev/null | grep -qF "$2"; then
		return
	fi
	echo "bench/setup.sh: building websocat $2 into bench/$dir (a few minutes, once)"
	cargo install websocat --version "$2" --locked --root "$dir" --quiet
}
install websocat-1 1.14.1
install websocat-4 4.0.0-alpha3
