#!/usr/bin/env bash
# Tensor parallelism on the device in ONE call of the device tool (nvidia-h200-x2, 10-minute limit):
#
#   export PYTHONPATH=$PWD OCTAVO_GIT_COMMIT=<sha>; bash bench/run_tp_suite.sh
#
# Steps, each under its own `timeout` and all under one deadline (TP_SUITE_BUDGET_S, 555 s: the
# last step ends by then, the summary follows); a step that fails or runs out of time is recorded
# and the next one runs:
#   tests-graphs  pytest tests/tp/test_tp_cuda.py, the CUDA-graph tests (TP=2 graphs and eager vs one GPU)
#   allreduce     tp_bench: NCCL all-reduce latency, eager and in a CUDA graph (NCCL_DEBUG=INFO: transport)
#   roofline      tp_bench: llama-3.1-70b at TP=2 (the stand-in for TP=4: nvidia-h200-x4 is not lent),
#                 batch-1 and batch-8 decode step vs weight bytes per GPU / measured copy bandwidth
#   pair          tp_bench: 70B target TP=2 + 8B draft TP=1, max_num_seqs 8, speculation off / fixed k / adaptive
#   scaling       tp_bench: llama-3.1-8b at TP=1 and TP=2, batch-1 step and offline throughput
#   tests-kill    pytest tests/tp/test_tp_cuda.py, the worker-death test (last: it kills a rank on purpose)
# The tp_bench steps run as separate processes (a failure or a hang cannot take the next one with it)
# and add their part to one file. Results go to $OUT/tp (the device tool's output folder) or
# bench/results/tp-suite/tp: suite.log, tp-results.json, tp-results.md, pytest-graphs.xml,
# pytest-kill.xml (the tool brings back at most 8 files).
# NVLink multicast stays off: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1.
set -uo pipefail
cd "$(dirname "$0")/.."

DIR="${OUT:-bench/results/tp-suite}/tp"
PY="${PYTHON:-python3}"
BUDGET="${TP_SUITE_BUDGET_S:-555}"
# TP_SUITE_STEPS=tests-graphs,scaling,... runs only the named steps (a re-run of what failed).
GRACE=10     # seconds between a step's SIGINT and its SIGKILL
RESERVE=40   # kept after the last step: kill grace, GPUs settling, summary
MIN_STEP=30  # a step with less time left than this is skipped
mkdir -p "$DIR"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stamp() { echo "=== [${SECONDS}s] $*"; }
SUMMARY=()
STATUS=0  # 1 once a step fails, times out or is skipped

gpus_settle() {  # wait (30 s at most) until no step's process holds GPU memory
  command -v nvidia-smi > /dev/null || return 0
  local used i
  for i in $(seq 1 15); do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | tr '\n' ' ')
    if [ -z "$used" ] || ! awk -v u="$used" 'BEGIN { n = split(u, a, " "); for (j = 1; j <= n; j++) if (a[j] > 2048) exit 0; exit 1 }'; then
      return 0
    fi
    sleep 2
  done
  stamp "GPU memory still in use after 30 s (MiB per GPU): $used"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null || true
}

run_step() {  # run_step NAME WANT_S KEEP_S CMD...: CMD under min(WANT_S, time left - KEEP_S - RESERVE)
  local name=$1 want=$2 keep=$3; shift 3
  if [ -n "${TP_SUITE_STEPS:-}" ] && [[ ",$TP_SUITE_STEPS," != *",$name,"* ]]; then
    SUMMARY+=("$(printf '%-15s not selected (TP_SUITE_STEPS)' "$name")")
    LAST_RC=skipped
    return 0
  fi
  local left=$(( BUDGET - RESERVE - keep - SECONDS ))
  local limit=$(( want < left ? want : left ))
  if (( limit < MIN_STEP )); then
    stamp "$name SKIPPED: ${left}s left before the deadline"
    SUMMARY+=("$(printf '%-15s skipped (no time left)' "$name")")
    LAST_RC=skipped
    STATUS=1
    return 0
  fi
  stamp "$name (limit ${limit}s): $*"
  STEP_LINE=$(( $(cat "$DIR/suite.log" 2>/dev/null | wc -l) + 1 ))
  local start=$SECONDS pidfile
  pidfile=$(mktemp)
  # timeout leads its own process group: the step's worker processes and subprocesses are in it,
  # and whatever of it is left once the step returns is killed by that group id.
  bash -c 'echo $$ > "$0"; exec timeout -k '"$GRACE"' --signal=INT "$@"' "$pidfile" "$limit" "$@"
  local rc=$?
  LAST_RC=$rc
  local group
  group=$(cat "$pidfile" 2>/dev/null)
  rm -f "$pidfile"
  [ -n "$group" ] && kill -KILL -- "-$group" 2>/dev/null
  gpus_settle
  local verdict="ok"
  if (( rc == 124 || rc == 137 )); then verdict="TIMED OUT (limit ${limit}s)"; elif (( rc != 0 )); then verdict="FAILED (exit $rc)"; fi
  (( rc == 0 )) || STATUS=1
  stamp "$name: $verdict after $(( SECONDS - start ))s"
  SUMMARY+=("$(printf '%-15s %-28s %4ss' "$name" "$verdict" "$(( SECONDS - start ))")")
}

