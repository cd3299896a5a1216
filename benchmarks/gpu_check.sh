#!/usr/bin/env bash
# One prepared check for a lent GPU: kernel tests on CUDA (fp32, fp16, bf16 parametrizations), then
# the kernel microbenchmarks. Logs go to $OUT (default benchmarks/results/gpu_check); with $OUT set the
# benchmark CSV rows go to $OUT/kernels.csv (append them to benchmarks/results/kernels.csv), otherwise
# straight to benchmarks/results/kernels.csv.
#
#   bash benchmarks/gpu_check.sh            # tests + all benchmarks
#   QUICK=1 bash benchmarks/gpu_check.sh    # tests + ViT-L only, no AdamW benchmark
#
# Uses $PYTHON (default: .venv/bin/python if it has CUDA, else python3). When vjepa_fast.kernels is
# not installed, it imports the package from the working tree through a symlink shim (no pip, no
# network). Refuses (exit 2) without a CUDA GPU.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [[ -n "${OUT:-}" ]]; then
    export VJEPA_BENCH_CSV="$OUT/kernels.csv"  # results come back through $OUT
else
    OUT="$REPO/benchmarks/results/gpu_check"  # the benchmarks append to benchmarks/results/kernels.csv
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
log() { echo "$@" | tee -a "$LOG"; }

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    for cand in "$REPO/.venv/bin/python" python3 python; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
            echo "$cand"; return
        fi
    done
    echo ""
}
PY="$(pick_python)"
if [[ -z "$PY" ]]; then
    log "gpu_check: no Python with a CUDA-enabled torch and a visible GPU; refusing."
    exit 2
fi
unset TRITON_INTERPRET
export VJEPA_FAST_KERNELS=triton

# Run from a neutral directory: with the repository root as the working directory, `vjepa_fast`
# would resolve to ./vjepa_fast, which has no `kernels` subpackage unless the project is installed.
RUN_DIR="$(mktemp -d)"
cd "$RUN_DIR"
if ! "$PY" -c "import vjepa_fast.kernels" 2>/dev/null; then
    mkdir -p "$RUN_DIR/shim/vjepa_fast"
    for f in "$REPO"/vjepa_fast/*; do ln -s "$f" "$RUN_DIR/shim/vjepa_fast/$(basename "$f")"; done
    ln -sfn "$REPO/kernels" "$RUN_DIR/shim/vjepa_fast/kernels"
    export PYTHONPATH="$RUN_DIR/shim${PYTHONPATH:+:$PYTHONPATH}"
    log "gpu_check: vjepa_fast is not installed; importing it from the working tree via $RUN_DIR/shim"
fi

{
    nvidia-smi || true
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/environment.txt" | tee -a "$LOG"

status=0
log "== kernel tests on CUDA =="
if "$PY" -c "import pytest" 2>/dev/null; then
    # -o addopts= drops pyproject's --benchmark-disable, which needs pytest-benchmark
    "$PY" -m pytest "$REPO"/tests/test_kernels_*.py --rootdir "$REPO" -c "$REPO/pyproject.toml" -o addopts= \
        -q -ra -p no:cacheprovider --durations=10 2>&1 | tee "$OUT/tests.txt" | tee -a "$LOG" >/dev/null
    test_rc=${PIPESTATUS[0]}
    tail -n 15 "$OUT/tests.txt"
    [[ $test_rc -ne 0 ]] && status=1
else
    log "gpu_check: pytest is not installed for $PY; kernel tests skipped"
    status=1
fi

MODELS=(vit_l vit_h)
EMA_ARGS=()
if [[ -n "${QUICK:-}" ]]; then MODELS=(vit_l); EMA_ARGS=(--skip-adamw); fi
for bench in masked_gather predictor_input masked_l1_loss ema; do
    log "== bench_$bench =="
    args=()
    case $bench in
        masked_gather|masked_l1_loss) args=(--models "${MODELS[@]}") ;;
        ema) args=(--models "${MODELS[@]}" ${EMA_ARGS[@]+"${EMA_ARGS[@]}"}) ;;
    esac
    "$PY" "$REPO/benchmarks/kernels/bench_$bench.py" ${args[@]+"${args[@]}"} 2>&1 | tee "$OUT/bench_$bench.txt" | tee -a "$LOG"
    [[ ${PIPESTATUS[0]} -ne 0 ]] && status=1
done
# Attention backends at the V-JEPA shapes; the measured tables (VJEPA_FAST_ATTN_TABLE) go to $OUT.
for m in vit_large vit_huge; do log "== bench_attention $m =="; "$PY" "$REPO/benchmarks/bench_attention.py" --model "$m" --out "$OUT/attention_table_$m.json" 2>&1 | tee "$OUT/bench_attention_$m.txt" | tee -a "$LOG"; [[ ${PIPESTATUS[0]} -ne 0 ]] && status=1; done
log "gpu_check: done (status $status); outputs in $OUT"
exit $status
