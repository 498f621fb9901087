#!/usr/bin/env bash
# Issue #17's GPU run: a stream of small requests against vLLM itself, on one GPU machine, in one
# command (about 8 minutes on an H200). From the unpacked release bundle (bench/gpu/bundle.sh) and a
# staged vLLM (../shared/gpu/stage-vllm); everything it measures goes under $OUT, stream-report.md
# is the table.
#
#   bash /tmp/compass/gpu/stream.sh [TP]
#
# The same N prompts (bench/gpu/prompts.py: 64 completion tokens each, ignore_eos, greedy) five ways:
#   generate   vLLM's own LLM.generate, all prompts in one call (the reference: 1.0)
#   serve      vLLM's own OpenAI server (vllm serve), CLIENTS concurrent HTTP clients (loadgen.py)
#   batch      compass submit --batch-size 512 -> compass-broker -> compass-worker --engine vllm
#   one        compass submit --batch-size 1 --window WINDOW: one-request batches
#   gateway    compass gateway with the same CLIENTS HTTP clients as `serve`
# Each is timed over PASSES passes: the first after its engine loaded (cold), the others warm; the
# compass paths share one worker, so only their first pass is cold, and they take turns (one,
# batch, gateway, one, ...). `loadgen` measures the HTTP clients against a server that does no
# work (loadgen.py null): the most requests per second they can make here, so a run that reaches a
# small part of it is not held back by its clients. Texts are compared with LLM.generate's
# (greedy; batch composition may change a few on a GPU: counted, not asserted).
#
# Environment: N (2048), CLIENTS (256), WINDOW (1024: one-request batches in flight), PASSES (3),
# VLLM_ARGS (gpu_memory_utilization=0.85 max_model_len=2048), PYTHON, MODEL, OUT, WORK, BUNDLE,
# PATHS (generate serve compass loadgen).
set -uo pipefail
B=${BUNDLE:-/tmp/compass}
OUT=${OUT:-/tmp/out-stream}
MODEL=${MODEL:-/tmp/model-1b}
WORK=${WORK:-/tmp/work-stream}
TP=${1:-1}
N=${N:-2048}
CLIENTS=${CLIENTS:-256}
WINDOW=${WINDOW:-1024}
PASSES=${PASSES:-3}
PATHS=${PATHS:-generate serve compass loadgen}
PY=${PYTHON:-python3}
read -r -a VLLM_ARGS <<<"${VLLM_ARGS:-gpu_memory_utilization=0.85 max_model_len=2048}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
wants() { case " $PATHS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
GPUS=$(seq -s, 0 $((TP - 1)))

make_model
PROMPTS="$WORK/prompts.jsonl"
"$PY" "$B/gpu/prompts.py" "$PROMPTS" "$N" --max-tokens 64 --ignore-eos
RESULTS="$OUT/stream-results.jsonl"  # one line per timed pass: {path, pass, cold, seconds, tokens/s, ...}
: >"$RESULTS"
record() {  # record PATH PASS SECONDS RESULTS_JSONL [EXTRA_JSON]
  "$PY" - "$@" <<'PY' >>"$RESULTS"
import json, sys, subprocess
path, k, seconds, results = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] else {}
import os
check = json.loads(subprocess.run([sys.executable, os.environ["B"] + "/gpu/check_results.py", os.environ["PROMPTS"], results]
                                  + (["--compare", os.environ["REFERENCE"]] if os.path.exists(os.environ["REFERENCE"]) else []),
                                  capture_output=True, text=True).stdout or "{}")
line = {"path": path, "pass": k, "seconds": round(seconds, 3), **check, **extra}
line["completion_tokens_per_second"] = round(check.get("completion_tokens", 0) / seconds, 1) if seconds else 0
print(json.dumps(line))
PY
  tail -1 "$RESULTS" | tee -a "$OUT/run.log"
}
export B PROMPTS REFERENCE="$WORK/generate.jsonl"

# (1) LLM.generate
if wants generate; then
  log "generate: LLM.generate over $N prompts, $PASSES passes"
  "$PY" "$B/gpu/vllm_direct.py" "$MODEL" "$PROMPTS" "$OUT/generate.json" --tp "$TP" --passes "$PASSES" \
    --out "$WORK/generate.jsonl" >"$OUT/generate.log" 2>&1 || { log "LLM.generate failed"; tail -20 "$OUT/generate.log"; }
  "$PY" - "$OUT/generate.json" <<'PY' >>"$RESULTS"
import json, sys
r = json.load(open(sys.argv[1]))
for p in r["passes"]:
    print(json.dumps({"path": "generate", "pass": p["pass"], "seconds": p["seconds"], "completion_tokens": p["completion_tokens"],
                      "completion_tokens_per_second": p["completion_tokens_per_second"], "missing": 0, "duplicated": 0,
                      "load_seconds": r["load_seconds"]}))
PY
  tail -"$PASSES" "$RESULTS" | tee -a "$OUT/run.log"
fi

