#!/usr/bin/env bash
# One device call: the CUDA graphs added in 0cbac71 and fa6f77e, against an older octavo tree.
# First the CUDA tests of the graph layouts (a lone prefill through a graph gives an eager engine's
# tokens), then with each tree: the latency benchmark at batch 1 and 8 (128 in / 128 out; prefill
# ms is time to every first token: one-request prefill graphs) and the 1000-request offline run
# (the LLM class's 1024 sequences: decode graphs past batch 256).
#   bash bench/graphs_ab.sh OLD_TREE   # OLD_TREE: a folder holding an `octavo` package (git archive)
set -uo pipefail
cd "$(dirname "$0")/.."
OLD="${1:?usage: $0 OLD_TREE}"
OUT="${OUT:-bench/results/suite}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
echo "=== CUDA tests ($(date +%T))"
PYTHONPATH="$PWD:/tmp/site" timeout -k 15 150 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_cuda.py \
  tests/runtime/test_graph_layout.py tests/spec/test_spec_lifecycle.py 2>&1 | tail -4
L=(--config llama-3.1-8b --dtype bfloat16 --out "$OUT")
for arm in old new; do
  tree=$PWD; [ $arm = old ] && tree=$OLD
  echo "=== $arm latency ($(date +%T))"
  PYTHONPATH="$tree:/tmp/site" timeout -k 15 --signal=INT 100 python3 -m octavo.bench latency "${L[@]}" \
    --batch-size 1,8 --num-iters 5 --tag "graphs-$arm" 2>&1 | grep -E "^\| (1|8) |captured"
  echo "=== $arm throughput ($(date +%T))"
  PYTHONPATH="$tree:/tmp/site" timeout -k 15 --signal=INT 120 python3 -m octavo.bench throughput "${L[@]}" \
    --num-prompts 1000 --tag "graphs-$arm" 2>&1 | grep -E "^\| octavo|captured"
done
