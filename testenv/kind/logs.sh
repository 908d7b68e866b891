#!/usr/bin/env bash
# Collects the kind end-to-end's logs and state into $WORK/logs (what up.sh and e2e.sh do on
# failure by themselves): for CI's failure step, or by hand while a cluster is up.
# shellcheck source=testenv/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need kubectl
collect_logs
