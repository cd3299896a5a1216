#!/usr/bin/env bash
# One call that measures everything on a lent GPU (an H200 here), most important first, each stage
# under its own `timeout` inside one overall deadline, so a run cut short still brings back the
# first figures. Run it first whenever a GPU is available, and commit what it measured.
#
#   VJEPA_FAST_COMMIT=<commit> bash benchmarks/gpu_measure.sh   # on the GPU machine (OUT set there)
#   SIZE=tiny bash benchmarks/gpu_measure.sh       # the same stages at CPU sizes in seconds (CI runs it)
#   DEADLINE=300 bash benchmarks/gpu_measure.sh    # overall wall-time budget in seconds (default 530)
#   ONLY="loss vith" bash benchmarks/gpu_measure.sh # only these stages (a second call's remainder)
#
# Name the commit measured: the GPU machine's copy of the tree carries a .git that reported the last
# landed commit, not the working tree's (seen 2026-11-30), so every JSON line takes VJEPA_FAST_COMMIT.
#
# Stages, most important first (budget in seconds, cut to what is left of DEADLINE; "took" =
# measured on an H200 on 2026-11-30, benchmarks/results/gpu_measure/; steady state, the default
# since, adds one untimed step per measured step):
#   env          environment + the two ceilings: bf16 matmul TFLOP/s, device copy GB/s    40  took 6-8
#   vitl         train_step ViT-L/16 16x224 batch 24 bf16: reference vs fast, eager, steady
#                state (every measured step's attention lengths built in the warm-up)    120  took 46-49
#   attn         attention backends at the ViT-L shapes -> the tuned table                 45  took 7-8
#   vitl_all     the fast path with every option (compile, CUDA-graphed target, tuned
#                attention, packed context, sparse embed; fused AdamW+EMA and the bf16
#                target copy by default), profiled, steady state                          240  took 175 (cold)
#   kernels      Triton kernels on CUDA vs their references at real V-JEPA shapes        130  took 92
#   loss         20-step loss check, reference vs fast eager with packed context + sparse   60  took 33
#   vitl_cold    new attention lengths in the measured steps, one implementation per
#                process: reference, fast (cuDNN), fast with flash attention             120  ~90 (est.)
#   ablate       fast eager, one option at a time, profiled: default (+ the cost of a new
#                attention shape), flash attention, packed context, sparse embed         170  took 122 (cold)
#   loss_all     50-step loss check, every option (compiled)                              150  ran out at 99
#   vith         ViT-H/16: reference vs fast, every option                                120  not reached
#   v2l          V-JEPA 2 ViT-L/16 16x256 batch 24: official V2 structure vs fast, without
#                and with activation checkpointing (peak memory of each)                  180  took 81 (cold)
#   v2_loss      V2 20-step loss check, reference vs fast                                  90  took 50
#   v2g          V2 ViT-g/16 (vit_giant_xformers), 10 timed steps                         240  ~170 (est.)
#   kbench       kernel microbenchmarks, ViT-L shapes, GB/s against the measured copy       90  gather: 16
# One call (DEADLINE 530) reaches about vitl_cold; the rest runs in later calls with ONLY="...".
# A bare machine took about 30 s to start (device time, not in DEADLINE).
#
# Files under $OUT (the GPU machine returns at most 8): results.jsonl (every JSON line: environment,
# train steps, loss check, tests), summary.txt (the table printed last), measure.log (all output),
# logs.tgz (per-stage logs, attention table, kernels.csv, pytest output). Without $OUT they go to
# benchmarks/results/gpu_measure/<date>/.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$REPO/benchmarks/results/gpu_measure/$STAMP}"
DEADLINE="${DEADLINE:-530}"
SIZE="${SIZE:-full}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
JSONL="$OUT/results.jsonl"
SUMMARY="$OUT/summary.txt"
MLOG="$OUT/measure.log"
: > "$MLOG"
STAGES="$WORK/stages.tsv"
: > "$STAGES"
T0=$SECONDS

