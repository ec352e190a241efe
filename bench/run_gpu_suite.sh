#!/usr/bin/env bash
# The GPU benchmark suite, sized for one device-tool call (10-minute limit per command).
#
#   bash bench/run_gpu_suite.sh offline   # roofline + latency (bs 1/8/32/128) + offline throughput,
#                                         # each beside HF transformers; about 6-8 minutes on an H100
#   bash bench/run_gpu_suite.sh serve     # serving sweep, concurrency 1..64, launching `octavo serve`
#                                         # (needs fastapi, uvicorn and pydantic: carry them as wheels)
#
# Model: llama-3.1-8b config (bench/configs), dummy weights, bf16. Results (JSON, Markdown, PNG and a
# log) go to $OUT (the device tool's output folder) or bench/results/suite. Each step runs under a
# timeout and saves <stem>.partial.json as it goes, so a step cut short still leaves what it measured.
# The device machine has no network: octavo runs from this checkout through PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."

PHASE="${1:-offline}"
OUT="${OUT:-bench/results/suite}"
PY="${PYTHON:-python3}"
MODEL=(--config llama-3.1-8b --dtype bfloat16)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$OUT/suite-$PHASE.log") 2>&1

# Wheels carried in .whl (the device tool's `carry`) for packages the device image lacks.
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" || { echo "wheel install failed"; exit 3; }
fi

start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start ))s] $*"; }
run_step() {  # run_step SECONDS NAME ARGS...: one bench command under a hard time limit
  local limit=$1 name=$2; shift 2
  stamp "$name (limit ${limit}s): octavo bench $*"
  timeout -k 15 --signal=INT "$limit" "$PY" -m octavo.bench "$@" --out "$OUT"
  local rc=$?
  stamp "$name finished with exit code $rc"
  return $rc
}

stamp "suite '$PHASE' on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv || true
"$PY" - <<'PY'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
for name in ("triton", "transformers", "tqdm", "matplotlib", "httpx", "fastapi", "uvicorn", "pydantic"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "MISSING")
PY

status=0
case "$PHASE" in
  offline)
    run_step 230 latency latency "${MODEL[@]}" --batch-size 1,8,32,128 --input-len 128 --output-len 128 \
      --num-iters 3 --num-iters-warmup 1 --baseline hf --hf-num-iters 1 --roofline || status=1
    run_step 270 throughput throughput "${MODEL[@]}" --num-prompts 1000 --input-len-range 256:768 \
      --output-len-range 128:384 --seed 0 --baseline hf --hf-batch-size 128 --hf-num-prompts 128 --roofline || status=1
    ;;
  serve)
    if ! "$PY" -c "import fastapi, uvicorn, pydantic" 2>/dev/null; then
      echo "serve needs fastapi, uvicorn and pydantic: download their wheels into .whl (see bench/README.md)"
      echo "and name .whl in the device tool's carry"
      exit 3
    fi
    run_step 540 serve serve "${MODEL[@]}" --launch --launch-timeout 240 --concurrency 1,2,4,8,16,32,64 \
      --input-len 128 --output-len 128 --latency-anchor --baseline hf --roofline || status=1
    ;;
  *)
    echo "usage: $0 [offline|serve]"; exit 2 ;;
esac
stamp "done (status $status); files in $OUT:"
ls -la "$OUT"
for md in "$OUT"/*.md; do [ -f "$md" ] && { echo; cat "$md"; }; done
exit $status