# (2) vllm serve, CLIENTS HTTP clients
if wants serve; then
  log "serve: vllm serve, $CLIENTS clients"
  serve_args=()
  for kv in "${VLLM_ARGS[@]}"; do serve_args+=("--${kv%%=*}" "${kv#*=}"); done
  serve_args=("${serve_args[@]//_/-}")
  "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name gpu --port 8100 \
    --tensor-parallel-size "$TP" --seed 0 "${serve_args[@]}" >"$OUT/serve.log" 2>&1 &
  server=$!
  t0=$(now)
  until "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8100/v1/models', timeout=2)" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { log "vllm serve exited"; tail -30 "$OUT/serve.log"; break; }
    sleep 0.5
  done
  log "vllm serve up after $(python3 -c "print(round($(now) - $t0, 1))") s"
  for k in $(seq 1 "$PASSES"); do
    "$PY" "$B/gpu/loadgen.py" run http://127.0.0.1:8100/v1 "$PROMPTS" "$WORK/serve-$k.json" --clients "$CLIENTS" \
      --model gpu --out "$WORK/serve-$k.jsonl" >>"$OUT/loadgen.log" 2>&1
    record serve "$k" "$(python3 -c "import json;print(json.load(open('$WORK/serve-$k.json'))['seconds'])")" "$WORK/serve-$k.jsonl" \
      "$(python3 -c "import json;r=json.load(open('$WORK/serve-$k.json'));print(json.dumps({'errors':r['errors'],'latency_ms':r['latency_ms']}))")"
  done
  kill -INT "$server"; wait "$server"
fi

# (3) compass: one broker, one vLLM worker, the gateway
if wants compass; then
  log "compass: broker, worker --engine vllm (tp $TP), gateway"
  fe="ipc://$WORK/fe" be="ipc://$WORK/be"
  engine_args=()
  for kv in "${VLLM_ARGS[@]}"; do engine_args+=(--engine-arg "$kv"); done
  compass-broker --frontend "$fe" --backend "$be" --pool gpu --heartbeat-ms 1000 >"$OUT/broker.log" 2>&1 &
  broker=$!
  compass-worker --broker "$be" --pool gpu --engine vllm --model "$MODEL" --tp "$TP" --gpus "$GPUS" \
    --progress-timeout-ms 600000 --stats-interval-ms 2000 "${engine_args[@]}" >"$OUT/worker.log" 2>&1 &
  worker=$!
  compass gateway --broker "$fe" --listen 127.0.0.1:8200 >"$OUT/gateway.log" 2>&1 &
  gateway=$!
  t0=$(now)
  if wait_for "$OUT/worker.log" "registered with broker" 1 900 "$worker"; then
    log "worker up after $(python3 -c "print(round($(now) - $t0, 1))") s: $(grep -m1 'engine ready' "$OUT/worker.log" | cut -c1-300)"
    for k in $(seq 1 "$PASSES"); do
      for mode in one batch gateway; do
        t0=$(now)
        case $mode in
          one) compass submit "$PROMPTS" --broker "$fe" --pool gpu --batch-size 1 --window "$WINDOW" \
                 --out "$WORK/one-$k.jsonl" --overwrite --quiet >"$OUT/one-$k.txt" 2>&1 ;;
          batch) compass submit "$PROMPTS" --broker "$fe" --pool gpu --batch-size 512 --window 4 \
                 --out "$WORK/batch-$k.jsonl" --overwrite --quiet >"$OUT/batch-$k.txt" 2>&1 ;;
          gateway) "$PY" "$B/gpu/loadgen.py" run http://127.0.0.1:8200/v1 "$PROMPTS" "$WORK/gateway-$k.json" \
                 --clients "$CLIENTS" --model gpu --out "$WORK/gateway-$k.jsonl" >>"$OUT/loadgen.log" 2>&1 ;;
        esac
        t1=$(now)
        extra=""
        [ "$mode" = gateway ] && extra=$(python3 -c "import json;r=json.load(open('$WORK/gateway-$k.json'));print(json.dumps({'errors':r['errors'],'latency_ms':r['latency_ms'],'seconds_loadgen':r['seconds']}))")
        record "$mode" "$k" "$(python3 -c "print($t1 - $t0)")" "$WORK/$mode-$k.jsonl" "$extra"
      done
    done
    grep "engine statistics" "$OUT/worker.log" | tail -40 >"$OUT/occupancy.txt"
  else
    tail -30 "$OUT/worker.log"
  fi
  kill -TERM "$gateway" "$worker" 2>/dev/null; wait "$worker"; kill -TERM "$broker"; wait "$broker" 2>/dev/null
  grep -h -i "start method\|Cannot re-initialize" "$OUT/worker.log" | head -5 >"$OUT/start-method.txt"
fi

# (4) the clients' own ceiling
if wants loadgen; then
  "$PY" "$B/gpu/loadgen.py" null 8300 >"$OUT/null.log" 2>&1 &
  null=$!
  until grep -q "null server" "$OUT/null.log"; do sleep 0.1; done
  "$PY" "$B/gpu/loadgen.py" run http://127.0.0.1:8300/v1 "$PROMPTS" "$WORK/loadgen.json" --clients "$CLIENTS" >>"$OUT/loadgen.log" 2>&1
  python3 -c "import json;r=json.load(open('$WORK/loadgen.json'));print(json.dumps({'path':'loadgen-null','pass':1,'seconds':r['seconds'],'requests_per_second':r['requests_per_second'],'completion_tokens_per_second':r['completion_tokens_per_second']}))" >>"$RESULTS"
  tail -1 "$RESULTS" | tee -a "$OUT/run.log"
  kill "$null"
fi

"$PY" "$B/gpu/stream_report.py" "$RESULTS" >"$OUT/stream-report.md"
cat "$OUT/stream-report.md"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
cp "$B/BUILD" "$OUT/" 2>/dev/null
log "done; results in $OUT"
# The device tool returns few files: PACK=FILE packs everything into one.
if [ -n "${PACK:-}" ]; then tar -C "$OUT" --exclude "$(basename "$PACK")" -czf "$PACK" . && ls -la "$PACK"; fi
