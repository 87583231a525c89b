#!/usr/bin/env bash
# The test suite, from nothing: set up .venv with the test references, then run pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup-venv.sh" --test
cd "$root"
# One worker per core; work stealing keeps both busy to the end (tests/conftest.py gives each
# worker its share of the cores and starts the slow tests first). `-n 0` runs serially.
exec .venv/bin/python -m pytest -n auto --dist worksteal "$@"
