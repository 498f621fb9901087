# The Python virtualenv for the engine adapters and their tests. Sourced after bin/lib/setup.sh
# (which sets ROOT, say and as_root); defines ensure_python_env.
#
# ensure_python_env makes $ROOT/.venv when missing and installs bin/engines/requirements.txt (and
# python/requirements-dev.txt when it exists) only when those files changed since the last install:
# a stamp inside .venv holds their hash, so later runs download nothing. It exports COMPASS_PYTHON.

# Prints a hash of every requirements file that exists (with its name, so adding one counts).
_compass_requirements_hash() {
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then printf '%s\n' "$f"; cat "$f"; fi
  done | sha256sum | cut -d' ' -f1
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
  local want
  want="$(_compass_requirements_hash "${reqs[@]}")"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python packages into .venv (${reqs[*]#"$ROOT/"}; a first install takes a few minutes)"
    local args=() f
    for f in "${reqs[@]}"; do args+=(-r "$f"); done
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}" >&2; then
      say "pip install failed"
      return 1
    fi
    printf '%s\n' "$want" >"$stamp"
  fi
  export COMPASS_PYTHON="$venv/bin/python"
}