capture_failed() {  # the last step's output shows a CUDA-graph capture error
  sleep 1  # let tee catch up
  tail -n +"$STEP_LINE" "$DIR/suite.log" \
    | grep -qE "stream is capturing|during capture|cudaErrorStreamCapture|capture_(begin|end)"
}
use_eager() {
  if (( ${#EAGER[@]} == 0 )) && capture_failed; then
    EAGER=(--enforce-eager)
    stamp "CUDA-graph capture failed under TP in '$1': the benchmarks after it run eager (--enforce-eager)"
    SUMMARY+=("(capture failed in $1: later benchmarks eager)")
    return 0
  fi
  return 1
}

main() {  # (not indented: it holds here-documents)
stamp "tensor-parallel suite on $(hostname); budget ${BUDGET}s; results in $DIR"
echo "commit: ${OCTAVO_GIT_COMMIT:-unknown (set OCTAVO_GIT_COMMIT)}"
nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv || true
nvidia-smi topo -m 2>/dev/null || true
"$PY" - <<'PY' || true
import importlib.metadata as m
import os
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", ".".join(map(str, torch.cuda.nccl.version())),
      "gpus", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
for name in ("triton", "transformers", "pytest", "pytest-timeout"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "MISSING")
print({k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "TORCH_SYMM", "NVSHMEM"))})
PY

PYTEST=("$PY" -m pytest tests/tp/test_tp_cuda.py -q -ra -p no:cacheprovider)
if "$PY" -c "import pytest_timeout" 2>/dev/null; then  # a hung test dumps every thread's stack, then ends
  PYTEST+=(--timeout 130 --timeout-method thread)
fi
BENCH=("$PY" bench/tp_bench.py --out "$DIR" --stem tp-results --append)
if [ -n "${TP_SUITE_SMOKE:-}" ]; then  # CPU dry run of this script's plumbing (tiny shapes, gloo)
  BENCH+=(--smoke)
fi

# WANT_S: what the step should need with room to spare; KEEP_S: time kept for the steps after it
# that must run (the worker-death test).
# If CUDA-graph capture fails under TP (in the tests, the all-reduce graph or the roofline's engine),
# the benchmarks after it run eager, and the roofline is retried eager once.
KILL_S=80
EAGER=()
run_step tests-graphs 200 $KILL_S "${PYTEST[@]}" -k "not worker_death" --junitxml "$DIR/pytest-graphs.xml"
use_eager tests-graphs
NCCL_DEBUG=INFO run_step allreduce 60 $KILL_S "${BENCH[@]}" --parts allreduce
use_eager allreduce
run_step roofline 150 $KILL_S "${BENCH[@]}" ${EAGER[@]+"${EAGER[@]}"} --parts roofline
if [ "$LAST_RC" != 0 ] && use_eager roofline; then
  run_step roofline-eager 150 $KILL_S "${BENCH[@]}" ${EAGER[@]+"${EAGER[@]}"} --parts roofline
fi
run_step pair 170 $KILL_S "${BENCH[@]}" ${EAGER[@]+"${EAGER[@]}"} --parts pair
run_step scaling 150 $KILL_S "${BENCH[@]}" ${EAGER[@]+"${EAGER[@]}"} --parts scaling
run_step tests-kill $KILL_S 0 "${PYTEST[@]}" -k worker_death --junitxml "$DIR/pytest-kill.xml"

rm -f "$DIR"/*.tmp
echo
stamp "summary (commit ${OCTAVO_GIT_COMMIT:-unknown})"
printf '%s\n' "${SUMMARY[@]}"
echo "NCCL transport (from the allreduce step's NCCL_DEBUG=INFO):"
grep -E "NCCL INFO (Channel 00|.*via (P2P|SHM|NET|NVLS|CollNet))|NCCL version|NVLS multicast support" "$DIR/suite.log" \
  | sed -E 's/^.*NCCL INFO //' | sort | uniq -c | head -8 || true
"$PY" - "$DIR" <<'PY' || true
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
d = Path(sys.argv[1])
print("pytest tests/tp/test_tp_cuda.py:")
for name in ("pytest-graphs.xml", "pytest-kill.xml"):
    path = d / name
    if not path.is_file():
        print(f"  {name}: none written (step skipped, timed out or killed: see suite.log)")
        continue
    for case in ET.parse(path).getroot().iter("testcase"):
        verdict = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                verdict = f"{tag}: {(found.get('message') or '')[:160]}"
        print(f"  {case.get('name')}: {verdict} ({float(case.get('time', 0)):.0f}s)")
results = d / "tp-results.json"
if results.is_file():
    parts = json.loads(results.read_text()).get("parts", {})
    print("tp_bench parts:", ", ".join(f"{k} {v.get('status')} ({v.get('seconds', 0):.0f}s)" for k, v in parts.items()))
    md = d / "tp-results.md"
    if md.is_file():
        print()
        print(md.read_text())
PY
stamp "done (exit status $STATUS); files in $DIR:"
ls -la "$DIR"
return $STATUS
}

# Everything to the terminal and to suite.log; the script ends only once tee has written it all.
main 2>&1 | tee -a "$DIR/suite.log"
exit "${PIPESTATUS[0]}"
