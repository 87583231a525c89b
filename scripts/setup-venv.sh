#!/usr/bin/env bash
# Create .venv in the project root if it is missing and install vitkit with pinned versions.
# Usage: scripts/setup-venv.sh [--test]   (--test adds the test references: timm, transformers, ...)
# Re-running is cheap: pip runs only when pyproject.toml, the pins or the extras changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="."
[[ "${1:-}" == "--test" ]] && target=".[test]"

if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv with $(python3 --version)" >&2
    python3 -m venv .venv
fi
stamp=".venv/.vitkit-installed"
wanted="$(cat pyproject.toml requirements/pins.txt | sha256sum | cut -c1-16) $target"
if [[ ! -f "$stamp" ]] || ! grep -qxF "$wanted" "$stamp"; then
    need_gb=7  # the pinned torch is a CUDA build: about 6.3 GB in the venv with the test references
    free_gb=$(( $(df --output=avail -k . | tail -1) / 1024 / 1024 ))
    if [[ -z "$(compgen -G ".venv/lib/python3*/site-packages/torch")" && $free_gb -lt $need_gb ]]; then
        echo "[setup] error: the venv needs about $need_gb GB on $(df --output=target . | tail -1); $free_gb GB free" >&2
        exit 1
    fi
    echo "[setup] installing vitkit$([[ $target == . ]] || echo ' with test dependencies') (pinned in requirements/pins.txt)" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c requirements/pins.txt -e "$target"
    echo "$wanted" >> "$stamp"
fi
