#!/usr/bin/env bash
# The README's first quick-start command: fetch the two demo models and let them decode
# one text together (SmolLM2-135M-Instruct + Gemma-3-270M, different tokenizers).
#
# Usage: scripts/demo.sh ["PROMPT"] [extra tutti generate flags...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/fetch-models.sh >&2
PROMPT="${1:-The capital of France is}"
shift || true
TUTTI="$(scripts/cargo-bin.sh --release tutti)"
exec "$TUTTI" generate \
  -m models-cache/SmolLM2-135M-Instruct.Q4_1.gguf \
  -m models-cache/gemma-3-270m-q4_k_m.gguf \
  --raw --greedy --max-tokens 48 "$@" "$PROMPT"
