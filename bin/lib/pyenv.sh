# The Python virtualenv for the engine adapters and their tests. Sourced after bin/lib/setup.sh
# (which sets ROOT, say and as_root); defines ensure_python_env.
#
# ensure_python_env makes $ROOT/.venv when missing and installs bin/engines/requirements.txt (and
# python/requirements-dev.txt when it exists) only when those files changed since the last install
# or a pinned package is missing or half installed: a stamp inside .venv holds their hash, so later
# runs download nothing. It exports COMPASS_PYTHON.
#
# An install that stopped half way (pip timed out, the job was cancelled) is finished by the next
# run: the stamp is written only after a complete install, and bin/lib/pip_check.py finds pinned
# packages that pip unpacked but never finished (pip itself would take them as installed).

# Prints a hash of every requirements file that exists (with its name relative to $ROOT, so adding
# one counts and a venv made in another checkout of the same files is recognised).
_compass_requirements_hash() {
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then printf '%s\n' "${f#"$ROOT/"}"; cat "$f"; fi
  done | sha256sum | cut -d' ' -f1
}

# pip with patience for slow mirrors: a 60 s network timeout and 10 retries (pip's defaults are 15 s
# and 5) unless PIP_DEFAULT_TIMEOUT / PIP_RETRIES say otherwise, and a bound on the whole command
# (COMPASS_PIP_TIMEOUT_S, default 40 minutes) so that a hung download fails instead of holding CI.
_compass_pip() {
  local python="$1"; shift
  # --foreground: pip stays in the caller's process group, so that stopping the caller stops it.
  timeout --foreground --kill-after=30 "${COMPASS_PIP_TIMEOUT_S:-2400}" \
    "$python" -m pip install -q --disable-pip-version-check \
    --timeout "${PIP_DEFAULT_TIMEOUT:-60}" --retries "${PIP_RETRIES:-10}" "$@" >&2
}

# _compass_install_requirements PYTHON STAMP MESSAGE FILE...: installs the requirements FILEs for
# PYTHON (a venv's interpreter) unless the file STAMP already holds their hash and every pinned
# package is whole; says MESSAGE when it installs. Tries pip twice (a mirror's hiccup), then
# reinstalls, without their dependencies, pinned packages that pip left half installed. Writes the
# stamp only when pip_check finds nothing missing. Two runs never install into one venv at once: the
# second waits for the first (flock on a file beside the stamp), then finds everything there.
_compass_install_requirements() {
  local lock status
  if ! command -v flock >/dev/null; then
    _compass_install_unlocked "$@"
    return
  fi
  exec {lock}>"$(dirname "$2")/.compass-install.lock"
  flock "$lock"
  _compass_install_unlocked "$@"
  status=$?
  exec {lock}>&-
  return "$status"
}

_compass_install_unlocked() {
  local python="$1" stamp="$2" message="$3"; shift 3
  local want args=() f broken
  want="$(_compass_requirements_hash "$@")"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && "$python" "$ROOT/bin/lib/pip_check.py" "$@" >/dev/null 2>&1; then
    return 0
  fi
  say "$message"
  rm -f "$stamp"
  for f in "$@"; do args+=(-r "$f"); done
  if ! _compass_pip "$python" "${args[@]}"; then
    say "pip install failed; trying once more"
    _compass_pip "$python" "${args[@]}" || { say "pip install failed (${*#"$ROOT/"})"; return 1; }
  fi
  if ! broken="$("$python" "$ROOT/bin/lib/pip_check.py" "$@" 2>/dev/null)"; then
    say "reinstalling what an earlier install left unfinished: $(echo $broken)"
    # shellcheck disable=SC2086 # one name==version per word
    _compass_pip "$python" --force-reinstall --no-deps $broken || { say "pip install failed"; return 1; }
    "$python" "$ROOT/bin/lib/pip_check.py" "$@" >/dev/null || { say "still missing after pip install: $(echo $broken)"; return 1; }
  fi
  printf '%s\n' "$want" >"$stamp"
}

# Makes the venv at $1. On a fresh Debian machine python3-venv (ensurepip) may be missing: install
# it with apt only when `python3 -m venv` fails, then try once more.
_compass_make_venv() {
  local venv="$1"
  if python3 -m venv "$venv" >/dev/null 2>&1; then return 0; fi
  rm -rf "$venv" # a half-made venv (no pip) would pass the -x check next time
  if ! command -v apt-get >/dev/null; then
    say "python3 -m venv failed and this is not a Debian/Ubuntu system: install Python 3.10+ with the venv module"
    return 1
  fi
  local minor
  minor="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" || return 1
  say "installing python3-venv (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  # Debian names the package after the minor version (python3.11-venv); python3-venv pulls the default one.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python${minor}-venv" >/dev/null 2>&1 \
    || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv "$venv" || { rm -rf "$venv"; say "python3 -m venv still fails"; return 1; }
}

ensure_python_env() {
  local venv="$ROOT/.venv"
  local stamp="$venv/.compass-requirements.sha256"
  local reqs=("$ROOT/bin/engines/requirements.txt")
  [ -f "$ROOT/python/requirements-dev.txt" ] && reqs+=("$ROOT/python/requirements-dev.txt")
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    say "python3 3.10 or newer is needed (found: $(python3 --version 2>&1 || echo none))"
    return 1
  fi
  # A venv whose interpreter is gone (python upgraded) or that never got pip (an interrupted
  # first run) is made again.
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pip' >/dev/null 2>&1; then
    say "creating the Python virtualenv (.venv)"
    rm -rf "$venv"
    _compass_make_venv "$venv" || return 1
  fi
  _compass_install_requirements "$venv/bin/python" "$stamp" \
    "installing Python packages into .venv (${reqs[*]#"$ROOT/"}; a first install takes a few minutes)" \
    "${reqs[@]}" || return 1
  export COMPASS_PYTHON="$venv/bin/python"
}
