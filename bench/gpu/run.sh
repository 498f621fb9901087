#!/usr/bin/env bash
# The GPU run of issues #5 and #12, on one H100/H200 machine. Runs from the unpacked release bundle
# (bench/gpu/bundle.sh) and writes everything it measures under $OUT (report.md, *.json, logs).
#
#   bash /tmp/compass/gpu/run.sh model        # make the random ~1B Llama (bf16) with a local tokenizer
#   bash /tmp/compass/gpu/run.sh hf N         # hf engine: direct vs compass, then SIGKILL of the engine
#   bash /tmp/compass/gpu/run.sh vllm N       # the same with vLLM (staged into /tmp/site)
#
# Each phase: (1) the adapter driven directly over the engine protocol with the same batches
# (drive_engine.py); (2) the same prompts through compass submit -> compass-broker ->
# compass-worker --engine E --gpus 0; (3) the same again while the engine's whole process group is
# SIGKILLed mid-run: the worker must notice, wait for NVML to show the memory released, restart the
# engine, and every request must be answered exactly once.
set -uo pipefail
B=${BUNDLE:-/tmp/compass}
OUT=${OUT:-/tmp/out}
MODEL=${MODEL:-/tmp/model-1b}
WORK=${WORK:-/tmp/work}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | tr -d ' '; }
secs() { python3 -c "print(round($2 - $1, 2))"; }

# One prompt set for every phase: 5,120 prompts, 64 tokens each (ignore_eos); a phase takes the first N.
PROMPTS="$WORK/prompts.jsonl"
[ -f "$PROMPTS" ] || python3 "$B/gpu/prompts.py" "$PROMPTS" 5120 --max-tokens 64 --ignore-eos
STEPS=${STEPS:-direct compass kill}
has_step() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

