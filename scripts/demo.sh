#!/usr/bin/env bash
# The demo, end to end, from nothing: set up .venv, then run `vitkit demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup-venv.sh"
cd "$root"
exec .venv/bin/vitkit demo "$@"
