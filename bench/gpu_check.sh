#!/usr/bin/env bash
# `make gpu-check`: prove the GPU path in one command, on a fresh copy of the repository (docs/PERFORMANCE.md §6).
#
# Parts, in order, each under `timeout` with its own cap, all inside one time budget (GPU_CHECK_BUDGET seconds):
#   setup        carried wheels (.whl/, from `make gpu-wheels`) + the project (pip --no-deps), versions, a CUDA device
#   data         build the bundled Wikipedia sample (examples/wiki) into 512-slot rows
#   correctness  bench/gpu_correctness.py: packed == unpacked attention, Triton kernels == references (bf16, fp32),
#                20 steps triton vs reference, checkpoint + resume
#   kernels      bench/fused_kernels.py at BERT-large shapes: GB/s, TFLOP/s against the HBM and bf16 peaks
#   train_step   bench/train_step.py: base and large at 512, bf16, ours/triton, ours/reference, HF; profile of large
#   e2e          bench/gpu_e2e.py: torchrun ... spanbert-train --model base for ~2 minutes, stopped by SIGTERM
# After every part the report is rewritten: $GPU_CHECK_OUT/gpu_report.md, gpu_report.json, the bench JSONs and
# gpu_check_logs.tar.gz (every log). Exit status: 0 all passed, 1 a correctness part (setup, data, correctness,
# e2e) failed or did not run, 3 only a performance part (kernels, train_step) failed; 2 no CUDA device.
#
# Environment: GPU_CHECK_OUT (default bench/results/gpu, dry bench/results/gpu-dry), GPU_CHECK_DRY=1 (CPU dry run:
# tiny shapes, reference paths, Triton in its interpreter), GPU_CHECK_BUDGET (s, default 470, dry 300),
# GPU_CHECK_PARTS (a subset, e.g. "setup data e2e"), GPU_CHECK_PYTHON (default python3; dry: .venv/bin/python),
# GPU_CHECK_WORK (scratch folder, default a new one under $TMPDIR), GPU_CHECK_E2E_SECONDS (training time of e2e
# after its first logged step, default 120, dry 10).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then
    OUT_DIR=${GPU_CHECK_OUT:-bench/results/gpu-dry}; BUDGET=${GPU_CHECK_BUDGET:-300}
    E2E_SECONDS=${GPU_CHECK_E2E_SECONDS:-10}
else
    OUT_DIR=${GPU_CHECK_OUT:-bench/results/gpu}; BUDGET=${GPU_CHECK_BUDGET:-470}
    E2E_SECONDS=${GPU_CHECK_E2E_SECONDS:-120}
fi
PARTS=" ${GPU_CHECK_PARTS:-setup data correctness kernels train_step e2e} "
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/spanbert-gpu-check.XXXXXX")}
mkdir -p "$OUT_DIR" "$WORK/logs" "$WORK/bench" "$WORK/bin"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(cd "$WORK" && pwd)
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON
elif [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3 || echo python3); fi
# the project's console scripts: pip's (next to python) first, else these shims
for tool in spanbert-data:spanbert_data.cli spanbert-train:spanbert_train.cli; do
    printf '#!/bin/sh\nexec "%s" -c "import sys; sys.argv[0] = \\"%s\\"; from %s import main; main()" "$@"\n' \
        "$PY" "${tool%%:*}" "${tool#*:}" > "$WORK/bin/${tool%%:*}"
    chmod +x "$WORK/bin/${tool%%:*}"
done
export PATH="$(dirname "$PY"):$PATH:$WORK/bin"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
[ -d .whl ] && export PYTHONPATH="$WORK/site:$PYTHONPATH"
export PYTHONUNBUFFERED=1 GPU_CHECK_DRY=$DRY
[ "$DRY" = 1 ] || export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}  # triton >= 3.9 warns otherwise
DEADLINE=$((SECONDS + BUDGET))
FAILED_BEFORE=""
echo "gpu-check: work $WORK, report $OUT_DIR, budget ${BUDGET}s, python $PY, parts:$PARTS"

report() { "$PY" -m bench.gpu_report report --work "$WORK" --out "$OUT_DIR" > "$WORK/logs/report.log" 2>&1; }

record() {  # part rc seconds cap timed_out skipped
    printf '{"part": "%s", "rc": %s, "seconds": %s, "cap": %s, "timed_out": %s, "skipped": %s}\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" >> "$WORK/parts.jsonl"
}

