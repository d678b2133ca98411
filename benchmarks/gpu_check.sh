#!/usr/bin/env bash
# The GPU check: everything this repository measures on one accelerator, written into one folder, in under
# 9 minutes on one H200, without network access (it installs and downloads nothing).
#
#     bash benchmarks/gpu_check.sh OUT [--smoke]
#
# Stages, each with its own time budget (a `timeout` on its command) and its own log in OUT/logs/:
#   environment    device, driver (nvidia-smi), JAX, jaxlib, Python and package versions  -> OUT/environment.txt
#   speed          every task's paper configuration (one device, the paper's per-device batch): Hrrformer
#                  float32 and bfloat16 against softmax attention (XLA float32 and bfloat16, cuDNN bfloat16),
#                  the most important tasks first, until its deadline                      -> OUT/speed_memory/
#   sweep          the EMBER model at batch 1, T = 2^13, 2^15, 2^17, 2^19, while each variant fits -> OUT/ember_sweep/
#   listops_data   ListOps generated on the spot (96,000 / 2,000 / 2,000), in the background from the start
#                                                                                           -> OUT/data/listops-1000/
#   listops_train  the paper's single-layer ListOps configuration, whole epochs within its budget -> OUT/listops_1/
#   results        the test accuracy at the best validation epoch, and what the tables hold -> OUT/listops_summary.txt
# A failing stage does not stop the next ones; OUT/summary.txt ends it all: each stage's outcome and time,
# then the results. The budgets add up to at most 9 minutes (the data stage runs beside the speed stages
# and ends before training starts). --smoke: every stage at toy sizes on the CPU, in under 2 minutes.
# Environment: PYTHON (default python3) runs the Python stages; GPU_CHECK_SCALE multiplies every budget
# (e.g. 2 on a slower GPU, then it takes up to 18 minutes).
set -u

usage="usage: bash benchmarks/gpu_check.sh OUT [--smoke]"
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment above, without its '#'
    sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi
