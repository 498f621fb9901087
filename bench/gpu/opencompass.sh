#!/usr/bin/env bash
# Issue 19 on a GPU machine: OpenCompass → CompassModel → compass-broker → compass-worker --engine vllm,
# beside OpenCompass's own VLLM model type, on the same GPUs, model and data: one perplexity and one
# generation dataset (local JSONL). Reports wall time, tokens/s and whether any process forked after
# CUDA started (OUT/opencompass.md, OUT/opencompass.json).
#
#   bash /tmp/compass/gpu/opencompass.sh [TP]     # TP GPUs, 0..TP-1 (default 1)
#
# Needs the release bundle in $BUNDLE (bench/gpu/bundle.sh), vLLM in /tmp/site (shared/gpu/stage-vllm),
# OpenCompass in /tmp/site-oc (bench/gpu/opencompass-stage.sh) and a model in $MODEL (run.sh model).
# Sizes: N_GEN prompts × MAX_OUT tokens, N_PPL questions × 4 labels. On CPU, ENGINE=synthetic (or hf)
# SKIP_VLLM=1 runs the compass half, to check the script.
set -uo pipefail
TP=${1:-1}
B=${BUNDLE:-/tmp/compass}
OUT=${OUT:-/tmp/out}
MODEL=${MODEL:-/tmp/model-1b}
WORK=${WORK:-/tmp/work-oc}
ENGINE=${ENGINE:-vllm}
N_GEN=${N_GEN:-1024} N_PPL=${N_PPL:-512} MAX_OUT=${MAX_OUT:-128}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/common.sh"
# OpenCompass's VLLM type imports ray only to ask ray.is_initialized() (tp=1 uses no ray); where ray
# is not installed, a stand-in answers that, so the comparison needs no 70 MB wheel carried over.
if ! python3 -c "import ray" 2>/dev/null; then
  mkdir -p "$WORK/raystub/ray"
  printf '"""Stand-in for ray (bench/gpu/opencompass.sh): OpenCompass VLLM asks only is_initialized()."""\ndef is_initialized():\n    return False\n\n\ndef shutdown():\n    pass\n' >"$WORK/raystub/ray/__init__.py"
  RAYSTUB=":$WORK/raystub"
fi
export PYTHONPATH="/tmp/site-oc${PYTHONPATH:+:$PYTHONPATH}${RAYSTUB:-}" HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset VLLM_WORKER_MULTIPROC_METHOD  # OpenCompass's VLLM runs as users run it; the worker sets spawn itself
OC_PYTHON=${OC_PYTHON:-python3}
BENCH="$OC_PYTHON $HERE/opencompass_bench.py"
rm -rf "$WORK/compass" "$WORK/vllm"
mkdir -p "$WORK"
GPUS=$(seq -s, 0 $((TP - 1)))
FE="ipc://$WORK/fe" BE="ipc://$WORK/be"
printf '{"tp": %s, "engine": "%s", "model": "%s", "n_gen": %s, "n_ppl": %s, "max_out": %s, "host": "%s", "gpu": "%s"}\n' \
  "$TP" "$ENGINE" "$MODEL" "$N_GEN" "$N_PPL" "$MAX_OUT" "$(hostname)" \
  "$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null || echo none)" > "$WORK/setup.json"
$BENCH prepare "$WORK" --model "$MODEL" --tp "$TP" --frontend "$FE" --n-gen "$N_GEN" --n-ppl "$N_PPL" --max-out "$MAX_OUT" || exit 1
"$OC_PYTHON" -c "import opencompass, compass_client.opencompass" || { log "OpenCompass or compass_client is not importable"; exit 1; }

# evaluate NAME CONFIG: the opencompass command, timed, its process tree (and $EXTRA_WATCH's) watched
# for forks until it ends.
evaluate() {
  local name=$1 config=$2 t0 t1 status
  t0=$(now)
  (cd "$WORK" && exec "$OC_PYTHON" -m opencompass.cli.main "$config" -w "$WORK/$name") > "$OUT/opencompass-$name.log" 2>&1 &
  local oc=$!
  $BENCH watch "$WORK/$name.forks.json" "$oc" ${EXTRA_WATCH:-} &
  local watcher=$!
  wait "$oc"; status=$?
  t1=$(now)
  wait "$watcher"
  printf '{"wall_seconds": %s, "exit_status": %s, "failed_tasks": %s}\n' "$(python3 -c "print(round($t1 - $t0, 2))")" \
    "$status" "$(grep -c 'failed with code' "$OUT/opencompass-$name.log")" > "$WORK/$name.timing.json"
  log "$name: $(cat "$WORK/$name.timing.json")"
  tail -8 "$OUT/opencompass-$name.log" | tee -a "$OUT/run.log"
}

log "== compass: broker + one $ENGINE worker (tp $TP, GPUs $GPUS), then opencompass with CompassModel"
compass-broker --frontend "$FE" --backend "$BE" --pool gpu > "$OUT/oc-broker.log" 2>&1 &
broker=$!
engine_args=()
[ "$ENGINE" = vllm ] && engine_args=(--engine-arg gpu_memory_utilization=0.85 --engine-arg max_model_len=2048)
gpu_flags=()
[ "$ENGINE" != synthetic ] && [ "$TP" -ge 1 ] && command -v nvidia-smi >/dev/null && gpu_flags=(--tp "$TP" --gpus "$GPUS")
VLLM_WORKER_MULTIPROC_METHOD=spawn compass-worker --broker "$BE" --pool gpu --engine "$ENGINE" --model "$MODEL" \
  "${gpu_flags[@]}" --progress-timeout-ms 600000 "${engine_args[@]}" > "$OUT/oc-worker.log" 2>&1 &
worker=$!
t_start=$(now)
if ! wait_for "$OUT/oc-worker.log" "registered with broker" 1 600 "$worker"; then
  tail -20 "$OUT/oc-worker.log" | tee -a "$OUT/run.log"; kill "$worker" "$broker" 2>/dev/null; exit 1
fi
log "worker ready after $(python3 -c "print(round($(now) - $t_start, 1))") s"
EXTRA_WATCH="$worker" evaluate compass "$WORK/eval_compass.py"
kill -TERM "$worker"; wait "$worker"
kill -TERM "$broker"; wait "$broker"
grep -h -i "Cannot re-initialize\|start method" "$OUT/oc-worker.log" "$OUT/opencompass-compass.log" | head -5

if [ "${SKIP_VLLM:-0}" != 1 ]; then
  log "== OpenCompass's own VLLM type (tp $TP), same data"
  evaluate vllm "$WORK/eval_vllm.py"
  grep -rh -i "Cannot re-initialize" "$WORK/vllm" 2>/dev/null | head -3
fi
$BENCH report "$OUT" "$WORK"
if [ -n "${PACK:-}" ]; then tar -C "$OUT" -czf "$PACK" . && ls -la "$PACK"; fi
