#!/usr/bin/env bash
# Build llama-cpp-python (CPU, from its sdist) into .venv-llamacpp and regenerate the
# llama.cpp reference fixtures in tests/fixtures/llamacpp/.
#
# Usage: scripts/llamacpp-reference.sh [--setup-only] [--no-speed] [MODELS_DIR]
#   MODELS_DIR defaults to models-cache/ at the repo root (see scripts/fetch-models.sh).
#
# Environment: LLAMACPP_CMAKE_ARGS overrides the CMake flags (default: plain CPU build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-llamacpp"
LLAMA_CPP_PYTHON_VERSION="0.3.36"

SETUP_ONLY=0
SPEED=1
MODELS_DIR="$ROOT/models-cache"
for arg in "$@"; do
  case "$arg" in
    --setup-only) SETUP_ONLY=1 ;;
    --no-speed) SPEED=0 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg" >&2; exit 2 ;;
    *) MODELS_DIR="$arg" ;;
  esac
done

log() { echo "[llamacpp-reference] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

installed="$("$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)"
if [ "$installed" != "$LLAMA_CPP_PYTHON_VERSION" ]; then
  log "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION from source (CPU; takes a while on few cores)"
  "$PY" -m pip install --upgrade pip >/dev/null
  export CMAKE_ARGS="${LLAMACPP_CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
  log "CMAKE_ARGS=$CMAKE_ARGS"
  nice -n 10 "$PY" -m pip install --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
else
  log "llama-cpp-python $installed already installed in $VENV"
fi

if [ "$SETUP_ONLY" = 1 ]; then
  log "setup done (--setup-only)"
  exit 0
fi

"$ROOT/scripts/fetch-models.sh" "$MODELS_DIR"

args=(--models-dir "$MODELS_DIR" --out-dir "$ROOT/tests/fixtures/llamacpp")
[ "$SPEED" = 1 ] && args+=(--speed)
log "running scripts/llamacpp_reference.py ${args[*]}"
"$PY" "$ROOT/scripts/llamacpp_reference.py" "${args[@]}"
log "done"
