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
#   one        compass submit --batch-size 1 --window WINDOW: one-request batches, all N in flight
#              by default, as LLM.generate has all N at once
#   gateway    compass gateway with the same CLIENTS HTTP clients as `serve`
#   window     LLM.generate's engine fed at most CLIENTS prompts at a time through add_request and
#              step, with nothing in between (vllm_direct.py window=): the most any front end with
#              CLIENTS concurrent requests can get from this engine, the fair ceiling of `serve` and
#              `gateway`
#
# Interleaved: the three engines (LLM.generate's, vllm serve's and the compass worker's) are loaded
# side by side on the GPU, each with the same share of its memory (GMU) and otherwise vLLM's
# defaults, and idle while another runs. Then PASSES rounds, each one pass of every path, in an
# order that rotates from round to round. A path's ratio in a round is its rate over LLM.generate's
# in the same round: drift of the machine over the run (clocks, caches, vLLM warming up over its
# first passes) falls on both sides of each ratio. Round 1 is every engine's first pass (cold).
# `loadgen` measures the HTTP clients against a server that does no work (loadgen.py null): the
# most requests per second they can make here, so a run that reaches a small part of it is not
# held back by its clients. Texts are compared with LLM.generate's (greedy; batch composition may
# change some on a GPU: counted, not asserted).
#
# Inside the engines: LLM.generate's engine and the compass worker's write a line per engine step
# (trace-generate.txt, trace-compass.txt: start, end, requests inside), and every pass records the
# CPU seconds each process tree spent in it (proc_cpu.py), so the report can say per pass how many
# steps the engine took, how full they were, how long each took and how busy the front ends were.
#
# Environment: N (2048), CLIENTS (256), WINDOW (N: one-request batches in flight), PASSES (5),
# GMU (0.28: each engine's gpu_memory_utilization), VLLM_ARGS (gpu_memory_utilization=$GMU
# max_model_len=2048), BUDGET_S (stop starting rounds after this many seconds, 540), PYTHON, MODEL,
# OUT, WORK, BUNDLE, PATHS (generate serve compass loadgen), PACK (one archive of $OUT), WORKER_ARGS
# (more compass-worker options, e.g. "--engine-queue 64"), ALT_WORKER_ARGS (a second compass worker
# with these options on pool gpu-alt, its own GPU lock directory and the same share of the GPU;
# adds the paths one-alt, batch-alt and gateway-alt: an A/B of worker settings in one run),
# ALT_WORKER_ENV (environment for that worker and its engine, e.g. COMPASS_SWITCH_INTERVAL=0.0005),
# ALT_PATHS (which alt paths run: one-alt batch-alt gateway-alt), PROFILE (paths sampled with py-spy in one
# more pass after the rounds: see (4b)), PY_SPY (its command).
set -uo pipefail
B=${BUNDLE:-/tmp/compass}
OUT=${OUT:-/tmp/out-stream}
MODEL=${MODEL:-/tmp/model-1b}
WORK=${WORK:-/tmp/work-stream}
TP=${1:-1}
N=${N:-2048}
CLIENTS=${CLIENTS:-256}
WINDOW=${WINDOW:-$N}
PASSES=${PASSES:-5}
GMU=${GMU:-0.28}
BUDGET_S=${BUDGET_S:-540}
PATHS=${PATHS:-generate serve compass loadgen}
PY=${PYTHON:-python3}
read -r -a VLLM_ARGS <<<"${VLLM_ARGS:-gpu_memory_utilization=$GMU max_model_len=2048}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
wants() { case " $PATHS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
GPUS=$(seq -s, 0 $((TP - 1)))
START=$SECONDS
arg() { for kv in "${VLLM_ARGS[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }
elapsed() { python3 -c "print(round($(now) - $1, 1))"; }

make_model
PROMPTS="$WORK/prompts.jsonl"
"$PY" "$B/gpu/prompts.py" "$PROMPTS" "$N" --max-tokens 64 --ignore-eos
RESULTS="$OUT/stream-results.jsonl"  # one line per timed pass: {path, pass, seconds, tokens/s, ...}
: >"$RESULTS"
record() {  # record PATH PASS SECONDS RESULTS_JSONL [EXTRA_JSON]
  "$PY" - "$@" <<'PY' >>"$RESULTS"
import json, sys, subprocess
path, k, seconds, results = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] else {}
import os
compare = os.environ["REFERENCE"] if path != "generate" and os.path.exists(os.environ["REFERENCE"]) else None
check = json.loads(subprocess.run([sys.executable, os.environ["B"] + "/gpu/check_results.py", os.environ["PROMPTS"], results]
                                  + (["--compare", compare] if compare else []),
                                  capture_output=True, text=True).stdout or "{}")
line = {"path": path, "pass": k, "seconds": round(seconds, 3), **check, **extra}
line["completion_tokens_per_second"] = round(check.get("completion_tokens", 0) / seconds, 1) if seconds else 0
print(json.dumps(line))
PY
  tail -1 "$RESULTS" | tee -a "$OUT/run.log"
}
export B PROMPTS REFERENCE="$WORK/generate-reference.jsonl"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
order=()

# (1) LLM.generate, loaded once; one pass per line written to its standard input.
if wants generate; then
  log "generate: loading LLM ($GMU of the GPU)"
  mkfifo "$WORK/generate.in"
  "$PY" "$B/gpu/vllm_direct.py" "$MODEL" "$PROMPTS" "$OUT/generate.json" --tp "$TP" --on-demand \
    --step-trace "$OUT/trace-generate.txt" --gpu-memory-utilization "$GMU" --max-model-len "$(arg max_model_len)" --out "$WORK/generate.jsonl" \
    <"$WORK/generate.in" >"$WORK/generate.lines" 2>"$OUT/generate.log" &
  generator=$!
  pids+=("$generator")
  exec 3>"$WORK/generate.in"
  t0=$(now)
  if wait_for "$WORK/generate.lines" '"ready"' 1 900 "$generator"; then
    log "LLM up after $(elapsed "$t0") s"
    order+=(generate window)
  else
    tail -30 "$OUT/generate.log"
  fi
fi

# (2) vllm serve
if wants serve; then
  log "serve: loading vllm serve ($GMU of the GPU)"
  serve_args=()
  for kv in "${VLLM_ARGS[@]}"; do serve_args+=("--${kv%%=*}" "${kv#*=}"); done
  serve_args=("${serve_args[@]//_/-}")
  "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name gpu --port 8100 \
    --tensor-parallel-size "$TP" --seed 0 "${serve_args[@]}" >"$OUT/serve.log" 2>&1 &
  server=$!
  pids+=("$server")
  t0=$(now)
  up=1
  until "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8100/v1/models', timeout=2)" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { log "vllm serve exited"; tail -30 "$OUT/serve.log"; up=0; break; }
    sleep 0.5
  done
  [ "$up" = 1 ] && { log "vllm serve up after $(elapsed "$t0") s"; order+=(serve); }
fi

# (3) compass: one broker, one vLLM worker, the gateway
if wants compass; then
  log "compass: broker, worker --engine vllm (tp $TP, $GMU of the GPU), gateway"
  fe="ipc://$WORK/fe" be="ipc://$WORK/be"
  engine_args=(--engine-arg "step_trace=$OUT/trace-compass.txt")
  for kv in "${VLLM_ARGS[@]}"; do engine_args+=(--engine-arg "$kv"); done
  compass-broker --frontend "$fe" --backend "$be" --pool gpu --heartbeat-ms 1000 >"$OUT/broker.log" 2>&1 &
  broker=$!
  COMPASS_HOST_TRACE=$OUT/host-trace-compass.txt compass-worker --broker "$be" --pool gpu --engine vllm --model "$MODEL" --tp "$TP" --gpus "$GPUS" \
    --progress-timeout-ms 600000 --stats-interval-ms 2000 "${engine_args[@]}" ${WORKER_ARGS:-} >"$OUT/worker.log" 2>&1 &
  worker=$!
  compass gateway --broker "$fe" --listen 127.0.0.1:8200 >"$OUT/gateway.log" 2>&1 &
  gateway=$!
  pids+=("$gateway" "$worker" "$broker")
  t0=$(now)
  if wait_for "$OUT/worker.log" "registered with broker" 1 900 "$worker"; then
    log "worker up after $(elapsed "$t0") s: $(grep -m1 'engine ready' "$OUT/worker.log" | cut -c1-300)"
    order+=(one batch gateway)
  else
    tail -30 "$OUT/worker.log"
  fi
  engines=$(( $(wants generate && echo 1 || echo 0) + $(wants serve && echo 1 || echo 0) + 2 ))
  if [ -n "${ALT_WORKER_ARGS:-}${ALT_WORKER_ENV:-}" ] && python3 -c "import sys; sys.exit(0 if $engines * $GMU > 0.9 else 1)"; then
    log "no second worker: $engines engines at $GMU of the GPU each do not fit (leave serve out of PATHS, or lower GMU)"
  elif [ -n "${ALT_WORKER_ARGS:-}${ALT_WORKER_ENV:-}" ]; then
    log "compass: a second worker on pool gpu-alt with ${ALT_WORKER_ENV:-} ${ALT_WORKER_ARGS:-}"
    env COMPASS_HOST_TRACE="$OUT/host-trace-alt.txt" ${ALT_WORKER_ENV:-} compass-worker --broker "$be" --pool gpu-alt --engine vllm --model "$MODEL" --tp "$TP" --gpus "$GPUS" \
      --lock-dir "$WORK/locks-alt" --progress-timeout-ms 600000 --stats-interval-ms 2000 \
      --engine-arg "step_trace=$OUT/trace-alt.txt" "${engine_args[@]:2}" ${ALT_WORKER_ARGS:-} >"$OUT/worker-alt.log" 2>&1 &
    alt_worker=$!
    pids+=("$alt_worker")
    t0=$(now)
    if wait_for "$OUT/worker-alt.log" "registered with broker" 1 900 "$alt_worker"; then
      log "second worker up after $(elapsed "$t0") s"
      order+=(${ALT_PATHS:-one-alt batch-alt gateway-alt})
    else
      tail -30 "$OUT/worker-alt.log"
    fi
  fi
fi

cpu_now() {  # the process trees' CPU seconds, as JSON
  local roots=()
  [ -n "${generator:-}" ] && roots+=("generate=$generator")
  [ -n "${server:-}" ] && roots+=("serve=$server")
  [ -n "${worker:-}" ] && roots+=("worker=$worker" "broker=$broker" "gateway=$gateway")
  [ -n "${alt_worker:-}" ] && roots+=("alt=$alt_worker")
  python3 "$B/gpu/proc_cpu.py" "${roots[@]}"
}
generator_passes=0
pool_of() { case $1 in *-alt) echo gpu-alt ;; *) echo gpu ;; esac; }
run_pass() {  # run_pass PATH ROUND
  local path=$1 k=$2 t0 t1 extra="" cpu0 cpu1 line
  cpu0=$(cpu_now)
  case $path in
    generate|window)
      if [ "$path" = window ]; then echo "$k window=$CLIENTS" >&3; else echo "$k" >&3; fi
      generator_passes=$((generator_passes + 1))
      wait_for "$WORK/generate.lines" '"pass"' "$generator_passes" 600 "$generator" || return
      cpu1=$(cpu_now)
      line=$(grep '"pass"' "$WORK/generate.lines" | sed -n "${generator_passes}p")
      [ "$path" = generate ] && [ "$k" = 1 ] && cp "$WORK/generate.jsonl" "$REFERENCE"  # the texts the others are compared with
      record "$path" "$k" "$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['seconds'])" "$line")" "$WORK/generate.jsonl" \
        "$(python3 -c "import json,sys;l=json.loads(sys.argv[1]);print(json.dumps({'started':l['started'],'ended':l['ended'],'cpu0':json.loads(sys.argv[2]),'cpu1':json.loads(sys.argv[3])}))" "$line" "$cpu0" "$cpu1")"
      return ;;
  esac
  t0=$(now)
  case $path in
    serve) "$PY" "$B/gpu/loadgen.py" run http://127.0.0.1:8100/v1 "$PROMPTS" "$WORK/serve-$k.json" --clients "$CLIENTS" \
             --model gpu --out "$WORK/serve-$k.jsonl" >>"$OUT/loadgen.log" 2>&1 ;;
    one|one-alt) compass submit "$PROMPTS" --broker "$fe" --pool "$(pool_of "$path")" --batch-size 1 --window "$WINDOW" \
           --out "$WORK/$path-$k.jsonl" --overwrite --quiet >"$OUT/$path-$k.txt" 2>&1 ;;
    batch|batch-alt) compass submit "$PROMPTS" --broker "$fe" --pool "$(pool_of "$path")" --batch-size 512 --window 4 \
             --out "$WORK/$path-$k.jsonl" --overwrite --quiet >"$OUT/$path-$k.txt" 2>&1 ;;
    gateway|gateway-alt) "$PY" "$B/gpu/loadgen.py" run http://127.0.0.1:8200/v1 "$PROMPTS" "$WORK/$path-$k.json" \
               --clients "$CLIENTS" --model "$(pool_of "$path")" --out "$WORK/$path-$k.jsonl" >>"$OUT/loadgen.log" 2>&1 ;;
  esac
  t1=$(now)
  cpu1=$(cpu_now)
  extra=$(python3 -c "
import json, sys
extra = {'started': round($t0, 3), 'ended': round($t1, 3), 'cpu0': json.loads(sys.argv[1]), 'cpu1': json.loads(sys.argv[2])}
if '$path' in ('serve', 'gateway', 'gateway-alt'):
    r = json.load(open('$WORK/$path-$k.json'))
    extra.update(errors=r['errors'], latency_ms=r['latency_ms'], seconds_loadgen=r['seconds'])
print(json.dumps(extra))" "$cpu0" "$cpu1")
  # The HTTP paths are timed by the load generator (first request to last answer), the others
  # from the command's start to its end.
  local seconds
  if [ "$path" = serve ] || [ "$path" = gateway ] || [ "$path" = gateway-alt ]; then seconds=$(python3 -c "import json;print(json.load(open('$WORK/$path-$k.json'))['seconds'])"); else seconds=$(python3 -c "print($t1 - $t0)"); fi
  record "$path" "$k" "$seconds" "$WORK/$path-$k.jsonl" "$extra"
}

