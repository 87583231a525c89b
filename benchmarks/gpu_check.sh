#!/usr/bin/env bash
# The GPU check: what vitkit does on one CUDA GPU, in under 8 minutes, into one results file.
#
#   bash benchmarks/gpu_check.sh --prepare   # here: copy ../shared into gpu-data/ (git-ignored)
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from the checkout's root
#
# It uses the GPU machine's own python3 and packages (torch, timm, transformers, pytest; no
# webdataset, which nothing here needs) and vitkit from src/, so nothing is installed. Sections:
#   1. the machine: GPU, driver, python, torch
#   2. tests: the CUDA tests (tests/test_cuda.py) and the fast suite's model, conversion,
#      augmentation and training tests under this torch
#   3. the demo's GPU recipe for a short budget (top-1 and img/s per stage)
#   4. ViT-B/16 at 224 px, bf16 training step, vitkit vs timm (img/s, MFU against the matmul
#      peak measured in the same run)
# Everything goes to $OUT/gpu_check.md (OUT defaults to gpu-results/); each section's log beside it.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p gpu-data/shared
    cp -r ../shared/data ../shared/fixtures gpu-data/shared/
    du -sh gpu-data
    exit 0
fi

out="${OUT:-gpu-results}"
mkdir -p "$out"
report="$out/gpu_check.md"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export VITKIT_SHARED="$root/gpu-data/shared" VITKIT_CACHE="/tmp/vitkit-cache"
demo_budget="${DEMO_BUDGET:-150}"
python="${PYTHON:-python3}"

section() { printf '\n## %s\n\n' "$1" | tee -a "$report"; }
# Run a command with a time limit; its output to a log, its last lines into the report.
step() {
    local name="$1" limit="$2" lines="$3"
    shift 3
    local started=$SECONDS status
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    status=$?
    { echo '```'; tail -n "$lines" "$out/$name.log"; echo '```';
      echo "exit $status after $((SECONDS - started)) s"; } >>"$report"
}

echo "# vitkit GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >"$report"

section "Machine"
{ echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$python" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))' 2>&1
  echo '```'; } >>"$report"

section "Tests on this GPU and torch"
step tests 240 25 "$python" -m pytest -q -p no:cacheprovider -n 8 -m "not slow" \
    tests/test_cuda.py tests/test_model.py tests/test_transforms.py tests/test_training.py \
    tests/test_timm_equivalence.py tests/test_hf_equivalence.py tests/test_google_checkpoint.py

section "Demo, GPU recipe, ${demo_budget} s of training"
step demo 240 20 "$python" -m vitkit demo --hardware gpu --budget "$demo_budget" \
    --data "$VITKIT_SHARED/data/cifar10-jpg.tar.gz" --out /tmp/vitkit-demo
for stage in pretrain finetune finetune_at_pretrain_res; do
    metrics="/tmp/vitkit-demo/$stage/metrics.jsonl"
    [[ -f "$metrics" ]] && "$python" - "$metrics" "$stage" >>"$report" <<'EOF'
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1])]
rates = [r["images_per_s"] for r in records if "images_per_s" in r]
top1 = [r["top1"] for r in records if "top1" in r]
print(f"- {sys.argv[2]}: {len(rates)} log lines, median {statistics.median(rates):.0f} img/s, "
      f"final top-1 {top1[-1]:.2%}" if rates and top1 else f"- {sys.argv[2]}: incomplete")
EOF
done
cp /tmp/vitkit-demo/summary.json "$out/demo_summary.json" 2>/dev/null

section "ViT-B/16 at 224 px, bf16 training step: vitkit vs timm"
step speed 150 15 "$python" benchmarks/speed.py --models ViT-B/16@224 --tasks train \
    --dtypes bf16 fp32 --modes eager --repeats 3 --no-memory --data '' --device cuda

echo
cat "$report"
