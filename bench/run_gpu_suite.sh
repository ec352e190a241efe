#!/usr/bin/env bash
# The device suites, one device-tool call (10-minute limit) a phase; bench/README.md ("On the GPU")
# says what each measures. Results (JSON, Markdown, PNG, server logs, suite-PHASE.log) go to $OUT.
#
#   bash bench/run_gpu_suite.sh PHASE [octavo bench flags]    # the flags go to the phase's commands
#   OLD_TREE=DIR bash bench/run_gpu_suite.sh graphs|step   # DIR: a folder holding an older `octavo` package
#
# The device has no network: octavo runs from this checkout through PYTHONPATH, and the wheels in
# .whl (fastapi, uvicorn, pydantic for the phases that serve) are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."

PHASE="${1:-offline}"
shift || true
OUT="${OUT:-bench/results/suite}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # no NVLink multicast
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$OUT/suite-$PHASE.log") 2>&1

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" || { echo "wheel install failed"; exit 3; }
fi

start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start ))s] $*"; }
status=0
run() {  # run SECONDS CMD...: one command under a hard limit (SIGINT first: results so far are written)
  local limit=$1; shift
  stamp "(limit ${limit}s) $*"
  timeout -k 15 --signal=INT "$limit" "$@"
  local rc=$?
  stamp "exit code $rc"
  (( rc == 0 )) || status=1
}
# -P: octavo is imported from PYTHONPATH (an OLD_TREE put first wins), never from the working directory.
bench() { local limit=$1; shift; run "$limit" "$PY" -P -m octavo.bench "$@" --out "$OUT"; }
needs() {
  "$PY" -c "import $1" 2>/dev/null && return 0
  echo "phase '$PHASE' needs $2: carry their wheels in .whl (bench/README.md)"
  exit 3
}

# The copy on the device may carry another checkout's git metadata: pass OCTAVO_GIT_COMMIT=$(git rev-parse HEAD).
stamp "suite '$PHASE' on $(hostname), commit ${OCTAVO_GIT_COMMIT:-unknown (set OCTAVO_GIT_COMMIT)}"
nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv || true
case "$PHASE" in
  serve|spec|controlled|profile-serve|structured|front-ab|seed-tp4-serve) needs "fastapi, uvicorn, pydantic" "fastapi, uvicorn and pydantic" ;;
  graphs|tests|tp|fusion-tests|fusion-quick) needs pytest pytest ;;
