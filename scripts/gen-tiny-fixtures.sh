#!/usr/bin/env bash
# Regenerate tests/fixtures/tiny/: tiny random transformers models + reference logits.
#
# Usage: scripts/gen-tiny-fixtures.sh [extra args for gen_tiny_fixtures.py, e.g. --only qwen3]
#
# Creates .venv-hf at the repo root (git-ignored) with torch + transformers from PyPI.
# PyPI's Linux x86_64 torch wheel depends on the CUDA runtime wheels (nvidia-*, cuda-*,
# triton): `import torch` refuses to start without them even on a CPU-only machine, so they
# are installed too. Measured: ~3.0 GB downloaded, ~5.6 GB on disk, ~2 min. The fixtures
# themselves need only the CPU.
# Tokenizers come from models-cache/tokenizers (scripts/fetch-tokenizers.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-hf"
TORCH_VERSION="2.15.0"
TRANSFORMERS_VERSION="5.23.0"
SAFETENSORS_VERSION="0.8.0"
TOKENIZERS_VERSION="0.23.3"

log() { echo "[gen-tiny-fixtures] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

have="$("$PY" -c 'import torch, transformers, safetensors, tokenizers; print(torch.__version__.split("+")[0], transformers.__version__)' 2>/dev/null || true)"
if [ "$have" != "$TORCH_VERSION $TRANSFORMERS_VERSION" ]; then
  log "installing torch==$TORCH_VERSION transformers==$TRANSFORMERS_VERSION (large download)"
  "$PY" -m pip install --quiet --upgrade pip
  nice -n 10 "$PY" -m pip install --progress-bar off \
    "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" \
    "safetensors==$SAFETENSORS_VERSION" "tokenizers==$TOKENIZERS_VERSION" numpy
else
  log "torch/transformers already installed in $VENV ($have)"
fi

if [ ! -f "$ROOT/models-cache/tokenizers/llama3/tokenizer.json" ]; then
  "$ROOT/scripts/fetch-tokenizers.sh"
fi

log "running scripts/gen_tiny_fixtures.py $*"
nice -n 5 "$PY" "$ROOT/scripts/gen_tiny_fixtures.py" "$@"
du -sh "$ROOT/tests/fixtures/tiny"
