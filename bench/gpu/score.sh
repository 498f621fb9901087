#!/usr/bin/env bash
# The GPU scoring benchmark: log-likelihoods of four-choice, five-shot items, four ways, in one run on
# one H200, from the unpacked release bundle (bench/gpu/bundle.sh) and a staged vLLM
# (../shared/gpu/stage-vllm). Everything it measures goes under $OUT; score-report.md is the table.
#
#   bash /tmp/compass/gpu/score.sh [--quick] [PATH ...]      PATH: hf vllm compass-hf compass-vllm (default all)
#   bash /tmp/compass/gpu/score.sh report                    the table of what $OUT holds
#
# Paths, each timed over a cold pass (the first after loading) and warm ones (PASSES in all), each
# writing every item's log-likelihoods so that score_report.py compares them with (a):
#   hf            (a) transformers forward passes, batches of $BATCH, as lm-evaluation-harness does (score_hf.py)
#   vllm          (b) vLLM LLM.generate(max_tokens=1, prompt_logprobs=1) over every context+choice prompt,
#                     prefix caching on (default), and its variant vllm-cacheread (skip_reading_prefix_cache=False)
#   compass-hf    (c) compass submit (one scoring request per item, batches of $BATCH) -> broker -> worker --engine hf
#   compass-vllm  (d) the same with --engine vllm
# and, only when asked for, the adapters driven over the engine protocol with no broker (drive_engine.py,
# same batches), which tells an adapter's cost from compass's: engine-hf, engine-vllm.
# The whole run keeps within BUDGET_S seconds (default 570: a device command may take 10 minutes): each
# path gets a share of what is left (vLLM paths a larger one: they load for a minute), stops starting
# passes that would not fit, and is killed at the end of its share; the report is written whatever ran.
#
# Environment: ITEMS (2000; --quick 32), BATCH (64), PASSES (2), BUDGET_S (570), WINDOW (4, batches in
# flight for compass submit), TARGET_TOKENS (600, mean context), GPUS (0; empty on a machine without),
# VLLM_ENGINE_ARGS (gpu_memory_utilization=0.85 max_model_len=2048, for every vLLM path), VLLM_VARIANTS
# (plain,cacheread: path b's variants), PYTHON (python3), MODEL, OUT, WORK, BUNDLE.
set -uo pipefail
B=${BUNDLE:-/tmp/compass}
OUT=${OUT:-/tmp/out-score}
MODEL=${MODEL:-/tmp/model-1b}
WORK=${WORK:-/tmp/work}
G="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"  # these scripts: the bundle's gpu/, or bench/gpu
source "$G/common.sh"
PYTHON=${PYTHON:-python3}
export COMPASS_PYTHON="$PYTHON"

QUICK=0
PATHS=()
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    hf|vllm|compass-hf|compass-vllm|engine-hf|engine-vllm|report) PATHS+=("$arg") ;;
    *) echo "usage: score.sh [--quick] [hf] [vllm] [compass-hf] [compass-vllm] [engine-hf] [engine-vllm] | report" >&2
       exit 2 ;;
  esac