esac
LLAMA=(--config llama-3.1-8b --dtype bfloat16)
PAIR=/tmp/octavo-seed-pair
chain_pair() {  # chain_pair LAYERS: the 70B-shape target at LAYERS layers + the 8B-shape draft (bench/README.md)
  run 150 "$PY" -P -m octavo.bench.chain_pair --target llama-3.1-70b --target-layers "$1" --draft llama-3.1-8b \
    --acceptance-rate 0.7 --k 4 --dtype float16 --out "$PAIR-l$1"
  PAIR="$PAIR-l$1"
  CHAIN=(--model "$PAIR/target" --load-format dummy --model-loader-extra-config '{"partial_checkpoint": true}'
         --dtype float16 --max-num-seqs 8 --enforce-eager)
}
SERVED=("${LLAMA[@]}" --launch --launch-timeout 240)  # `octavo serve` started on loopback by the bench
case "$PHASE" in
  offline)
    bench 230 latency "${LLAMA[@]}" --batch-size 1,8,32,128 --num-iters 3 --baseline hf --roofline "$@"
    bench 270 throughput "${LLAMA[@]}" --num-prompts 1000 --baseline hf --hf-num-prompts 128 --roofline "$@" ;;
  serve)
    bench 560 serve "${SERVED[@]}" --latency-anchor --roofline "$@" ;;
  spec)
    bench 580 spec --pair demo --rounds 4 --time-budget 500 "$@" ;;
  controlled)  # SPEC_SCALE= (empty) calibrates s to 70% acceptance first (about 2 more minutes)
    bench 580 spec --pair controlled --controlled-scale "${SPEC_SCALE-0.01408}" --concurrency 1,64 --rounds 4 \
      --num-warmups 8 --time-budget 470 "$@" ;;
  profile)  # traces stay in /tmp/octavo-traces (large); the summaries are in the JSON and Markdown
    PROFILER='{"profiler": "torch", "torch_profiler_dir": "/tmp/octavo-traces", "delay_iterations": 300, "max_iterations": 30}'
    for mode in no-async-scheduling async-scheduling; do
      bench 280 throughput "${LLAMA[@]}" --num-prompts 1000 --"$mode" --profiler-config "$PROFILER" \
        --tag "profile-$mode" "$@"
    done ;;
  profile-serve)
    PROFILER='{"profiler": "torch", "torch_profiler_dir": "/tmp/octavo-traces", "delay_iterations": 100, "max_iterations": 30}'
    bench 500 serve "${SERVED[@]}" --concurrency 64 --profiler-config "$PROFILER" --tag profile-serve-c64 "$@" ;;
  step)  # #20's plain-step question: batch-1 decode of the demo target, OLD_TREE beside this tree (with and
          # without asynchronous scheduling), then one request under the profiler (host phases, top kernels)
    [ -n "${OLD_TREE:-}" ] || { echo "phase 'step' needs OLD_TREE=DIR (a folder holding an octavo package)"; exit 2; }
    DEMO=(--model octavo/runtime/demo/target --batch-size 1 --input-len 32 --output-len 256 --num-iters 5)
    PYTHONPATH="$OLD_TREE:$PYTHONPATH" bench 90 latency "${DEMO[@]}" --tag step-old "$@"
    for mode in async-scheduling no-async-scheduling; do
      bench 90 latency "${DEMO[@]}" --"$mode" --tag "step-new-$mode" "$@"
    done
    bench 120 throughput --model octavo/runtime/demo/target --num-prompts 1 --input-len-range 32:32 \
      --output-len-range 512:512 --tag step-profile --profiler-config \
      '{"profiler": "torch", "torch_profiler_dir": "/tmp/octavo-traces", "delay_iterations": 100, "max_iterations": 50}' "$@" ;;
  graphs)
    [ -n "${OLD_TREE:-}" ] || { echo "phase 'graphs' needs OLD_TREE=DIR (a folder holding an octavo package)"; exit 2; }
    run 150 "$PY" -m pytest -q -p no:cacheprovider tests/runtime/test_cuda.py tests/runtime/test_graph_layout.py \
      tests/spec/test_spec_lifecycle.py --junitxml "$OUT/pytest-graphs.xml"
    for arm in old new; do
      tree=$PWD; [ $arm = old ] && tree=$OLD_TREE
      PYTHONPATH="$tree:$PYTHONPATH" bench 100 latency "${LLAMA[@]}" --batch-size 1,8 --num-iters 5 --tag "graphs-$arm" "$@"
      PYTHONPATH="$tree:$PYTHONPATH" bench 120 throughput "${LLAMA[@]}" --num-prompts 1000 --tag "graphs-$arm" "$@"
    done ;;
  structured)  # carry xgrammar and apache-tvm-ffi wheels too
    needs xgrammar "xgrammar and apache-tvm-ffi"
    bench 280 serve "${SERVED[@]}" --concurrency 1,64 --output-len 256 --tag structured-off "$@"
    bench 280 serve "${SERVED[@]}" --concurrency 1,64 --output-len 256 --json-schema bench/schemas/structured.json \
      --tag structured-on "$@" ;;
  kernels)
    bench 400 kernels "$@" ;;
  gemv)  # #21: kernels/gemv.py against the unfused ops (the Triton norm or activation, then cuBLAS), with tile sweeps
    bench 540 kernels --parts gemv --tag gemv "$@" ;;
  fusion-tests)  # #21: the fused decode paths' tests on CUDA: gemv.py, the decode kernel with rotary, three
                 # models' greedy tokens with both on, and the 8B shape's graph replay against eager with both on
    OCTAVO_KERNEL_TESTS_DEVICE=cuda run 240 "$PY" -m pytest -q -ra -p no:cacheprovider tests/kernels/test_kernel_gemv.py \
      tests/kernels/test_kernel_model_paths.py tests/kernels/test_kernel_attention.py --junitxml "$OUT/pytest-fusion.xml"
    run 200 "$PY" -m pytest -q -ra -p no:cacheprovider tests/runtime/test_cuda.py -k graph_replay \
      --junitxml "$OUT/pytest-fusion-graphs.xml" ;;
  fusion-ab)  # #21: the engine's decode step with one fused path off and on, ABBA: FUSION=gemv (OCTAVO_GEMV_MAX_ROWS
              # 4; batch 1, 2, 4) or FUSION=rotary (OCTAVO_FUSED_DECODE_ROTARY; batch 1, 16, 64)
    case "${FUSION:-gemv}" in
      gemv) knob=OCTAVO_GEMV_MAX_ROWS on=4 batches=1,2,4 seqs=16 ;;
      rotary) knob=OCTAVO_FUSED_DECODE_ROTARY on=1 batches=1,16,64 seqs=64 ;;
      *) echo "FUSION must be gemv or rotary"; exit 2 ;;
    esac
    round=0
    for value in 0 "$on" "$on" 0; do
      round=$((round + 1))
      export "$knob=$value"
      bench 130 latency "${LLAMA[@]}" --batch-size "$batches" --input-len 128 --output-len 128 --num-iters 3 \
        --max-num-seqs "$seqs" --tag "${FUSION:-gemv}-$value-$round" "$@"
    done
    unset "$knob" ;;
  fusion-quick)  # #21 in one call: the 8B decode step with both fused paths off and on (OCTAVO_GEMV_MAX_ROWS 4 +
                 # OCTAVO_FUSED_DECODE_ROTARY 1), ABBA at batch 1/4/16, then the three models' greedy tokens with
                 # both on (CUDA), then gemv.py's default configs against the unfused ops; about 9 minutes
    round=0
    for arm in off both both off; do
      round=$((round + 1))
      if [ $arm = both ]; then gemv=4 rotary=1; else gemv=0 rotary=0; fi
      OCTAVO_GEMV_MAX_ROWS=$gemv OCTAVO_FUSED_DECODE_ROTARY=$rotary bench 100 latency "${LLAMA[@]}" --batch-size 1,4,16 \
        --input-len 128 --output-len 128 --num-iters 2 --max-num-seqs 16 --tag "fusion-$arm-$round" "$@"
    done
    OCTAVO_KERNEL_TESTS_DEVICE=cuda run 110 "$PY" -m pytest -q -ra -p no:cacheprovider \
      tests/kernels/test_kernel_model_paths.py --junitxml "$OUT/pytest-fusion-paths.xml"
    bench 80 kernels --parts gemv --no-gemv-sweep --tag gemv-defaults "$@" ;;
  front-ab)  # the served 8B shape, OLD_TREE's server beside this tree's, paired ABBA rounds at c = 16 and 64;
             # each level also gives the server's mean TTFT / queue / prefill time (server_latency_ms)
    [ -n "${OLD_TREE:-}" ] || { echo "phase 'front-ab' needs OLD_TREE=DIR (a folder holding an octavo package)"; exit 2; }
    M8B=/tmp/m8b; mkdir -p $M8B && cp bench/configs/llama-3.1-8b.json $M8B/config.json
    [ -f $M8B/tokenizer.json ] || "$PY" -c "import json; from octavo.bench.models import write_synthetic_tokenizer as w; \
      c = json.load(open('$M8B/config.json')); w('$M8B', c['vocab_size'], c.get('eos_token_id'))"
    bench 330 spec --pair paths --target $M8B --draft $M8B --no-a-draft --no-b-draft --a-name old \
      --a-pythonpath "$OLD_TREE" --b-name new --load-format dummy --dtype bfloat16 --concurrency 16,64 --rounds 4 \
      --time-budget 270 --input-len 128 --output-len 128 --tag front-ab "$@" ;;
  decode-profile)  # where a decode step's GPU time goes (top kernels): batch 1 and 64 with CUDA graphs, 64 eager
    P='{"profiler": "torch", "torch_profiler_dir": "/tmp/octavo-traces", "delay_iterations": 40, "max_iterations": 12}'
    extra=("$@")
    for v in "1" "64" "64 --enforce-eager"; do
      set -- $v; n=$1; shift
      bench 150 throughput "${LLAMA[@]}" --num-prompts "$n" --input-len 128 --output-len 128 --profiler-config "$P" \
        --tag "decode-profile-b$n${1:+-eager}" "$@" ${extra[@]+"${extra[@]}"}
    done ;;
  admission)  # the 1000-request offline workload at several kv_reserve_ratio values (and max_num_seqs 512),
               # each with its step trace (steps-TAG.jsonl: prompt tokens recomputed after preemptions)
    for v in "ratio0 --kv-reserve-ratio 0" "ratio05 --kv-reserve-ratio 0.5" "ratio1 --kv-reserve-ratio 1" \
             "seqs512 --kv-reserve-ratio 0 --max-num-seqs 512"; do
      set -- $v; tag=$1; shift
      OCTAVO_STEP_TRACE="$OUT/steps-$tag.jsonl" bench 125 throughput "${LLAMA[@]}" --num-prompts 1000 --tag "admission-$tag" "$@"
    done ;;
  tests)
    plugins=()  # pytest-asyncio, for tests/runtime/test_async_engine.py, named when pytest will not load it itself
    if ! "$PY" -c "import pytest_asyncio" 2>/dev/null; then plugins=(--ignore tests/runtime/test_async_engine.py)
    elif [ -n "${PYTEST_DISABLE_PLUGIN_AUTOLOAD:-}" ]; then plugins=(-p pytest_asyncio); fi
    OCTAVO_KERNEL_TESTS_DEVICE=cuda run 570 "$PY" -m pytest -q -ra -p no:cacheprovider tests/runtime tests/models \
      tests/spec tests/kernels ${plugins[@]+"${plugins[@]}"} --junitxml "$OUT/pytest-cuda.xml" "$@" ;;
  seed)  # #26 until 4 GPUs are lent: the seed's engine args (float16, eager, max_num_seqs 8) on one GPU, the 70B
          # shape at 20 of its 80 layers with the 8B-shape draft, a chain pair built for acceptance 0.7 at k = 4
    chain_pair 20
    bench 150 latency "${CHAIN[@]}" --batch-size 1,8 --num-iters 3 --roofline --tag seed-70b-l20 "$@"
    bench 200 latency "${CHAIN[@]}" --speculative-model "$PAIR/draft" --num-speculative-tokens 4 --batch-size 1,8 \
      --num-iters 3 --tag seed-70b-l20-draft8b "$@"
    run 220 "$PY" -P bench/seed_async.py --target "$PAIR/target" --draft "$PAIR/draft" --tensor-parallel-size 1 \
      --concurrency 1,2,4,8 --prompts-per-user 2 --out "$OUT" --tag seed-async-70b-l20 ;;
  seed-tp4)  # #26 on 4 GPUs (nvidia-h100-x4): the 70B shape at TP 4, batch 1 and 8, against its TP-4 floor (one
             # rank's weights and K/V at copy bandwidth + the step's all-reduces measured on the group), with CUDA
             # graphs, then as the seed runs it (float16, eager, max_num_seqs 8) without a draft
    TP4=(--tensor-parallel-size 4 --batch-size 1,8 --num-iters 3 --roofline)
    bench 150 latency --config llama-3.1-70b "${TP4[@]}" --dtype bfloat16 --tag tp4 "$@"
    chain_pair 80
    bench 150 latency "${CHAIN[@]}" "${TP4[@]}" --tag seed-tp4 "$@" ;;
  seed-tp4-draft)  # #26: the same with the chain pair's 8B-shape draft (acceptance 0.7 at k = 4), on rank 0 alone
                   # (octavo's default) and split over the target's four GPUs (vLLM's): where the draft goes
    TP4=(--tensor-parallel-size 4 --batch-size 1,8 --num-iters 3 --roofline)
    chain_pair 80
    for draft_tp in 1 4; do
      bench 220 latency "${CHAIN[@]}" "${TP4[@]}" --speculative-model "$PAIR/draft" --num-speculative-tokens 4 \
        --speculative-draft-tensor-parallel-size "$draft_tp" --tag "seed-tp4-draft8b-tp$draft_tp" "$@"
    done ;;
  seed-tp4-async)  # #26: the seed's own client path, AsyncLLMEngine with its arguments as written, streaming at
                   # c = 1, 2, 4, 8, the draft's engine then the plain one (one after the other); DRAFT_TP=N
                   # places the draft (unset: the engine's default)
    chain_pair 80
    run 570 "$PY" -P bench/seed_async.py --target "$PAIR/target" --draft "$PAIR/draft" --tensor-parallel-size 4 \
      ${DRAFT_TP:+--draft-tensor-parallel-size "$DRAFT_TP"} --concurrency 1,2,4,8 --prompts-per-user 3 --out "$OUT" \
      --tag "seed-async-tp4${DRAFT_TP:+-draft-tp$DRAFT_TP}" ;;
  seed-tp4-serve)  # #26: `octavo serve` with and without the draft, paired ABBA rounds (bench spec): both servers
                   # stay up, two 70B float16 copies and the draft: 141 GB GPUs (nvidia-h200-x4) only. SWEEP=seed:
                   # c = 1..8 at the seed's max_num_seqs 8; SWEEP=wide: c = 16..64 at max_num_seqs 64
    case "${SWEEP:-seed}" in
      seed) levels=1,2,4,8 seqs=8 ;;
      wide) levels=16,32,64 seqs=64 ;;
      *) echo "SWEEP must be seed or wide"; exit 2 ;;
    esac
    bench 580 spec --pair chain --chain-target llama-3.1-70b --chain-draft llama-3.1-8b --chain-acceptance-rate 0.7 \
      --num-speculative-tokens 4 --controlled-workdir /tmp/octavo-seed-pairs --tensor-parallel-size 4 --dtype float16 \
      --enforce-eager --max-num-seqs "$seqs" --concurrency "$levels" --rounds 3 --launch-timeout 420 \
      ${DRAFT_TP:+--speculative-draft-tensor-parallel-size "$DRAFT_TP"} \
      --time-budget 520 --tag "seed-tp4-serve-${SWEEP:-seed}" "$@" ;;
  symm-ab)  # 2+ GPUs: the one-shot all-reduce through symmetric memory (OCTAVO_SYMM_ALL_REDUCE_BYTES, 512 KB)
            # against NCCL: the CUDA TP tests with it on, then the 8B shape at TP = every GPU, batch 1 and 8, ABBA;
            # each run's roofline times one all-reduce per batch size on the group (roofline.all_reduce_ms)
    gpus=$(nvidia-smi -L | wc -l)
    needs pytest pytest
    # (not the worker-death test: the one-shot kernel waits on a dead peer with no timeout, symm_all_reduce.py)
    OCTAVO_SYMM_ALL_REDUCE_BYTES=524288 run 200 "$PY" -m pytest -q -ra -p no:cacheprovider tests/tp/test_tp_cuda.py \
      -k "not worker_death" --junitxml "$OUT/pytest-symm.xml"
    round=0
    for value in 0 524288 524288 0; do
      round=$((round + 1))
      OCTAVO_SYMM_ALL_REDUCE_BYTES=$value bench 100 latency "${LLAMA[@]}" --tensor-parallel-size "$gpus" \
        --batch-size 1,8 --num-iters 3 --roofline --tag "symm-$value-$round" "$@"
    done ;;
  tp)  # the 70B step at TP 2 needs 71 GB a GPU: H200s
    run 200 "$PY" -m pytest -q -ra -p no:cacheprovider tests/tp/test_tp_cuda.py --junitxml "$OUT/pytest-tp.xml"
    bench 200 latency --config llama-3.1-70b --dtype bfloat16 --tensor-parallel-size 2 --batch-size 1,8 \
      --num-iters 2 --roofline --tag tp2 "$@"
    for tp in 1 2; do
      bench 80 latency "${LLAMA[@]}" --tensor-parallel-size "$tp" --batch-size 1,8 --num-iters 2 --tag "tp$tp" "$@"
    done ;;
  *)
    echo "usage: $0 {offline|serve|spec|controlled|profile|profile-serve|step|graphs|structured|kernels|gemv|fusion-tests|fusion-ab|fusion-quick|front-ab|decode-profile|admission|tests|seed|seed-tp4|seed-tp4-draft|seed-tp4-async|seed-tp4-serve|symm-ab|tp} [octavo bench flags]"; exit 2 ;;
esac
stamp "done (status $status); files in $OUT:"
ls -la "$OUT"
for md in "$OUT"/*.md; do [ -f "$md" ] && { echo; cat "$md"; }; done
# PACK=1: the device tool brings back at most 8 files a call, so everything but the plots (the
# bulk of it) goes back as one archive, suite-PHASE.tgz.
if [ "${PACK:-0}" = 1 ]; then
  (cd "$OUT" && tar czf "/tmp/suite-$PHASE.tgz" --exclude='*.png' . && rm -rf ./* && mv "/tmp/suite-$PHASE.tgz" .)
  ls -la "$OUT"
fi
exit $status
