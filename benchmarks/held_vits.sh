#!/usr/bin/env bash
# The ViTs people hold (timm's and transformers' families) against their own libraries: runs the
# tests that compare them and prints every measured max |vitkit - reference| line, for
# benchmarks/RESULTS.md ("The ViTs people hold today"). Run from the project root after
# `bash scripts/test.sh` has made .venv (it installs timm and transformers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
lscpu | grep -E "Model name|CPU family|^Model:" || true
.venv/bin/python -m pytest -q -s -p no:cacheprovider tests/test_modern_vits.py \
    tests/test_hf_clip.py tests/test_hf_siglip.py tests/test_timm_folder.py 2>&1 \
    | grep -E "max \|vitkit - reference\||passed|failed"