# (4) the rounds
log "rounds: ${order[*]}"
for k in $(seq 1 "$PASSES"); do
  if [ "$k" -gt 1 ] && [ $((SECONDS - START)) -gt "$BUDGET_S" ]; then log "budget spent: stopping after $((k - 1)) rounds"; break; fi
  n=${#order[@]}
  for i in $(seq 0 $((n - 1))); do
    run_pass "${order[$(( (i + k - 1) % n ))]}" "$k"
  done
done
# (4b) PROFILE="gateway window ...": one more pass of each of these paths with py-spy sampling which
# code holds the GIL (--gil, 250 Hz, without stopping the process: --nonblocking) in the Python
# processes that serve it and their children (LLM.generate's for generate and window, the compass
# worker's engine host and its vLLM engine core for compass's paths): prof-PATH.txt.gz, collapsed
# stacks, one line per stack with its sample count. Not in the results: the sampler costs a little.
PY_SPY=${PY_SPY:-py-spy}
profile_target() {  # the process to sample for PATH
  case $1 in
    generate|window) echo "${generator:-}" ;;
    *-alt) pgrep -P "${alt_worker:-0}" | head -1 ;;
    *) pgrep -P "${worker:-0}" | head -1 ;;
  esac
}
for path in ${PROFILE:-}; do
  case " ${order[*]} " in *" $path "*) ;; *) log "profile: $path did not run"; continue ;; esac
  target=$(profile_target "$path")
  [ -n "$target" ] || { log "profile: no process for $path"; continue; }
  "$PY_SPY" record --gil --nonblocking --subprocesses -r 250 --format raw -o "$OUT/prof-$path.txt" --pid "$target" \
    >"$OUT/prof-$path.log" 2>&1 &
  spy=$!
  wait_for "$OUT/prof-$path.log" "Sampling process" 1 30 "$spy" || continue  # attached (or could not)
  t0=$(now)
  RESULTS=$WORK/profiled.jsonl run_pass "$path" 0  # pass 0: not one of the rounds
  log "profile: $path pass took $(elapsed "$t0") s with the sampler attached"
  kill -INT "$spy" 2>/dev/null; wait "$spy" 2>/dev/null
  gzip -f "$OUT/prof-$path.txt" 2>/dev/null
