#!/usr/bin/env bash
# Build one of llama.cpp's programs (CPU only) from the llama.cpp source vendored in the
# llama-cpp-python 0.3.36 sdist, once, into third_party/llama-server/, and print the
# binary's path on stdout (progress goes to stderr). Idempotent: a second run only prints.
#
# Usage: scripts/llama-server.sh [PROGRAM]
#   PROGRAM: llama-server (default; the remote-member tests use it) or llama-bench
#   (scripts/speed-vs-llamacpp.sh uses it). Both come from one configured build tree.
# Environment: LLAMA_SERVER_JOBS (default 2) parallel compile jobs.
#   LLAMA_CPU=native (default) builds for this CPU (GGML_NATIVE=ON, what users get);
#   LLAMA_CPU=avx2 builds for AVX2/FMA/F16C only (GGML_NATIVE=OFF) into build-avx2/, as a
#   laptop without AVX-512 would run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="0.3.36"
DIR="$ROOT/third_party/llama-server"
PROGRAM="${1:-llama-server}"
case "$PROGRAM" in
  llama-server|llama-bench) ;;
  *) echo "scripts/llama-server.sh: unknown program \`$PROGRAM\`; use llama-server or llama-bench" >&2; exit 2 ;;
esac
CPU_SET="${LLAMA_CPU:-native}"
case "$CPU_SET" in
  native) BUILD="$DIR/build"; CPU_FLAGS=(-DGGML_NATIVE=ON) ;;
  avx2) BUILD="$DIR/build-avx2"
    CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
      -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF) ;;
  *) echo "scripts/llama-server.sh: unknown LLAMA_CPU \`$CPU_SET\`; use native or avx2" >&2; exit 2 ;;
esac
BIN="$BUILD/bin/$PROGRAM"
JOBS="${LLAMA_SERVER_JOBS:-2}"

log() { echo "[llama-server] $*" >&2; }

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$DIR"
# One build at a time: tests that start servers in parallel call this script together.
exec 9>"$DIR/.lock"
flock 9
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
# CMake comes from the Python packaging index (as a wheel) when the system has none.
CMAKE="$(command -v cmake || true)"
if [ -z "$CMAKE" ]; then
  if [ ! -x "$DIR/venv/bin/cmake" ]; then
    log "installing cmake into $DIR/venv"
    python3 -m venv "$DIR/venv"
    "$DIR/venv/bin/python" -m pip install --quiet "cmake>=3.21,<4" >&2
  fi
  CMAKE="$DIR/venv/bin/cmake"
fi

SRC="$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  log "fetching the llama-cpp-python $VERSION sdist"
  # Only this package as source: its build tools come as wheels.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python --dest "$DIR" \
    "llama-cpp-python==$VERSION" >&2
  tar -xzf "$DIR/llama_cpp_python-$VERSION.tar.gz" -C "$DIR"
fi

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  log "configuring (Release, CPU only, $CPU_SET)"
  nice -n 10 "$CMAKE" -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    "${CPU_FLAGS[@]}" -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
fi
log "building target $PROGRAM with $JOBS jobs"
start=$(date +%s)
nice -n 10 "$CMAKE" --build "$BUILD" --target "$PROGRAM" -j "$JOBS" >&2
log "built in $(( $(date +%s) - start ))s"
test -x "$BIN"
echo "$BIN"
