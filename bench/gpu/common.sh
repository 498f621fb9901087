# Sourced by run.sh and run-multi.sh (after they set B, OUT, WORK): the environment every process
# of a GPU run gets, engines included, and the helpers both scripts use.
mkdir -p "$OUT" "$WORK"
export PATH="$B/bin:$PATH" LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export COMPASS_ENGINES_DIR="$B/engines" COMPASS_PYTHON=python3 COMPASS_LOCK_DIR="$WORK/locks"
# NVLink multicast must stay off on these hosts (KINDS.md): for every process, engines included.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_USE_FLASHINFER_SAMPLER=0
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

log() { echo "[$(date +%T)] $*" | tee -a "$OUT/run.log" >&2; }
now() { date +%s.%N; }

# make_model: the random ~1.1B Llama (bf16, locally trained tokenizer) in $MODEL, unless it is there.
make_model() {
  if [ -f "$MODEL/config.json" ]; then log "model exists: $MODEL"; return; fi
  log "making a random ~1B Llama (bf16) with a locally trained tokenizer in $MODEL"
  "${PYTHON:-python3}" "$B/engines/tools/make_tiny_model.py" "$MODEL" --layers 16 --hidden 2048 --heads 32 --kv-heads 8 \
    --intermediate 8192 --vocab 32000 --max-positions 4096 --dtype bfloat16 2>&1 | tail -3 | tee -a "$OUT/run.log"
}

# wait_for FILE TEXT COUNT TIMEOUT [PID]: until FILE has COUNT lines containing TEXT (fails early if PID dies).
wait_for() {
  local deadline=$(( $(date +%s) + $4 ))
  while [ "$(grep -c "$2" "$1" 2>/dev/null)" -lt "$3" ]; do
    [ "$(date +%s)" -ge "$deadline" ] && { log "timed out waiting for '$2' in $1"; return 1; }
    if [ -n "${5:-}" ] && ! kill -0 "$5" 2>/dev/null; then log "process $5 exited while waiting for '$2' in $1"; return 1; fi
    sleep 0.2
  done
}
