#!/usr/bin/env bash
# One device call: one-request prefill graphs (cuda_graphs.PREFILL_GRAPH_LENS). First the CUDA tests
# of the graph layouts (a lone prefill through a graph gives an eager engine's tokens), then the
# latency benchmark (batch 1 and 8, 128 in / 128 out: prefill ms is time to every first token) with
# this checkout and with an older octavo tree that has no prefill graphs.
#   bash bench/prefill_graphs_ab.sh OLD_TREE   # OLD_TREE: a folder holding an `octavo` package (git archive)
set -uo pipefail
cd "$(dirname "$0")/.."
OLD="${1:?usage: $0 OLD_TREE}"
OUT="${OUT:-bench/results/suite}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
echo "=== CUDA tests ($(date +%T))"
PYTHONPATH="$PWD:/tmp/site" timeout -k 15 200 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_cuda.py \
  tests/runtime/test_graph_layout.py --junitxml "$OUT/pytest-prefill-graphs.xml" 2>&1 | tail -4
for round in 1 2; do
  for arm in old new; do
    tree=$PWD; [ $arm = old ] && tree=$OLD
    echo "=== $arm, round $round ($(date +%T))"
    PYTHONPATH="$tree:/tmp/site" timeout -k 15 --signal=INT 110 python3 -m octavo.bench latency \
      --config llama-3.1-8b --dtype bfloat16 --batch-size 1,8 --num-iters 5 --tag "prefill-graphs-$arm-$round" \
      --out "$OUT" 2>&1 | grep -E "^\| (1|8) |captured"
  done
done
