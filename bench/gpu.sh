#!/usr/bin/env bash
# Every benchmark on one CUDA GPU, in under 8 minutes, with no network: JSON (and a log) per
# benchmark under the folder given, else $OUT, else bench/gpu-out.
#
#     bench/gpu.sh [FOLDER]
#
# Python: $PYTHON, else python3 (it must hold torch with CUDA and vlmflow's dependencies; the
# code is read from this checkout's src/). Nothing is downloaded: the LLaVA-1.5-7B-shaped runs
# build a random-weight checkpoint locally (bench/core.py --shape llava7b); the runs on the
# default model need it assembled in $VLMFLOW_CACHE (else ~/.cache/vlmflow) and are skipped,
# with a line saying so, where it is not. Each step has its own time limit, so one slow step
# cannot take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/gpu-out}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
log="$out/gpu.log"
: >"$log"

step() {  # step NAME SECONDS ARGS...: one benchmark, its JSON in $out/NAME.json
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%T), limit ${limit}s): $*" | tee -a "$log"
    timeout "$limit" "$py" "$@" --device cuda --json "$out/$name.json" 2>&1 \
        | grep -v -e '^Loading weights' -e '^Writing model' | tee -a "$log"
    echo "== $name exit ${PIPESTATUS[0]}" | tee -a "$log"
}

"$py" -c "import torch; assert torch.cuda.is_available(); print(torch.__version__, \
torch.cuda.get_device_name())" 2>&1 | tee -a "$log" || { echo "no CUDA GPU" | tee -a "$log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$log" 2>&1

# 7B-shaped decoder: 576 image tokens (LLaVA-1.5) and 5 x 576 = 2,880 (LLaVA-NeXT's count)
step core-llava7b 240 bench/core.py --shape llava7b --images 1,5 --new-tokens 16 --repeats 5 \
    --dense --memory-images 1,5 --prefill-chunk 512
if "$py" -c "import vlmflow; vlmflow.load('vlmflow-tiny', device='cpu')" >/dev/null 2>&1; then
    step core-tiny 90 bench/core.py --images 4,12 --new-tokens 16 --repeats 5 --dense \
        --memory-images 4
    step batched 60 bench/batched.py --new-tokens 32 --repeats 3
    step reprompt 40 bench/reprompt.py --new-tokens 1 --repeats 5
else
    echo "== default model vlmflow-tiny not assembled here: core-tiny, batched, reprompt skipped" \
        | tee -a "$log"
fi
echo "== done $(date -u +%T)" | tee -a "$log"
