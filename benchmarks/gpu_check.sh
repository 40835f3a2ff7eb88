#!/usr/bin/env bash
# The GPU path in one command: the CUDA tests, the official commands and a paper-scale slice on one GPU.
#
# The CUDA tests, the official README's FedAvg and Overlap-FedAvg commands with their five ranks sharing
# GPU 0, and a paper-scale slice (CIFAR-10/VGG and ResNet on full data, FedAvg and Overlap-FedAvg with the
# defaults, 5 local epochs a round, on the calibrated link). Everything lands under one folder: the test
# output, each run's directory (metrics.csv, summary.json, train.log), the slice's RESULTS.md and plots, and
# report.md, which sums them up.
#
#   bash benchmarks/gpu_check.sh [OUT]          # OUT defaults to runs/gpu-check
#
# Environment: DATA_DIR (data root, default ./data); SOURCE (a folder laid out as prepare_data.py --source
# expects, to import MNIST and CIFAR-10 from when DATA_DIR lacks them: the machine may be offline);
# SEED_ROUNDS (rounds of the official commands, default 3 of their 10); PAPER_ROUNDS (rounds of the slice,
# default 2); PYTHON (default python). Each part has a time limit, so the whole stays near 8 minutes; a part
# that runs out says so in report.md and the next one starts. GPU_CHECK_DRY_RUN=1 runs the whole script on
# the CPU at smoke sizes (tests/test_devices.py does, so that a GPU's minutes are not spent on a script error).
#
# Time: about 8 minutes on one H200 (each part has a time limit; so far run end to end only as a CPU dry run).
# Figures: OUT/report.md; none recorded in a doc yet (docs/gpu.md describes the check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-check}
DATA_DIR=${DATA_DIR:-./data}
PYTHON=${PYTHON:-python}
SEED_ROUNDS=${SEED_ROUNDS:-3}
PAPER_ROUNDS=${PAPER_ROUNDS:-2}

DRY=${GPU_CHECK_DRY_RUN:-}
SCALE=paper; SMALL=()
if [ -n "$DRY" ]; then SCALE=smoke; SMALL=(--max_train_samples 2000 --test_samples 500); fi
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "gpu_check.sh: $PYTHON cannot import torch; set PYTHON to the project's environment's python" >&2
    exit 2
fi
if [ -z "$DRY" ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh needs a CUDA device (torch.cuda.is_available() is False on this machine)" >&2
    exit 2
fi
mkdir -p "$OUT"
REPORT="$OUT/report.md"
started=$(date +%s)
{
    echo "# GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: n/a"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'devices', torch.cuda.device_count())"
    echo '```'
} > "$REPORT"

section() { echo -e "\n## $1\n" >> "$REPORT"; }
limited() {   # limited SECONDS COMMAND...: run it; say in the report when it failed or ran out of time
    local seconds=$1; shift
    timeout --signal=TERM --kill-after=20 "$seconds" "$@"
    local status=$?
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then
        echo "**stopped after its ${seconds} s limit**" >> "$REPORT"
    elif [ $status -ne 0 ]; then
        echo "**failed with exit status $status**" >> "$REPORT"
    fi
    return 0
}
summary_line() {   # summary_line RUN_DIR: the run's figures from summary.json
    "$PYTHON" - "$1" >> "$REPORT" <<'EOF'
import json, sys
from pathlib import Path
path = Path(sys.argv[1]) / "summary.json"
if not path.is_file():
    print(f"- {sys.argv[1]}: no summary.json (the run did not finish)")
else:
    s = json.loads(path.read_text())
    print(f"- {s['script']}: {s['rounds']} rounds, final {s['metric']} {s['final']}, mean round "
          f"{s['mean_round_s']:.2f} s, start-up {s['startup_s']:.1f} s ({sys.argv[1]})")
EOF
}

# Data: MNIST for the tests and the official commands, CIFAR-10 for the slice.
for dataset in mnist cifar10; do
    if ! "$PYTHON" -c "import sys; from Utils.data.prepare import is_prepared; sys.exit(0 if is_prepared('$dataset', '$DATA_DIR') else 1)"; then
        "$PYTHON" prepare_data.py --dataset "$dataset" --data_dir "$DATA_DIR" ${SOURCE:+--source "$SOURCE"} \
            || { echo "gpu_check.sh: $dataset is not in $DATA_DIR and could not be prepared; set SOURCE" >&2; exit 2; }
    fi
done

section "CUDA tests (pytest -m cuda)"
OVERLAP_FEDAVG_SOURCE_DATA="${SOURCE:-../shared/data}" limited 120 "$PYTHON" -m pytest -q -rs -m cuda tests/ 2>&1 | tee "$OUT/cuda-tests.txt" | tail -5 \
    | sed 's/^/    /' >> "$REPORT"

section "The official commands, five ranks sharing GPU 0 ($SEED_ROUNDS of their 10 rounds x 5 epochs)"
for script in FedAvg AsyncFedAvg; do
    limited 150 "$PYTHON" "$script.py" --gpus 0,0,0,0,0 --data_dir "$DATA_DIR" --max_epoch "$SEED_ROUNDS" \
        "${SMALL[@]}" --master_port 0 --out_dir "$OUT/seed-$script" > "$OUT/seed-$script.out" 2>&1
    summary_line "$OUT/seed-$script"
done

section "Paper-scale slice: CIFAR-10/VGG and ResNet, full data, $PAPER_ROUNDS rounds x 5 epochs, calibrated link"
limited 300 "$PYTHON" benchmarks/reproduce.py --scale "$SCALE" --rows cifar10-vgg cifar10-resnet --links calibrated \
    --methods fedavg overlap --rounds "$PAPER_ROUNDS" --gpus 0 --data_dir "$DATA_DIR" --work_dir "$OUT/paper" \
    --report "$OUT/paper/RESULTS.md" > "$OUT/paper.out" 2>&1
for run in "$OUT"/paper/cifar10-*/calibrated/*; do
    [ -d "$run" ] && summary_line "$run"
done
[ -f "$OUT/paper/RESULTS.md" ] && echo -e "\nThe slice's report: paper/RESULTS.md" >> "$REPORT"

echo -e "\nTook $(( $(date +%s) - started )) s." >> "$REPORT"
cat "$REPORT"
