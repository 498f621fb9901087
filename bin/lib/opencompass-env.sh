#!/usr/bin/env bash
# The pinned OpenCompass in its own virtualenv, $ROOT/.venv-opencompass, for python/opencompass_tests
# (and anyone who wants to try the recipe docs/recipes/opencompass.md from this checkout).
#
#   bin/lib/opencompass-env.sh          # make or update it; prints the interpreter's path
#   source bin/lib/opencompass-env.sh   # after bin/lib/setup.sh and bin/lib/pyenv.sh: defines
#                                       # ensure_opencompass_env, which exports COMPASS_OPENCOMPASS_PYTHON
#
# Not the project's .venv: OpenCompass 0.5.4 needs NumPy < 2, which would downgrade what the engines
# and their tests run on. Installs python/requirements-opencompass.txt (every package pinned) only
# when that file changed since the last install (a stamp inside the venv holds its hash) or a
# package is missing or half installed (bin/lib/pyenv.sh, _compass_install_requirements). A first
# install downloads a few hundred MB (torch's +cpu wheel comes from the local wheel directory) and
# took 11 to 18 minutes on the busy 2-core development machine; the venv takes about 2.1 GB.

ensure_opencompass_env() {
  local venv="${COMPASS_OPENCOMPASS_VENV:-$ROOT/.venv-opencompass}"
  local reqs="$ROOT/python/requirements-opencompass.txt"
  local stamp="$venv/.compass-requirements.sha256"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pip' >/dev/null 2>&1; then
    say "creating the OpenCompass virtualenv (${venv#"$ROOT/"})"
    rm -rf "$venv"
    _compass_make_venv "$venv" || return 1
  fi
  _compass_install_requirements "$venv/bin/python" "$stamp" \
    "installing OpenCompass into ${venv#"$ROOT/"} (a first install takes several minutes)" "$reqs" || return 1
  export COMPASS_OPENCOMPASS_PYTHON="$venv/bin/python"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
  source "$(dirname "${BASH_SOURCE[0]}")/pyenv.sh"
  ensure_opencompass_env || exit 1
  printf '%s\n' "$COMPASS_OPENCOMPASS_PYTHON"
fi
