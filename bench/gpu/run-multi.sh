#!/usr/bin/env bash
# Issue #13: tensor parallelism over several GPUs of one host (nvidia-h200-x2/-x4/-x8), from the
# release bundle (bench/gpu/bundle.sh) with vLLM staged (../shared/gpu/stage-vllm). Writes
# everything it measures under $OUT; PACK=FILE packs it into one archive.
#
#   bash /tmp/compass/gpu/run-multi.sh model           # an 8B-shaped random Llama (bf16), local tokenizer
#   bash /tmp/compass/gpu/run-multi.sh pool [N]        # compass up: vLLM tp=2 (TP=k) over all GPUs, kills while it runs
#   bash /tmp/compass/gpu/run-multi.sh single [N]      # one worker with tp = all GPUs vs vLLM direct at that tp
#   bash /tmp/compass/gpu/run-multi.sh hf [N]          # the hf adapter's TP path (tp=2) through compass
#
# What must hold (checked, and written to $OUT/*.json): every request answered exactly once; while
# one TP group's engine (and, separately, one worker) is SIGKILLed the other groups keep completing
# batches; the killed group's GPU memory returns to its baseline (NVML) and the group rejoins; every
# rank started by spawn; "Cannot re-initialize CUDA in forked subprocess" appears in no log.
set -uo pipefail
B=${BUNDLE:-/tmp/compass}
OUT=${OUT:-/tmp/out-multi}
WORK=${WORK:-/tmp/work-multi}
MODEL=${MODEL:-/tmp/model-8b}  # an existing model directory is used as it is (a smoke run: MODEL=/tmp/model-1b)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
GPUS=$(seq -s, 0 $((NGPU - 1)))

mem() { nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits | tr -d ' ' | tr '\n' ';'; }

make_model() {
  [ -f "$MODEL/config.json" ] && { log "model exists: $MODEL"; return; }
  log "making an 8B-shaped random Llama (bf16) in $MODEL"
  python3 "$B/engines/tools/make_tiny_model.py" "$MODEL" --layers 32 --hidden 4096 --heads 32 --kv-heads 8 \
    --intermediate 14336 --vocab 32000 --max-positions 4096 --dtype bfloat16 2>&1 | tail -2 | tee -a "$OUT/run.log"
}

prompts() { [ -f "$WORK/prompts-$1.jsonl" ] || python3 "$B/gpu/prompts.py" "$WORK/prompts-$1.jsonl" "$1" --max-tokens 64 --ignore-eos; }

status_json() { compass status --broker "$1" --json 2>/dev/null; }

# A topology for `compass up` with one vLLM pool of tp=$1 over every GPU.
topology() {
  cat > "$WORK/topology-tp$1.yaml" <<EOF
broker:
  frontend: ipc://$WORK/fe-tp$1
  backend: ipc://$WORK/be-tp$1
pools:
  llama:
    engine: vllm
    model: $MODEL
    tp: $1
    gpus: [$GPUS]
    credit: 3
    startup_timeout_ms: 1200000
    progress_timeout_ms: 600000
    engine_args:
      gpu_memory_utilization: "0.85"
      max_model_len: "2048"
EOF
}

