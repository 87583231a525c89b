#!/usr/bin/env bash
# The demo as a CPU without AVX-512 or native bf16 would run it: oneDNN, MKL and ATen limited to
# AVX2, so vitkit finds bf16 not native (fp32 Muon, precision=auto picks fp32). On a CPU that has
# AVX-512 this limits the instruction set, not the clock, caches or memory bandwidth: it
# approximates the slower AVX2-only machine, it is not that machine.
#
#     bash benchmarks/demo_avx2.sh [--out runs/demo-avx2] [other vitkit demo options]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
lscpu | grep -E "^Model name|^CPU\(s\)"
export ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2
.venv/bin/python -c "import torch; print('ATen CPU capability:', torch.backends.cpu.get_cpu_capability())"
exec .venv/bin/vitkit demo --out runs/demo-avx2 "$@"