# run_part NAME CAP NEEDS COMMAND...: run under `timeout`, log to $WORK/logs/NAME.log, record, rewrite the report
run_part() {
    local name=$1 cap=$2 needs=$3
    shift 3
    if [[ "$PARTS" != *" $name "* ]]; then record "$name" null null null false '"not selected"'; return; fi
    for dep in $needs; do
        if [[ " $FAILED_BEFORE " == *" $dep "* ]]; then
            echo "== $name: skipped (part $dep failed)"
            record "$name" null null null false "\"part $dep failed\""; report; return
        fi
    done
    local left=$((DEADLINE - SECONDS - 5))
    [ "$cap" -gt "$left" ] && cap=$left
    if [ "$cap" -lt 10 ]; then
        echo "== $name: skipped (time budget spent)"
        record "$name" null null null false '"time budget spent"'; report; FAILED_BEFORE+=" $name"; return
    fi
    echo "== $name (cap ${cap}s): $*"
    local t0=$SECONDS rc
    timeout -k 10 "$cap" "$@" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    local timed_out=false
    { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && timed_out=true
    record "$name" "$rc" $((SECONDS - t0)) "$cap" "$timed_out" null
    if [ $rc -ne 0 ]; then
        FAILED_BEFORE+=" $name"
        echo "== $name: FAILED (exit $rc$([ "$timed_out" = true ] && echo ', timed out')) after $((SECONDS - t0))s;" \
             "last lines of $WORK/logs/$name.log:"
        tail -n 25 "$WORK/logs/$name.log" | cut -c1-300
    else
        echo "== $name: ok in $((SECONDS - t0))s"
        grep -E '^(PASS|FAIL) ' "$WORK/logs/$name.log" | cut -c1-200
    fi
    report
}

setup() {
    if [ "$DRY" != 1 ]; then
        "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" || return 2
        if ls .whl/*.whl > /dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
                .whl/*.whl || return 1
        fi
        if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . ; then
            export GPU_CHECK_INSTALL="pip install --no-deps -e ."
        else
            export GPU_CHECK_INSTALL="PYTHONPATH + shims (pip install -e failed)"
        fi
    else
        export GPU_CHECK_INSTALL="dry run: $PY as is"
    fi
    "$PY" -m bench.gpu_report versions --out "$WORK/versions.json" || return 1  # imports the project too
    command -v spanbert-train && command -v spanbert-data || return 1
    [ "$DRY" = 1 ] || nvidia-smi || true
}

data() {
    if [ "$DRY" = 1 ]; then
        head -n 8 examples/wiki/enwiki-sample.jsonl > "$WORK/corpus.jsonl"
        spanbert-data build --corpus "$WORK/corpus.jsonl" --out "$WORK/data" --vocab-size 1000 --max-seq-len 64
    else
        spanbert-data build --corpus examples/wiki/enwiki-sample.jsonl --out "$WORK/data" --workers 8
    fi
}

correctness() {
    if [ "$DRY" = 1 ]; then
        TRITON_INTERPRET=1 "$PY" -m bench.gpu_correctness --dry --data "$WORK/data" --out "$WORK/correctness.json"
    else
        "$PY" -m bench.gpu_correctness --data "$WORK/data" --out "$WORK/correctness.json"
    fi
}

kernels() {
    if [ "$DRY" = 1 ]; then
        "$PY" -m bench.fused_kernels --quick --no-compile --repeats 2 --out-dir "$WORK/bench"
    else
        "$PY" -m bench.fused_kernels --out-dir "$WORK/bench"
    fi
}

train_step() {
    if [ "$DRY" = 1 ]; then
        "$PY" -m bench.train_step --quick --data "$WORK/data" --out-dir "$WORK/bench" --profile tiny:ours/reference \
            --profile-steps 1
    else
        "$PY" -m bench.train_step --data "$WORK/data" --out-dir "$WORK/bench" --profile large:ours/triton
    fi
}

e2e() {
    local seconds=$1
    if [ "$DRY" = 1 ]; then
        "$PY" -m bench.gpu_e2e --data "$WORK/data" --run "$WORK/e2e" --out "$WORK/e2e.json" --seconds "$seconds" \
            --model tiny --global-batch-size 4 --micro-batch 2 --lr 3e-3 --warmup-steps 2 --log-every 1 --min-drop 0.05
    else
        "$PY" -m bench.gpu_e2e --data "$WORK/data" --run "$WORK/e2e" --out "$WORK/e2e.json" --seconds "$seconds"
    fi
}
export -f setup data correctness kernels train_step e2e
export DRY PY WORK

if [ "$DRY" = 1 ]; then CAPS=(60 60 150 60 120); else CAPS=(60 60 120 90 150); fi
run_part setup "${CAPS[0]}" "" bash -c setup
if [[ " $FAILED_BEFORE " == *" setup "* ]] && grep -q '"part": "setup", "rc": 2,' "$WORK/parts.jsonl"; then
    echo "gpu-check: $PY has no torch with a CUDA device; GPU_CHECK_DRY=1 make gpu-check runs the CPU dry run"
    exit 2
fi
run_part data "${CAPS[1]}" "setup" bash -c data
run_part correctness "${CAPS[2]}" "setup data" bash -c correctness
run_part kernels "${CAPS[3]}" "setup" bash -c kernels
run_part train_step "${CAPS[4]}" "setup data" bash -c train_step
# e2e gets what is left of the budget: up to E2E_SECONDS of training, plus up to 60 s to start (gpu_e2e.py --startup),
# 30 s to save after SIGTERM (--grace) and 15 s for the rest
left=$((DEADLINE - SECONDS - 5))
seconds=$((E2E_SECONDS < left - 105 ? E2E_SECONDS : left - 105))
min_seconds=$([ "$DRY" = 1 ] && echo 5 || echo 45)
if [ "$seconds" -lt "$min_seconds" ]; then seconds=0; fi
run_part e2e $((seconds > 0 ? seconds + 105 : 0)) "setup data" bash -c "e2e $seconds"
report
rc=$?
cat "$OUT_DIR/gpu_report.md"
echo
echo "gpu-check: exit $rc; report in $OUT_DIR (gpu_report.md, gpu_report.json, gpu_check_logs.tar.gz); work $WORK"
exit $rc