[ $# -ge 1 ] && [ $# -le 2 ] && [ "${1#-}" = "$1" ] || { echo "$usage" >&2; exit 2; }
[ $# -eq 1 ] || [ "$2" = "--smoke" ] || { echo "$usage" >&2; exit 2; }
SMOKE=$([ "${2:-}" = "--smoke" ] && echo 1 || echo 0)
mkdir -p "$1/logs" || { echo "gpu_check: cannot create $1" >&2; exit 2; }
OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PYTHON=${PYTHON:-python3}
SCALE=${GPU_CHECK_SCALE:-1}
: > "$OUT/stages.tsv"

# seconds: the budget of each stage (a timeout), and the deadlines inside them; scaled by GPU_CHECK_SCALE
if [ "$SMOKE" = 1 ]; then
    export JAX_PLATFORMS=cpu
    BUDGET_ENVIRONMENT=30 BUDGET_SPEED=60 DEADLINE_SPEED=5 BUDGET_SWEEP=70 DEADLINE_SWEEP=40
    BUDGET_DATA=60 BUDGET_TRAIN=60 TRAIN_MINUTES=0.3 BUDGET_RESULTS=20 LISTOPS_T=256
    SPEED_ARGS=(--small --tasks=listops --variants=hrr-float32,softmax-cudnn-bfloat16 --sweep=none --repeats=1
                --matmul_size=256)
    SWEEP_ARGS=(--small --tasks=none --sweep=9-10 --variants=hrr-float32 --repeats=1 --matmul_size=256)
    DATA_ARGS="--train 160 --valid 40 --test 40 --workers 1"
    TRAIN_ARGS=(--embed_size=16 --heads=2 --max_seq_len=256 --batch_size=8 --epochs=3)
else
    # in sequence 20 + 125 + 75 + 280 + 15 = 515 s, and at most 5 s more per stage to stop it: 540 s at most;
    # the data stage (150 s) runs beside the environment, speed and sweep stages (220 s)
    BUDGET_ENVIRONMENT=20 BUDGET_SPEED=125 DEADLINE_SPEED=60 BUDGET_SWEEP=75 DEADLINE_SWEEP=35
    BUDGET_DATA=150 BUDGET_TRAIN=280 TRAIN_MINUTES=4.0 BUDGET_RESULTS=15 LISTOPS_T=2000
    SPEED_ARGS=(--tasks=listops,ember,text,pathx,image,pathfinder,retrieval --sweep=none --repeats=5)
    SWEEP_ARGS=(--tasks=none --sweep=13-19:2 --repeats=3
                --variants=hrr-float32,hrr-bfloat16,softmax-xla-float32,softmax-cudnn-bfloat16)
    DATA_ARGS="--train 96000 --valid 2000 --test 2000 --workers 4"
    TRAIN_ARGS=(--epochs=20)  # the paper's; --max_minutes stops after the last whole epoch that fits
fi
scaled() { awk -v s="$1" -v k="$SCALE" 'BEGIN { v = s * k; printf "%d", (v < 1 ? 1 : v) }'; }

# run_stage NAME BUDGET COMMAND...: the command under `timeout` (SIGINT first, so that Python can stop
# cleanly, then SIGKILL 5 s later), its output in OUT/logs/NAME.log, its outcome in OUT/stages.tsv
run_stage() {
    local name=$1 budget seconds start status outcome
    budget=$(scaled "$2")
    shift 2
    start=$(date +%s)
    echo "[$(date +%H:%M:%S)] $name: $* (budget ${budget} s)"
    timeout --signal=INT --kill-after=5 "$budget" "$@" > "$OUT/logs/$name.log" 2>&1
    status=$?
    seconds=$(( $(date +%s) - start ))
    if [ $status -eq 0 ]; then outcome=ok
    elif [ $status -eq 124 ] || [ $status -eq 137 ]; then outcome="timed out after ${budget} s"
    else outcome="failed (exit $status; see logs/$name.log)"
    fi
    printf '%s\t%s\t%s\n' "$name" "$outcome" "$seconds" >> "$OUT/stages.tsv"
    echo "[$(date +%H:%M:%S)] $name: $outcome, ${seconds} s"
}

environment() {
    date -u
    uname -a
    if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    "$PYTHON" - <<'PY'
import importlib, sys
print('python', sys.version.replace('\n', ' '))
for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'numpy', 'matplotlib'):
    try:
        print(name, getattr(importlib.import_module(name), '__version__', '?'))
    except ImportError as error:
        print(name, 'MISSING', error)
import jax
jax.print_environment_info()
device = jax.local_devices()[0]
print('devices:', jax.local_devices())
print('device kind:', device.device_kind, '| platform:', device.platform, '| memory:',
      (device.memory_stats() or {}).get('bytes_limit', 'n/a') if device.platform != 'cpu' else 'host')
PY
}

# the ListOps files, then their tokens cached as .npy (on the CPU), so that training starts at once
listops_data() {
    # shellcheck disable=SC2086  # DATA_ARGS is a list of words
    "$PYTHON" listops/generate.py --output_dir "$OUT/data/listops-1000" $DATA_ARGS --seed 0 &&
    JAX_PLATFORMS=cpu "$PYTHON" - "$OUT/data/listops-1000" "$LISTOPS_T" <<'PY'
import dataclasses, sys
from listops.dataset import load_dataset
from listops.hrrformer_mgpu import config
load_dataset(dataclasses.replace(config, data_dir=sys.argv[1], max_seq_len=int(sys.argv[2])))
PY
}

echo "gpu_check: writing into $OUT$([ "$SMOKE" = 1 ] && echo ' (smoke: toy sizes on the CPU)')"
export -f environment listops_data
export PYTHON OUT LISTOPS_T DATA_ARGS
# ListOps data: numpy on the CPU only, so it is made beside the accelerator stages; it ends (or is stopped)
# within its budget, which is shorter than theirs together
run_stage listops_data "$BUDGET_DATA" bash -c listops_data &
DATA_PID=$!
run_stage environment "$BUDGET_ENVIRONMENT" bash -c environment
cp "$OUT/logs/environment.log" "$OUT/environment.txt"
run_stage speed "$BUDGET_SPEED" "$PYTHON" benchmarks/speed_memory.py "${SPEED_ARGS[@]}" \
    --deadline_seconds="$(scaled "$DEADLINE_SPEED")" --output_dir="$OUT/speed_memory"
run_stage sweep "$BUDGET_SWEEP" "$PYTHON" benchmarks/speed_memory.py "${SWEEP_ARGS[@]}" \
    --deadline_seconds="$(scaled "$DEADLINE_SWEEP")" --output_dir="$OUT/ember_sweep"
wait "$DATA_PID"
run_stage listops_train "$BUDGET_TRAIN" "$PYTHON" listops/hrrformer_mgpu.py --n_layer=1 "${TRAIN_ARGS[@]}" \
    --data_dir="$OUT/data/listops-1000" --workdir="$OUT/listops_1" --max_minutes="$TRAIN_MINUTES"
run_stage results "$BUDGET_RESULTS" "$PYTHON" - "$OUT" "$SMOKE" <<'PY'
"""What the stages produced, in a few lines: OUT/listops_summary.txt and OUT/results.txt."""
import csv, sys
from pathlib import Path

out, smoke = Path(sys.argv[1]), sys.argv[2] == '1'

lines = []
history = out / 'listops_1' / 'history.csv'
rows = list(csv.DictReader(open(history))) if history.exists() else []
if rows:
    best = max(rows, key=lambda r: float(r['valid_acc']))  # the first epoch of the best validation accuracy
    what = 'at toy sizes (--smoke)' if smoke else 'in the paper\'s configuration'
    listops = [f'ListOps, 1 layer {what}: {len(rows)} whole epoch(s) in the time budget',
               f'test accuracy at the best validation epoch ({best["epoch"]}): {float(best["test_acc"]):.2f}% '
               f'(validation {float(best["valid_acc"]):.2f}%); the paper: 38.79% after 20 epochs',
               'epoch  train_loss  train_acc  valid_acc  test_acc  seconds  examples/s']
    listops += [f'{r["epoch"]:>5}  {float(r["train_loss"]):10.4f}  {float(r["train_acc"]):9.2f}  '
                f'{float(r["valid_acc"]):9.2f}  {float(r["test_acc"]):8.2f}  {float(r["seconds"]):7.0f}  '
                f'{float(r["examples_per_second"]):10.1f}' for r in rows]
    (out / 'listops_summary.txt').write_text('\n'.join(listops) + '\n')
    lines += listops[:2]
else:
    lines.append('ListOps: no whole epoch finished (no history.csv)')
for name in ('speed_memory', 'ember_sweep'):
    table = out / name / 'speed_memory.csv'
    found = list(csv.DictReader(open(table))) if table.exists() else []
    ran = [r for r in found if r['status'] == 'ran']
    lines.append(f'{name}: {len(ran)} of {len(found)} steps measured'
                 + (f' (tables in {name}/speed_memory.md)' if found else ' (no table)'))
    if name == 'ember_sweep':
        longest = {}
        for r in ran:
            longest[r['variant']] = max(longest.get(r['variant'], 0), int(r['length']))
        lines += [f'  longest T run by {variant}: {length}' for variant, length in longest.items()]
(out / 'results.txt').write_text('\n'.join(lines) + '\n')
PY

{
    echo "gpu_check in $OUT$([ "$SMOKE" = 1 ] && echo ' (smoke)'), finished $(date -u)"
    echo
    printf '%-14s %-9s %s\n' stage seconds outcome
    while IFS=$'\t' read -r name outcome seconds; do printf '%-14s %-9s %s\n' "$name" "$seconds" "$outcome"; done \
        < "$OUT/stages.tsv"
    echo
    [ -f "$OUT/results.txt" ] && cat "$OUT/results.txt"
} > "$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
failed=$(grep -vc $'\tok\t' "$OUT/stages.tsv")
[ "$failed" -eq 0 ] && exit 0 || exit 1
