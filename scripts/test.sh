#!/usr/bin/env bash
# The test suite, from nothing: set up .venv with the test references, then run pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup-venv.sh" --test
cd "$root"
exec .venv/bin/python -m pytest "$@"