PY="${PYTHON:-python3}"
[[ -x "$REPO/.venv/bin/python" && -z "${PYTHON:-}" ]] && PY="$REPO/.venv/bin/python"
[[ "$PY" == */* ]] && PY="$(realpath -s "$PY")"  # the stages run from a scratch directory
export PYTHONUNBUFFERED=1
# vjepa_fast finds ./kernels as vjepa_fast.kernels in a checkout, so no install is needed.
export PYTHONPATH="$REPO:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export VJEPA_BENCH_CSV="$LOGS/kernels.csv"

if [[ "$SIZE" == tiny ]]; then
    unset TRITON_INTERPRET
    export TRITON_INTERPRET=1 VJEPA_FAST_KERNELS=torch
    L=(--device cpu --model vit_tiny --embed-dim 64 --depth 2 --heads 2 --pred-dim 32 --pred-depth 1
       --frames 8 --crop 64 --batch 2 --dtype fp32)
    H=("${L[@]}")
    STEPS=(--steps 2 --warmup 1 --phase-steps 1)
    ABL=(--impl fast --no-flops --no-mfu --warmup 1 --steps 2 --phase-steps 1)
    CHECK=3
    CHECK_EAGER=2
    ATTN=(--model tiny --device cpu)
    OPTS=(--pack-context --sparse-embed --attn tuned --attn-table "$LOGS/attention_table.json")
    V2L=(--device cpu --arch v2 --model vit_tiny --embed-dim 96 --depth 2 --heads 3 --pred-dim 48 --pred-depth 2
         --pred-heads 3 --frames 8 --crop 64 --batch 2 --dtype fp32)
    V2G=("${V2L[@]}")
    V2G_STEPS=(--steps 2 --warmup 1 --phase-steps 1)
    ENV_ARGS=(--device cpu --small)
    KTESTS=(-k "odd_sizes and dtype0")
else
    unset TRITON_INTERPRET
    export VJEPA_FAST_KERNELS=triton
    L=(--model vit_large --batch 24 --frames 16 --crop 224 --dtype bf16)
    H=(--model vit_huge --batch 24 --frames 16 --crop 224 --dtype bf16)
    STEPS=(--steps 20 --warmup 5 --phase-steps 5)
    ABL=(--impl fast --no-flops --no-mfu --warmup 3 --steps 10 --phase-steps 3)
    CHECK=50
    CHECK_EAGER=20
    ATTN=(--model vit_large --batch 24)
    OPTS=(--compile --cuda-graphs --pack-context --sparse-embed --attn tuned --attn-table "$LOGS/attention_table.json")
    V2L=(--arch v2 --model vit_large --batch 24 --frames 16 --crop 256 --dtype bf16)
    V2G=(--arch v2 --model vit_giant_xformers --batch 24 --frames 16 --crop 256 --dtype bf16)
    V2G_STEPS=(--steps 10 --warmup 3 --phase-steps 3)
    ENV_ARGS=()
    KTESTS=()
fi

# The later train-step stages read the tuned attention table, so asking for them runs attn too.
if [[ -n "${ONLY:-}" && " $ONLY " =~ \ (vitl_all|loss_all|vith)\  ]]; then ONLY="attn $ONLY"; fi

say() { echo "$@" | tee -a "$MLOG"; }

# stage NAME BUDGET CMD...: run CMD under min(BUDGET, what is left of DEADLINE), output to the
# stage's log and measure.log; record name, exit status and seconds.
stage() {
    local name=$1 budget=$2; shift 2
    if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then
        printf '%s\tnot asked\t0\t-\n' "$name" >> "$STAGES"
        return 0
    fi
    local left=$(( DEADLINE - (SECONDS - T0) - 15 ))  # 15 s kept for the summary and the tarball
    (( budget > left )) && budget=$left
    if (( budget < 10 )); then
        say "== $name: skipped (out of time: ${left}s left)"
        printf '%s\tskipped\t0\t-\n' "$name" >> "$STAGES"
        return 0
    fi
    say "== $name (budget ${budget}s, t=$(( SECONDS - T0 ))s): $*"
    local t=$SECONDS
    timeout -k 10 "$budget" "$@" 2>&1 | tee "$LOGS/$name.log" | tee -a "$MLOG"
    local rc=${PIPESTATUS[0]}
    local took=$(( SECONDS - t ))
    local result=ok
    (( rc == 124 || rc == 137 )) && result=timeout
    (( rc != 0 && rc != 124 && rc != 137 )) && result=failed
    say "== $name: $result (exit $rc, ${took}s)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$result" "$took" "$rc" >> "$STAGES"
    # Each stage's JSON lines go to results.jsonl as they come (cut-short runs keep them).
    grep -h '^{' "$LOGS/$name.log" >> "$JSONL" 2>/dev/null || true
    return 0
}

cd "$WORK"
TS=("$REPO/benchmarks/train_step.py")
stage env 40 "$PY" "$REPO/benchmarks/gpu_env.py" "${ENV_ARGS[@]}"
stage vitl 120 "$PY" "${TS[@]}" "${L[@]}" "${STEPS[@]}" --impl both
stage attn 45 "$PY" "$REPO/benchmarks/bench_attention.py" "${ATTN[@]}" --out "$LOGS/attention_table.json"
stage vitl_all 240 "$PY" "${TS[@]}" "${L[@]}" "${STEPS[@]}" --impl fast "${OPTS[@]}" --profile-steps 2
stage kernels 130 "$PY" -m pytest "$REPO"/tests/test_kernels_{masked_gather,predictor_input,sorted_predictor_input,masked_l1_loss,ema,rope}.py \
    --rootdir "$REPO" -c "$REPO/pyproject.toml" -o addopts= -q -ra -p no:cacheprovider --durations=5 \
    ${KTESTS[@]+"${KTESTS[@]}"}
# The packed and sparse paths against the reference, eager (no compilation: cheap); compiled in loss_all.
stage loss 60 "$PY" "${TS[@]}" "${L[@]}" --check-loss "$CHECK_EAGER" --pack-context --sparse-embed
# A run's first steps: new attention lengths while timed (cuDNN builds an execution graph per new
# length, measured ~150-170 ms each; flash builds nothing), each implementation in its own process
# because the graph cache is process-wide.
stage vitl_cold 120 bash -c "rc=0; \
    '$PY' ${TS[*]} ${L[*]} ${ABL[*]/fast/reference} --shapes cold || rc=1; \
    '$PY' ${TS[*]} ${L[*]} ${ABL[*]} --shapes cold || rc=1; \
    '$PY' ${TS[*]} ${L[*]} ${ABL[*]} --shapes cold --attn flash || rc=1; exit \$rc"
# One option at a time, eager, with a profile (wall vs GPU busy, attention ops' host time) and the
# price of a new attention shape: what each option and each backend costs on its own.
stage ablate 170 bash -c "rc=0; \
    '$PY' ${TS[*]} ${L[*]} ${ABL[*]} --profile-steps 2 --attn-shape-cost || rc=1; \
    '$PY' ${TS[*]} ${L[*]} ${ABL[*]} --attn flash --profile-steps 2 || rc=1; \
    '$PY' ${TS[*]} ${L[*]} ${ABL[*]} --pack-context --profile-steps 2 || rc=1; \
    '$PY' ${TS[*]} ${L[*]} ${ABL[*]} --sparse-embed || rc=1; exit \$rc"
stage loss_all 150 "$PY" "${TS[@]}" "${L[@]}" --check-loss "$CHECK" "${OPTS[@]}"
stage vith 120 "$PY" "${TS[@]}" "${H[@]}" "${STEPS[@]}" --impl both "${OPTS[@]}"
# V-JEPA 2: the official V2 step structure against the fast path, without and with every block
# activation-checkpointed (peak memory of each), then a loss check, then ViT-g.
stage v2l 180 "$PY" "${TS[@]}" "${V2L[@]}" "${STEPS[@]}" --impl both --activation-checkpointing 0,all
stage v2_loss 90 "$PY" "${TS[@]}" "${V2L[@]}" --check-loss "$CHECK_EAGER"
stage v2g 240 "$PY" "${TS[@]}" "${V2G[@]}" "${V2G_STEPS[@]}" --impl both --activation-checkpointing 0,all
if [[ "$SIZE" == tiny && ( -z "${ONLY:-}" || " $ONLY " == *" kbench "* ) ]]; then
    say "== kbench: skipped (needs CUDA)"
    printf 'kbench\tskipped\t0\t-\n' >> "$STAGES"
else
    # The newest benchmark last and on its own, so that it cannot take the others down with it.
    stage kbench 90 bash -c "rc=0; \
        '$PY' '$REPO/benchmarks/kernels/bench_masked_gather.py' --models vit_l || rc=1; \
        '$PY' '$REPO/benchmarks/kernels/bench_predictor_input.py' || rc=1; \
        '$PY' '$REPO/benchmarks/kernels/bench_masked_l1_loss.py' --models vit_l || rc=1; \
        '$PY' '$REPO/benchmarks/kernels/bench_ema.py' --models vit_l --skip-adamw || rc=1; \
        '$PY' '$REPO/benchmarks/kernels/bench_sorted_predictor_input.py' || rc=1; exit \$rc"
fi

"$PY" "$REPO/benchmarks/gpu_summary.py" --stages "$STAGES" --results "$JSONL" --logs "$LOGS" | tee "$SUMMARY" | tee -a "$MLOG"
tar -czf "$OUT/logs.tgz" -C "$WORK" logs 2>/dev/null
say "gpu_measure: done in $(( SECONDS - T0 ))s; files in $OUT"
# Non-zero when any stage failed or ran out of time, so CI's SIZE=tiny run catches a broken stage.
! grep -qP '\t(failed|timeout)\t' "$STAGES"
