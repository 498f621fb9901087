#!/usr/bin/env bash
# score.sh's quick mode on this machine's CPU, as far as it runs without a GPU: a tiny random model,
# 8 items, every path, with the fake vLLM of bin/engines/tests/fake_vllm standing in for vLLM (so the
# vLLM paths' plumbing runs; their numbers mean nothing, and their log-likelihoods differ from (a):
# the fake has its own tokenizer and model). Uses the compass binaries of .build (debug or release)
# (or $COMPASS_BIN) and the repository's .venv (or $PYTHON); builds nothing. Compass paths show "no scores" until compass submit and
# the engines know scoring requests.
#
#   bench/gpu/score-cpu-smoke.sh [PATH ...]        (default: all paths)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY=${PYTHON:-$ROOT/.venv/bin/python}
BIN=${COMPASS_BIN:-$(ls -d "$ROOT"/.build/release "$ROOT"/.build/debug 2>/dev/null | while read -r d; do [ -x "$d/compass" ] && echo "$d" && break; done)}
[ -n "$BIN" ] && [ -x "$BIN/compass" ] || { echo "no compass binary in $ROOT/.build (or \$COMPASS_BIN): swift build first" >&2; exit 1; }
S=${SMOKE_DIR:-/tmp/compass-score-smoke}
mkdir -p "$S/bundle/bin"
ln -sf "$BIN/compass" "$S/bundle/bin/compass"
ln -sf compass "$S/bundle/bin/compass-broker"
ln -sf compass "$S/bundle/bin/compass-worker"
ln -sfn "$ROOT/bin/engines" "$S/bundle/engines"
ln -sfn "$ROOT/bench/gpu" "$S/bundle/gpu"
[ -f "$S/model/config.json" ] || "$PY" "$ROOT/bin/engines/tools/make_tiny_model.py" "$S/model" --max-positions 4096 > /dev/null
rm -rf "$S/out"
BUNDLE="$S/bundle" OUT="$S/out" WORK="$S/work" MODEL="$S/model" PYTHON="$PY" GPUS= ITEMS=8 BATCH=4 BUDGET_S=400 \
  PYTHONPATH="$ROOT/bin/engines/tests/fake_vllm" FAKE_VLLM_LOG="$S/fake-vllm.log" \
  bash "$ROOT/bench/gpu/score.sh" --quick "$@"
