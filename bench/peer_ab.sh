#!/usr/bin/env bash
# #21's peer comparison: vLLM 0.24.0 and octavo on the same GPU and the same 1000 requests
# (octavo's random_requests is the peer's make_requests), offline throughput and decode latency.
#
# The peer travels in six 28 MiB pieces, one per device call (the carry limit): locally
#   mkdir -p .peer && cp ../shared/peers/vllm-0.24.0/{part0*,install.sh,bench_vllm.py} .peer/
# then, on one warm machine, calls back to back:
#   bash bench/peer_ab.sh stash        # carry [".peer/part00"], then part01 .. part04 the same way
#   bash bench/peer_ab.sh run          # carry [".peer/part05", ".peer/install.sh", ".peer/bench_vllm.py", ".whl"]
#   bash bench/peer_ab.sh serve        # instead of `run`, or after it (then carry [".whl"] alone): the
#                                      # served comparison (below), vLLM then octavo with its defaults
#                                      # (engine core apart) and in process
# `stash` copies the carried pieces to /tmp/peer (kept while the machine stays warm); `run` installs
# vLLM into /tmp/vllm-site, runs its bench, then octavo's on the same requests, results in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/suite}"; mkdir -p "$OUT" /tmp/peer
cp -n .peer/* /tmp/peer/ 2>/dev/null
ls /tmp/peer
case "${1:-}" in run|serve) ;; *) exit 0 ;; esac

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
if [ "$1" = serve ]; then
  # Both servers on the model folder that bench_vllm.py wrote in `run` (same config, same
  # synthetic tokenizer), dummy weights, the same streaming client and requests (128/128).
  # vLLM first; then octavo, each with its own defaults but the same context length.
  M=/tmp/llama31-8b-dummy
  [ -d /tmp/vllm-site/vllm ] || ( cd /tmp/peer && SITE=/tmp/vllm-site bash install.sh > "$OUT/peer-install.log" 2>&1 ) \
    || { tail -20 "$OUT/peer-install.log"; exit 3; }
  [ -f $M/tokenizer.json ] || PYTHONPATH=/tmp/vllm-site python3 -c \
    "import sys; sys.path.insert(0, '/tmp/peer'); import bench_vllm; bench_vllm.write_model_dir('$M')"
  S=(--model $M --load-format dummy --dtype bfloat16 --concurrency 1,16,64 --prompts-per-user 4
     --min-prompts-per-level 16 --input-len 128 --output-len 128 --max-model-len 2048 --out "$OUT")
  echo "=== vLLM server ($(date +%T))"
  PYTHONPATH=/tmp/vllm-site VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    python3 -m vllm.entrypoints.openai.api_server --model $M --load-format dummy --dtype bfloat16 \
    --max-model-len 2048 --host 127.0.0.1 --port 8100 --served-model-name m > "$OUT/vllm-server.log" 2>&1 &
  VLLM_PID=$!
  for _ in $(seq 200); do curl -sf http://127.0.0.1:8100/v1/models > /dev/null && break; sleep 1; done
  echo "vLLM up at $(date +%T)"
  PYTHONPATH="$PWD:/tmp/site" timeout -k 10 150 python3 -m octavo.bench serve "${S[@]}" \
    --base-url http://127.0.0.1:8100 --served-model-name m --tag peer-vllm 2>&1 | grep -E "^\| [0-9]"
  kill -INT $VLLM_PID; wait $VLLM_PID
  for arm in "" --no-enable-multiprocessing; do  # the default (engine core apart), then in process
    echo "=== octavo server ${arm:-(defaults)} ($(date +%T))"
    PYTHONPATH="$PWD:/tmp/site" timeout -k 10 170 python3 -m octavo.bench serve "${S[@]}" --launch \
      $arm --tag "peer-octavo${arm:+-in-process}" 2>&1 | grep -E "^\| [0-9]"
  done
  exit 0
fi
( cd /tmp/peer && SITE=/tmp/vllm-site bash install.sh > "$OUT/peer-install.log" 2>&1 ) || { tail -20 "$OUT/peer-install.log"; exit 3; }
echo "=== vLLM ($(date +%T))"
PYTHONPATH=/tmp/vllm-site VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
  timeout -k 10 280 python3 /tmp/peer/bench_vllm.py --batch-sizes 1,8,32,128 --lat-iters 3 \
  --out "$OUT/vllm.json" > "$OUT/vllm.log" 2>&1
grep '^\[bench\]' "$OUT/vllm.log"; tail -3 "$OUT/vllm.log"
echo "=== octavo ($(date +%T))"
L=(--config llama-3.1-8b --dtype bfloat16 --out "$OUT")
PYTHONPATH="$PWD:/tmp/site" timeout -k 10 150 python3 -m octavo.bench throughput "${L[@]}" --num-prompts 1000 \
  --roofline --tag peer 2>&1 | grep -E "^\| octavo|TTFT|ceiling"
PYTHONPATH="$PWD:/tmp/site" timeout -k 10 120 python3 -m octavo.bench latency "${L[@]}" --batch-size 1,8,32,128 \
  --num-iters 3 --tag peer 2>&1 | grep -E "^\| (1|8|32|128) "
