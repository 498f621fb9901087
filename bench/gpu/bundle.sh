#!/usr/bin/env bash
# Builds a release bundle for a GPU machine that has no Swift toolchain and no libzmq:
# one statically linked `compass` binary (also run as compass-broker / compass-worker through
# links), libzmq.so.5 with the libraries it needs that a CUDA image may lack, the Python engine
# adapters, and the GPU scripts. Output: .bundle/compass-bundle.tar.xz (about 20 MB).
#
#   bench/gpu/bundle.sh            # then carry .bundle in a device run and unpack it there
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/.bundle"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
cd "$ROOT"
swift build -c release --static-swift-stdlib --build-path .build-static --product compass 2>&1 | grep -v "prohibited flag" | tail -1
mkdir -p "$STAGE/bin" "$STAGE/lib" "$STAGE/engines" "$STAGE/gpu" "$OUT"
cp .build-static/release/compass "$STAGE/bin/compass"
strip "$STAGE/bin/compass"
ln -s compass "$STAGE/bin/compass-broker"
ln -s compass "$STAGE/bin/compass-worker"
# libzmq and what it pulls in; the C runtime itself (libc, libm, libstdc++, ...) is the target's own.
for lib in $(ldd "$STAGE/bin/compass" | awk '/=> \// {print $3}'); do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*|libresolv.so*) ;;
    *) cp -L "$lib" "$STAGE/lib/" ;;
  esac
done
cp -r bin/engines/. "$STAGE/engines/"
rm -rf "$STAGE/engines/tests" "$STAGE/engines/__pycache__"
cp bench/gpu/*.sh bench/gpu/*.py "$STAGE/gpu/" 2>/dev/null || true
echo "compass $(git rev-parse --short HEAD) built $(date -u +%FT%TZ) on $(uname -srm), $(ldd --version | head -1)" > "$STAGE/BUILD"
tar -C "$STAGE" -cf - . | xz -T2 -6 > "$OUT/compass-bundle.tar.xz"
ls -la "$OUT/compass-bundle.tar.xz"
