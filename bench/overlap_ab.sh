#!/usr/bin/env bash
# #21's A/B of one device call: the 1000-request offline run with this checkout (sync, async, async
# through the engine-core process) and with an older octavo tree (async), each under its own limit.
#   bash bench/overlap_ab.sh OLD_TREE   # OLD_TREE: a folder holding an `octavo` package (git archive)
set -uo pipefail
cd "$(dirname "$0")/.."
OLD="${1:?usage: $0 OLD_TREE}"
OUT="${OUT:-bench/results/suite}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
run() {  # TAG TREE FLAGS...
  local tag=$1 tree=$2; shift 2
  echo "=== $tag ($(date +%T)): $*"
  PYTHONPATH="$tree:/tmp/site" timeout -k 15 --signal=INT 140 python3 -m octavo.bench throughput \
    --config llama-3.1-8b --dtype bfloat16 --num-prompts 1000 --tag "$tag" --out "$OUT" "$@" 2>&1 \
    | grep -v "it/s\]" | tail -12
}
run new-sync "$PWD" --no-async-scheduling
run new-async "$PWD" --async-scheduling
run old-async "$OLD" --async-scheduling
run new-core-async "$PWD" --async-scheduling --enable-multiprocessing
