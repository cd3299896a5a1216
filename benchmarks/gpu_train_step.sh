#!/usr/bin/env bash
# The prepared end-to-end check for a lent GPU (run after, or instead of, gpu_check.sh): the training
# step of the official-structure reference against the fast path, side by side in one process each,
# in order of importance, so that a session cut short still brings back the first numbers.
#
#   1. ViT-L/16 16x224 batch 24 bf16: reference vs fast (eager, default options)
#   2. the same, fast path with every option: compile, CUDA-graphed target, tuned attention (table
#      measured first), packed context, sparse patch embed (fused AdamW+EMA and the bf16 target copy
#      are on by default on CUDA)
#   3. loss curves of reference and fully optimised fast path over 50 steps from the same start
#   4. ViT-H/16: reference vs fast (all options)
#
# JSON lines go to $OUT/train_step.jsonl (default benchmarks/results/train_step), logs next to them.
# SIZE=tiny runs the same sequence at CPU sizes in seconds (to check the script, not to measure).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/benchmarks/results/train_step}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[[ -x "$REPO/.venv/bin/python" && -z "${PYTHON:-}" ]] && PY="$REPO/.venv/bin/python"
JSONL="$OUT/train_step.jsonl"
LOG="$OUT/train_step.log"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# The kernels subpackage lives in ./kernels; without an install, import it through a symlink shim.
if ! (cd /tmp && "$PY" -c "import vjepa_fast.kernels" 2>/dev/null); then
    SHIM="$(mktemp -d)"
    mkdir -p "$SHIM/vjepa_fast"
    for f in "$REPO"/vjepa_fast/*; do ln -s "$f" "$SHIM/vjepa_fast/$(basename "$f")"; done
    ln -sfn "$REPO/kernels" "$SHIM/vjepa_fast/kernels"
    export PYTHONPATH="$SHIM:$REPO/benchmarks"
fi
cd "$(mktemp -d)"

if [[ "${SIZE:-}" == tiny ]]; then
    L=(--device cpu --model vit_tiny --embed-dim 64 --depth 2 --heads 2 --pred-dim 32 --pred-depth 1
       --frames 8 --crop 64 --batch 2)
    H=("${L[@]}")
    STEPS=(--steps 2 --warmup 1 --phase-steps 1)
    CHECK=3
    ATTN=(--model tiny --device cpu)
    OPTS=(--pack-context --sparse-embed --attn tuned --attn-table "$OUT/attention_table.json")
else
    L=(--model vit_large --batch 24 --frames 16 --crop 224 --dtype bf16)
    H=(--model vit_huge --batch 24 --frames 16 --crop 224 --dtype bf16)
    STEPS=(--steps 20 --warmup 5 --phase-steps 5)
    CHECK=50
    ATTN=(--model vit_large --batch 24)
    OPTS=(--compile --cuda-graphs --pack-context --sparse-embed --attn tuned --attn-table "$OUT/attention_table.json")
fi

status=0
run() {  # run NAME ARGS...: one benchmark invocation, its output appended to the log
    local name=$1; shift
    echo "== $name: $*" | tee -a "$LOG"
    "$PY" "$REPO/benchmarks/train_step.py" "$@" --out "$JSONL" 2>&1 | tee -a "$LOG"
    [[ ${PIPESTATUS[0]} -ne 0 ]] && status=1
    return 0
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee -a "$LOG"
run "vit_l reference vs fast (eager)" "${L[@]}" "${STEPS[@]}" --impl both
echo "== attention table" | tee -a "$LOG"
"$PY" "$REPO/benchmarks/bench_attention.py" "${ATTN[@]}" --out "$OUT/attention_table.json" 2>&1 | tee -a "$LOG"
[[ ${PIPESTATUS[0]} -ne 0 ]] && status=1
run "vit_l fast, every option" "${L[@]}" "${STEPS[@]}" --impl fast "${OPTS[@]}"
run "vit_l loss curves, $CHECK steps" "${L[@]}" --check-loss "$CHECK" "${OPTS[@]}"
run "vit_h reference vs fast (every option)" "${H[@]}" "${STEPS[@]}" --impl both "${OPTS[@]}"
echo "gpu_train_step: done (status $status); results in $JSONL" | tee -a "$LOG"
exit $status