phase() {
  local engine=$1 n=$2 batch=$3; shift 3
  local args=("$@") P="$WORK/prompts-$engine.jsonl" tag="$engine"
  local engine_args=()
  for kv in "${args[@]}"; do engine_args+=(--engine-arg "$kv"); done
  head -n "$n" "$PROMPTS" > "$P"
  log "== $engine: $n prompts, batches of $batch, engine args: ${args[*]}, steps: $STEPS"
  if has_step direct; then
  if [ "$engine" = vllm ] && [ "${GENERATE:-1}" = 1 ]; then  # GENERATE=0 skips the LLM.generate reference
    log "vllm direct: LLM.generate over all $n prompts in one call"
    python3 "$B/gpu/vllm_direct.py" "$MODEL" "$P" "$OUT/vllm-generate.json" > "$OUT/vllm-generate.log" 2>&1
    tail -1 "$OUT/vllm-generate.log" | tee -a "$OUT/run.log"
  fi
  log "$engine direct (the adapter over the engine protocol, no broker)"
  # --max-batches 8: as many batches inside the engine as it says in `ready` (vLLM: 2), as the worker does.
  if ! python3 "$B/gpu/drive_engine.py" "$B/engines/${engine}_engine.py" "$P" --model "$MODEL" --batch-size "$batch" \
    --max-batches 8 --repeat "${REPEAT:-1}" "${engine_args[@]}" --out "$WORK/$tag-direct.jsonl" --report "$OUT/$tag-direct.json" > "$OUT/$tag-direct.log" 2>&1; then
    log "$engine direct run failed:"; tail -15 "$OUT/$tag-direct.log" | tee -a "$OUT/run.log"; return 1
  fi
  tail -1 "$OUT/$tag-direct.log" | tee -a "$OUT/run.log"
  fi
  has_step compass || has_step kill || return 0

  log "$engine through compass"
  local fe="ipc://$WORK/$tag-fe" be="ipc://$WORK/$tag-be"
  compass-broker --frontend "$fe" --backend "$be" --pool gpu --heartbeat-ms 1000 > "$OUT/$tag-broker.log" 2>&1 &
  local broker=$!
  compass-worker --broker "$be" --pool gpu --engine "$engine" --model "$MODEL" --gpus 0 --credit 2 \
    --progress-timeout-ms 600000 "${engine_args[@]}" > "$OUT/$tag-worker.log" 2>&1 &
  local worker=$!
  if ! wait_for "$OUT/$tag-worker.log" "registered with broker" 1 900 "$worker"; then
    tail -20 "$OUT/$tag-worker.log" | tee -a "$OUT/run.log"; kill "$worker" "$broker" 2>/dev/null; return 1
  fi
  if has_step compass; then
  local r
  for r in $(seq 1 "${REPEAT:-1}"); do  # REPEAT=K: K passes on the same warm engine (direct: drive_engine --repeat)
  local t0; t0=$(now)
  compass submit "$P" --broker "$fe" --pool gpu --batch-size "$batch" --window "${WINDOW:-4}" --out "$WORK/$tag-compass.jsonl" \
    --overwrite --quiet > "$OUT/$tag-submit.txt" 2>&1
  local t1; t1=$(now)
  cat "$OUT/$tag-submit.txt" | tee -a "$OUT/run.log"
  python3 "$B/gpu/check_results.py" "$P" "$WORK/$tag-compass.jsonl" --compare "$WORK/$tag-direct.jsonl" \
    > "$OUT/$tag-compass-check.json"
  python3 - "$OUT/$tag-compass-check.json" "$(secs "$t0" "$t1")" "$OUT/$tag-compass.json" "$r" <<'PY'
import json, sys
check = json.load(open(sys.argv[1])); seconds = float(sys.argv[2]); out = sys.argv[3]; r = int(sys.argv[4])
check.update(seconds=seconds, completion_tokens_per_second=round(check["completion_tokens"] / seconds, 1))
passes = json.load(open(out)).get("passes", []) if r > 1 else []
passes.append({"pass": r, "seconds": seconds, "completion_tokens_per_second": check["completion_tokens_per_second"],
               "exactly_once": check["missing"] == 0 and check["duplicated"] == 0})
rates = sorted(p["completion_tokens_per_second"] for p in passes)
check.update(passes=passes, median_completion_tokens_per_second=rates[len(rates) // 2])
json.dump(check, open(out, "w"), indent=1); print(json.dumps({k: v for k, v in check.items() if k != "passes"}))
PY
  done
  fi

  if has_step kill; then
  log "$engine: SIGKILL of the engine's process group mid-run"
  local readies; readies=$(grep -c "engine ready" "$OUT/$tag-worker.log")
  compass submit "$P" --broker "$fe" --pool gpu --batch-size "$batch" --window "${WINDOW:-4}" --out "$WORK/$tag-kill.jsonl" \
    --overwrite --quiet --session "kill-$tag" > "$OUT/$tag-kill-submit.txt" 2>&1 &
  local submit=$!
  local quarter=$(( n / 4 ))
  local deadline=$(( $(date +%s) + 600 ))
  while [ "$(wc -l 2>/dev/null < "$WORK/$tag-kill.jsonl" || echo 0)" -lt "$quarter" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
  local pgid; pgid=$(python3 -c "import json;print(json.load(open('$WORK/locks/gpu0.lock'))['engine_pgid'])")
  local before; before=$(gpu_mem)
  ( for _ in $(seq 1 600); do echo "$(date +%s.%N) $(gpu_mem)"; sleep 0.2; done ) > "$OUT/$tag-kill-nvml.txt" &
  local sampler=$!
  local tk; tk=$(now)
  log "killing engine process group $pgid (GPU memory used: $before MiB)"
  kill -9 -- "-$pgid"
  wait_for "$OUT/$tag-worker.log" "engine ready" $(( readies + 1 )) 900 "$worker"
  local tr; tr=$(now)
  wait "$submit"; local submit_status=$?
  kill "$sampler" 2>/dev/null
  cat "$OUT/$tag-kill-submit.txt" | tee -a "$OUT/run.log"
  python3 "$B/gpu/check_results.py" "$P" "$WORK/$tag-kill.jsonl" > "$OUT/$tag-kill-check.json"; local check_status=$?
  python3 - "$OUT" "$tag" "$tk" "$tr" "$before" "$submit_status" "$check_status" <<'PY'
import json, re, sys
out, tag, tk, tr, before, submit_status, check_status = sys.argv[1:8]
tk, tr = float(tk), float(tr)
samples = []
for l in open(f"{out}/{tag}-kill-nvml.txt"):
    try:
        t, m = l.split()
        samples.append((float(t), float(m)))
    except ValueError:
        pass  # no NVML reading at that instant
after_kill = [m for t, m in samples if t >= tk]
floor = min(after_kill) if after_kill else None
released_at = next((t for t, m in samples if t >= tk and m <= floor + 1024), None)
log = open(f"{out}/{tag}-worker.log").read()
lines = [l for l in log.splitlines() if any(k in l for k in ("engine died", "engine ended", "GPU memory released",
         "waiting for GPU memory", "engine ready", "start method", "spawn"))]
report = {"gpu_memory_before_kill_mib": float(before) if before else None, "gpu_memory_floor_after_kill_mib": floor,
          "seconds_kill_to_memory_released": round(released_at - tk, 2) if released_at else None,
          "seconds_kill_to_engine_ready": round(tr - tk, 2), "submit_exit_status": int(submit_status),
          "exactly_once": int(check_status) == 0, "check": json.load(open(f"{out}/{tag}-kill-check.json")),
          "worker_log": lines[-20:]}
json.dump(report, open(f"{out}/{tag}-kill.json", "w"), indent=1)
print(json.dumps({k: v for k, v in report.items() if k != "worker_log"}))
PY
  fi
  kill -TERM "$worker"; wait "$worker"
  kill -TERM "$broker"; wait "$broker"
  grep -h -i "start method\|spawn\|Cannot re-initialize" "$OUT/$tag-worker.log" | head -20 > "$OUT/$tag-start-method.txt"
  log "$engine phase done"
}

case "${1:-all}" in
  model) make_model ;;
  hf) make_model; phase hf "${2:-2048}" "${3:-256}" batch_size="${3:-256}" max_tokens=64 ;;
  vllm) make_model; phase vllm "${2:-5120}" 512 gpu_memory_utilization=0.85 max_model_len=2048 ;;
  all) make_model; phase hf "${2:-2048}" 128 batch_size=128 max_tokens=64; phase vllm "${3:-5120}" 512 gpu_memory_utilization=0.85 max_model_len=2048 ;;
  *) echo "usage: run.sh model|hf [N]|vllm [N]|all" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
log "done; results in $OUT"
# The device tool returns at most 8 files: pack everything into one.
if [ -n "${PACK:-}" ]; then tar -C "$OUT" -czf "$PACK" . && ls -la "$PACK"; fi