pool() {  # compass up with tp=2 groups over all GPUs; an engine kill and a worker kill mid-run
  local n=${1:-8192} tp=${TP:-2}; local fe="ipc://$WORK/fe-tp$tp" first; first=$(seq -s, 0 $((tp - 1)))
  prompts "$n"; topology $tp
  log "== pool: $NGPU GPUs as $((NGPU / tp)) vLLM workers of tp=$tp; $n prompts"
  log "direct baseline: vLLM LLM.generate with tp=$tp on GPUs $first"
  CUDA_VISIBLE_DEVICES=$first python3 "$B/gpu/vllm_direct.py" "$MODEL" "$WORK/prompts-$n.jsonl" "$OUT/pool-direct-tp$tp.json" --tp $tp \
    > "$OUT/pool-direct.log" 2>&1; tail -1 "$OUT/pool-direct.log" | tee -a "$OUT/run.log"
  compass up "$WORK/topology-tp$tp.yaml" --no-view --log-dir "$OUT/up-tp$tp" > "$OUT/up-tp$tp.log" 2>&1 &
  local up=$!
  local groups=$((NGPU / tp))
  local deadline=$(( $(date +%s) + 1500 ))
  until [ "$(status_json "$fe" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["scheduler"]["workers"]))' 2>/dev/null)" = "$groups" ]; do
    [ "$(date +%s)" -ge "$deadline" ] && { log "workers did not register"; kill "$up"; return 1; }
    sleep 2
  done
  log "all $groups workers registered; GPU memory: $(mem)"
  local t0; t0=$(now)
  compass submit "$WORK/prompts-$n.jsonl" --broker "$fe" --pool llama --batch-size 256 --window $((groups * 3)) \
    --out "$WORK/pool.jsonl" --overwrite --quiet > "$OUT/pool-submit.txt" 2>&1 &
  local submit=$!
  # A quarter in: SIGKILL the engine of the first group; its worker must notice and restart it.
  while [ "$(wc -l 2>/dev/null < "$WORK/pool.jsonl" || echo 0)" -lt $((n / 4)) ] && kill -0 "$submit" 2>/dev/null; do sleep 0.5; done
  local pgid; pgid=$(python3 -c "import json;print(json.load(open('$WORK/locks/gpu0.lock'))['engine_pgid'])")
  local before_engine; before_engine=$(python3 -c "import json,sys;d=json.load(sys.stdin);print(sum(p['counters']['completed'] for p in d['scheduler']['pools']))" < <(status_json "$fe"))
  log "killing the engine process group $pgid of the group on GPUs $first; memory $(mem)"
  local tk; tk=$(now)
  kill -9 -- "-$pgid"
  ( for _ in $(seq 1 900); do echo "$(date +%s.%N) $(mem)"; sleep 0.2; done ) > "$OUT/pool-kill-nvml.txt" &
  local sampler=$!
  sleep 20  # the outage window observed below: how many batches the other groups completed in it
  local during; during=$(python3 -c "import json,sys;d=json.load(sys.stdin);print(sum(p['counters']['completed'] for p in d['scheduler']['pools']))" < <(status_json "$fe"))
  log "batches completed by the other groups during the first 20 s of the outage: $((during - before_engine))"
  # Halfway: SIGKILL a whole worker (the second group when there is one); compass up restarts it.
  while [ "$(wc -l 2>/dev/null < "$WORK/pool.jsonl" || echo 0)" -lt $((n / 2)) ] && kill -0 "$submit" 2>/dev/null; do sleep 0.5; done
  local victim; victim=$(python3 -c "import json;print(json.load(open('$WORK/locks/gpu$((NGPU > tp ? tp : 0)).lock'))['pid'])")
  log "killing worker pid $victim; memory $(mem)"
  local tw; tw=$(now)
  kill -9 "$victim"
  wait "$submit"; local submit_status=$?
  local t1; t1=$(now)
  kill "$sampler" 2>/dev/null
  cat "$OUT/pool-submit.txt" | tee -a "$OUT/run.log"
  python3 "$B/gpu/check_results.py" "$WORK/prompts-$n.jsonl" "$WORK/pool.jsonl" > "$OUT/pool-check.json"; local check=$?
  status_json "$fe" > "$OUT/pool-status.json"
  kill -INT "$up"; wait "$up"
  python3 - "$OUT" "$tk" "$tw" "$t0" "$t1" "$submit_status" "$check" "$tp" <<'PY'
import glob, json, sys
out, tk, tw, t0, t1, submit_status, check, tp = sys.argv[1], *map(float, sys.argv[2:6]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
logs = "".join(open(f, errors="replace").read() for f in glob.glob(f"{out}/up-tp{tp}/*.log") + [f"{out}/up-tp{tp}.log"])
result = json.load(open(f"{out}/pool-check.json"))
report = {"exactly_once": check == 0, "submit_exit_status": submit_status, "seconds": round(t1 - t0, 1),
          "completion_tokens_per_second": round(result["completion_tokens"] / (t1 - t0), 1), "check": result,
          "direct_one_group": json.load(open(f"{out}/pool-direct-tp{tp}.json")),
          "fork_errors": logs.count("Cannot re-initialize CUDA"), "spawn_mentions": logs.count("spawn"),
          "engine_restarts_logged": logs.count("engine died"), "worker_restarts_logged": logs.count("process exited; restarting")}
json.dump(report, open(f"{out}/pool.json", "w"), indent=1)
print(json.dumps({k: v for k, v in report.items() if k != "check"}))
PY
}

single() {  # one worker owning every GPU (tp = NGPU) vs vLLM direct with the same tp
  local n=${1:-4096} fe="ipc://$WORK/fe-single" be="ipc://$WORK/be-single"
  prompts "$n"
  log "== single: one worker with tp=$NGPU; $n prompts"
  python3 "$B/gpu/vllm_direct.py" "$MODEL" "$WORK/prompts-$n.jsonl" "$OUT/single-direct.json" --tp "$NGPU" > "$OUT/single-direct.log" 2>&1
  tail -1 "$OUT/single-direct.log" | tee -a "$OUT/run.log"
  compass-broker --frontend "$fe" --backend "$be" --pool llama > "$OUT/single-broker.log" 2>&1 &
  local broker=$!
  compass-worker --broker "$be" --pool llama --engine vllm --model "$MODEL" --tp "$NGPU" --gpus "$GPUS" --credit 3 \
    --startup-timeout-ms 1200000 --engine-arg gpu_memory_utilization=0.85 --engine-arg max_model_len=2048 > "$OUT/single-worker.log" 2>&1 &
  local worker=$!
  wait_for "$OUT/single-worker.log" "registered with broker" 1 1500 || { kill $worker $broker; return 1; }
  local t0; t0=$(now)
  compass submit "$WORK/prompts-$n.jsonl" --broker "$fe" --pool llama --batch-size 512 --window 3 --out "$WORK/single.jsonl" --overwrite --quiet \
    > "$OUT/single-submit.txt" 2>&1
  local t1; t1=$(now)
  python3 "$B/gpu/check_results.py" "$WORK/prompts-$n.jsonl" "$WORK/single.jsonl" > "$OUT/single-check.json"
  python3 -c "
import json; c=json.load(open('$OUT/single-check.json')); d=json.load(open('$OUT/single-direct.json')); s=$t1-$t0
r={'compass_tokens_per_second': round(c['completion_tokens']/s,1), 'direct_tokens_per_second': d['completion_tokens_per_second'], 'check': c}
r['ratio']=round(r['compass_tokens_per_second']/r['direct_tokens_per_second'],3); json.dump(r, open('$OUT/single.json','w'), indent=1); print(json.dumps(r))" | tee -a "$OUT/run.log"
  grep -h "Cannot re-initialize CUDA" "$OUT"/single-*.log | head -3
  kill -TERM $worker; wait $worker; kill -TERM $broker; wait $broker
}

hf_tp() {  # the hf adapter's own tensor parallelism (torch.distributed over NCCL, ranks by spawn), tp=2
  local n=${1:-1024} fe="ipc://$WORK/fe-hf" be="ipc://$WORK/be-hf"
  prompts "$n"
  log "== hf tp=2 on GPUs 0,1; $n prompts"
  python3 "$B/gpu/drive_engine.py" "$B/engines/hf_engine.py" "$WORK/prompts-$n.jsonl" --model "$MODEL" --tp 2 --gpus 0,1 \
    --batch-size 128 --engine-arg batch_size=128 --out "$WORK/hf-direct.jsonl" --report "$OUT/hf-direct.json" > "$OUT/hf-direct.log" 2>&1
  tail -1 "$OUT/hf-direct.log" | tee -a "$OUT/run.log"
  compass-broker --frontend "$fe" --backend "$be" --pool hf > "$OUT/hf-broker.log" 2>&1 &
  local broker=$!
  compass-worker --broker "$be" --pool hf --engine hf --model "$MODEL" --tp 2 --gpus 0,1 --engine-arg batch_size=128 \
    --startup-timeout-ms 1200000 > "$OUT/hf-worker.log" 2>&1 &
  local worker=$!
  wait_for "$OUT/hf-worker.log" "registered with broker" 1 1500 || { kill $worker $broker; return 1; }
  compass submit "$WORK/prompts-$n.jsonl" --broker "$fe" --pool hf --batch-size 128 --window 2 --out "$WORK/hf.jsonl" --overwrite --quiet \
    | tee "$OUT/hf-submit.txt" | tee -a "$OUT/run.log"
  python3 "$B/gpu/check_results.py" "$WORK/prompts-$n.jsonl" "$WORK/hf.jsonl" | tee "$OUT/hf-check.json"
  grep -h "start method\|Cannot re-initialize CUDA" "$OUT"/hf-*.log | head -5 | tee -a "$OUT/run.log"
  kill -TERM $worker; wait $worker; kill -TERM $broker; wait $broker
}

case "${1:-}" in
  model) make_model ;;
  pool) make_model; pool "${2:-8192}" ;;
  single) make_model; single "${2:-4096}" ;;
  hf) make_model; hf_tp "${2:-1024}" ;;
  *) echo "usage: run-multi.sh model|pool [N]|single [N]|hf [N]" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
[ -n "${PACK:-}" ] && tar -C "$OUT" -czf "$PACK" . && ls -la "$PACK"
log "done"
