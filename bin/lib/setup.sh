# Shared by the scripts in bin/: install what is missing, build when sources changed.
# Sourced, not run. Sets ROOT to the repository root.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export COMPASS_HOME="$ROOT"

say() { printf '%s\n' "compass: $*" >&2; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root to run: $*  (install it yourself, or install sudo)"; return 1; fi
}

# The C libraries compass links: libzmq (Debian/Ubuntu: libzmq3-dev) and SQLite for the broker's
# journal (libsqlite3-dev), found through pkg-config.
ensure_libzmq() {
  if command -v pkg-config >/dev/null && pkg-config --exists libzmq sqlite3; then return 0; fi
  if ! command -v apt-get >/dev/null; then
    say "libzmq or sqlite3 is missing and this is not a Debian/Ubuntu system: install libzmq and sqlite3 (with headers) and pkg-config"
    return 1
  fi
  say "installing libzmq3-dev, libsqlite3-dev and pkg-config (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libzmq3-dev libsqlite3-dev pkg-config >/dev/null
}

ensure_swift() {
  if ! command -v swift >/dev/null; then
    say "the Swift toolchain (6.0 or newer) is not on PATH: see https://www.swift.org/install/"
    return 1
  fi
}

# Builds with `swift build -c CONFIG` when a binary is missing or any source is newer than it.
ensure_build() {
  local config="$1" marker="$ROOT/.build/$1/compass"
  if [ -x "$marker" ] && [ -z "$(find "$ROOT/Sources" "$ROOT/Package.swift" -newer "$marker" -print -quit)" ]; then
    return 0
  fi
  say "building ($config; the first build takes a few minutes)"
  if ! (cd "$ROOT" && set -o pipefail && swift build -c "$config" 2>&1 | { grep -v "prohibited flag" || true; } >&2); then
    say "build failed"
    return 1
  fi
  touch "$marker" # a no-op rebuild leaves it older than the sources it was checked against
}