done
exec 3>&-
[ -n "${worker:-}" ] && grep "engine statistics" "$OUT/worker.log" | tail -60 >"$OUT/occupancy.txt"
[ -n "${worker:-}" ] && grep -h -i "start method\|Cannot re-initialize" "$OUT/worker.log" | head -5 >"$OUT/start-method.txt"
cleanup
pids=()

# (5) the clients' own ceiling
if wants loadgen; then
  "$PY" "$B/gpu/loadgen.py" null 8300 >"$OUT/null.log" 2>&1 &
  null=$!
  until grep -q "null server" "$OUT/null.log"; do sleep 0.1; done
  "$PY" "$B/gpu/loadgen.py" run http://127.0.0.1:8300/v1 "$PROMPTS" "$WORK/loadgen.json" --clients "$CLIENTS" >>"$OUT/loadgen.log" 2>&1
  python3 -c "import json;r=json.load(open('$WORK/loadgen.json'));print(json.dumps({'path':'loadgen-null','pass':1,'seconds':r['seconds'],'requests_per_second':r['requests_per_second'],'completion_tokens_per_second':r['completion_tokens_per_second']}))" >>"$RESULTS"
  tail -1 "$RESULTS" | tee -a "$OUT/run.log"
  kill "$null"
fi

"$PY" "$B/gpu/stream_report.py" "$RESULTS" --trace "generate=$OUT/trace-generate.txt" --trace "compass=$OUT/trace-compass.txt" \
  --trace "alt=$OUT/trace-alt.txt" --host-trace "compass=$OUT/host-trace-compass.txt" --host-trace "alt=$OUT/host-trace-alt.txt" --alt "${ALT_WORKER_ENV:-} ${ALT_WORKER_ARGS:-}" >"$OUT/stream-report.md"
cat "$OUT/stream-report.md"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
cp "$B/BUILD" "$OUT/" 2>/dev/null
log "done in $((SECONDS - START)) s; results in $OUT"
# The device tool returns few files: PACK=FILE packs everything into one.
if [ -n "${PACK:-}" ]; then tar -C "$OUT" --exclude "$(basename "$PACK")" -czf "$PACK" . && ls -la "$PACK"; fi