done
[ ${#PATHS[@]} -eq 0 ] && PATHS=(hf vllm compass-hf compass-vllm)
if [ "${PATHS[*]}" = report ]; then "$PYTHON" "$G/score_report.py" table "$OUT"; exit; fi

N=${ITEMS:-$([ "$QUICK" = 1 ] && echo 32 || echo 2000)}
BATCH=${BATCH:-64}
PASSES=${PASSES:-2}
WINDOW=${WINDOW:-4}
GPUS=${GPUS-0}
read -r -a VLLM_ENGINE_ARGS <<< "${VLLM_ENGINE_ARGS:-gpu_memory_utilization=0.85 max_model_len=2048}"
BUDGET_S=${BUDGET_S:-570}
START=$(date +%s)
DEADLINE=$(( START + BUDGET_S ))
left() { echo $(( DEADLINE - $(date +%s) )); }
weight() { case "$1" in *vllm) echo 3 ;; *) echo 2 ;; esac; }
secs() { "$PYTHON" -c "print(round($2 - $1, 3))"; }
engine_arg() { local kv; for kv in "$@"; do printf -- '--engine-arg\n%s\n' "$kv"; done; }
vllm_value() { local kv; for kv in "${VLLM_ENGINE_ARGS[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }

# stop PID NAME: SIGTERM, up to 60 s to exit (a worker drains), then SIGKILL.
stop() {
  kill -TERM "$1" 2>/dev/null
  local i
  for i in $(seq 1 300); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$1" 2>/dev/null && { log "$2 did not exit within 60 s of SIGTERM: SIGKILL"; kill -KILL "$1" 2>/dev/null; }
  wait "$1" 2>/dev/null
}

log "scoring benchmark: paths ${PATHS[*]}, $N items, batches of $BATCH, $PASSES passes, budget ${BUDGET_S}s"
make_model
ITEMS_FILE="$WORK/score-items-$N-$(basename "$MODEL").jsonl"  # calibrated to that model's tokenizer
if [ ! -f "$ITEMS_FILE" ]; then
  "$PYTHON" "$G/score_items.py" "$ITEMS_FILE" "$N" --model "$MODEL" --target-tokens "${TARGET_TOKENS:-600}" 2>&1 \
    | tee -a "$OUT/run.log" >&2 || { log "making the items failed"; exit 1; }
fi
cp "$ITEMS_FILE" "$OUT/score-items.jsonl"

# compass_path ENGINE SHARE: broker + one worker with ENGINE; PASSES runs of compass submit over the items.
compass_path() {
  local engine=$1 share=$2 name="compass-$1"
  local end=$(( $(date +%s) + share )) fe="ipc://$WORK/$name-fe" be="ipc://$WORK/$name-be"
  local args=()
  if [ "$engine" = vllm ]; then mapfile -t args < <(engine_arg "${VLLM_ENGINE_ARGS[@]}")
  else mapfile -t args < <(engine_arg "batch_size=$BATCH"); fi
  local gpus=(); [ -n "$GPUS" ] && gpus=(--gpus "$GPUS")
  compass-broker --frontend "$fe" --backend "$be" --pool score --heartbeat-ms 1000 > "$OUT/$name-broker.log" 2>&1 &
  local broker=$!
  local t0; t0=$(now)
  compass-worker --broker "$be" --pool score --engine "$engine" --model "$MODEL" "${gpus[@]}" --credit 2 \
    --progress-timeout-ms 600000 "${args[@]}" > "$OUT/$name-worker.log" 2>&1 &
  local worker=$!
  if ! wait_for "$OUT/$name-worker.log" "registered with broker" 1 "$share" "$worker"; then
    tail -20 "$OUT/$name-worker.log" | tee -a "$OUT/run.log"
    stop "$worker" worker; stop "$broker" broker; return 1
  fi
  local load; load=$(secs "$t0" "$(now)")
  log "$name: engine loaded and registered in ${load}s"
  local passes=() notes=() last=0 p
  for p in $(seq 1 "$PASSES"); do
    local remaining=$(( end - $(date +%s) ))
    if [ "$p" -gt 1 ] && [ "$remaining" -lt $(( last * 12 / 10 + 5 )) ]; then
      notes+=(--note "stopped after $((p - 1)) passes: the next would not fit the path's ${share}s"); break
    fi
    local t1; t1=$(now)
    timeout "$remaining" compass submit "$ITEMS_FILE" --broker "$fe" --pool score --batch-size "$BATCH" \
      --window "$WINDOW" --out "$WORK/$name-$p.jsonl" --overwrite --quiet > "$OUT/$name-submit-$p.txt" 2>&1
    local status=$? seconds; seconds=$(secs "$t1" "$(now)")
    [ "$status" = 124 ] && notes+=(--note "pass $p was cut off at the end of the path's ${share}s")
    log "$name: pass $p: ${seconds}s (compass submit exit status $status)"
    passes+=(--pass "$WORK/$name-$p.jsonl" "$seconds")
    last=${seconds%.*}
    [ "$status" = 124 ] && break
  done
  "$PYTHON" "$G/score_report.py" compass "$name" "$OUT" "$ITEMS_FILE" --engine "$engine" --load-seconds "$load" \
    "${passes[@]}" "${notes[@]}"
  stop "$worker" worker
  stop "$broker" broker
}

# engine_path ENGINE SHARE: the adapter driven directly over the engine protocol (no broker, no worker).
engine_path() {
  local engine=$1 share=$2 name="engine-$1" args=()
  if [ "$engine" = vllm ]; then mapfile -t args < <(engine_arg "${VLLM_ENGINE_ARGS[@]}")
  else mapfile -t args < <(engine_arg "batch_size=$BATCH"); fi
  timeout "$share" "$PYTHON" "$G/drive_engine.py" "$B/engines/${engine}_engine.py" "$ITEMS_FILE" --model "$MODEL" \
    --gpus "${GPUS:-0}" --batch-size "$BATCH" --max-batches 8 --repeat "$PASSES" "${args[@]}" \
    --out "$WORK/$name.jsonl" --report "$OUT/$name-drive.json" > "$OUT/$name.log" 2>&1 \
    || { log "$name failed (status $?):"; tail -5 "$OUT/$name.log" | tee -a "$OUT/run.log"; return 1; }
  local passes=()
  mapfile -t passes < <("$PYTHON" -c "import json, sys
report = json.load(open(sys.argv[1]))
for p in report['passes']:
    print('--pass'); print(sys.argv[2]); print(p['seconds'])
print('--load-seconds'); print(report['load_seconds'])" "$OUT/$name-drive.json" "$WORK/$name.jsonl")
  "$PYTHON" "$G/score_report.py" compass "$name" "$OUT" "$ITEMS_FILE" --engine "$engine" --kind engine "${passes[@]}"
}

remaining_weight() { local w=0 q; for q in "$@"; do w=$(( w + $(weight "$q") )); done; echo "$w"; }
todo=("${PATHS[@]}")
while [ ${#todo[@]} -gt 0 ]; do
  path=${todo[0]}
  share=$(( $(left) * $(weight "$path") / $(remaining_weight "${todo[@]}") ))
  todo=("${todo[@]:1}")
  if [ "$share" -lt 20 ]; then log "$path: skipped, ${share}s of the budget left for it"; continue; fi
  log "== $path: up to ${share}s"
  case "$path" in
    hf)
      timeout "$share" "$PYTHON" "$G/score_hf.py" "$MODEL" "$ITEMS_FILE" "$OUT" --batch-size "$BATCH" --passes "$PASSES" \
        --budget-s $(( share - 10 )) > "$OUT/hf.log" 2>&1 || { log "hf failed (status $?):"; tail -5 "$OUT/hf.log" | tee -a "$OUT/run.log"; }
      ;;
    vllm)
      if ! "$PYTHON" -c "import vllm" > /dev/null 2>&1; then log "vllm: skipped, vllm is not importable"; continue; fi
      eager=(); [ "$(vllm_value enforce_eager)" = true ] && eager=(--enforce-eager)
      timeout "$share" "$PYTHON" "$G/score_vllm.py" "$MODEL" "$ITEMS_FILE" "$OUT" --passes "$PASSES" \
        --variants "${VLLM_VARIANTS:-plain,cacheread}" \
        --budget-s $(( share - 10 )) --gpu-memory-utilization "$(vllm_value gpu_memory_utilization)" \
        --max-model-len "$(vllm_value max_model_len)" "${eager[@]}" > "$OUT/vllm.log" 2>&1 \
        || { log "vllm failed (status $?):"; tail -5 "$OUT/vllm.log" | tee -a "$OUT/run.log"; }
      ;;
    compass-hf) compass_path hf "$share" || log "compass-hf failed" ;;
    engine-hf) engine_path hf "$share" ;;
    engine-vllm)
      if ! "$PYTHON" -c "import vllm" > /dev/null 2>&1; then log "engine-vllm: skipped, vllm is not importable"; continue; fi
      engine_path vllm "$share"
      ;;
    compass-vllm)
      if ! "$PYTHON" -c "import vllm" > /dev/null 2>&1; then log "compass-vllm: skipped, vllm is not importable"; continue; fi
      compass_path vllm "$share" || log "compass-vllm failed"
      ;;
  esac
  grep -h "pass [0-9]*:" "$OUT/$path.log" 2>/dev/null | tee -a "$OUT/run.log" >&2
done

"$PYTHON" "$G/score_report.py" table "$OUT" | tee -a "$OUT/run.log"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
log "done in $(( $(date +%s) - START ))s; results in $OUT"
# The device tool returns at most 8 files: pack everything into one.
if [ -n "${PACK:-}" ]; then tar -C "$OUT" -czf "$PACK" . && ls -la "$PACK"; fi
