#!/usr/bin/env bash
# tutti against llama.cpp on the same GGUF files, interleaved: prefill tokens/s and decode
# ms/token of both, with the ratio (see scripts/speed_vs_llamacpp.py for the method).
#
# Usage: scripts/speed-vs-llamacpp.sh [--threads 1,2] [--repeats 3] [--prompt 512]
#          [--decode 64] [--ensemble] [--out FILE] [GGUF...]
#   GGUF defaults to the two demo models (scripts/fetch-models.sh fetches them); --ensemble
#   also times them as an ensemble against the sum of their own times.
# Builds tutti (release) and llama.cpp's llama-bench (scripts/llama-server.sh) first.
# Run it on an otherwise idle machine: both programs use every thread they are given.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ARGS=()
MODELS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --threads|--repeats|--prompt|--decode|--out) ARGS+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --ensemble) ARGS+=("$1"); shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) MODELS+=("$1"); shift ;;
  esac
done
if [ ${#MODELS[@]} -eq 0 ]; then
  scripts/fetch-models.sh >&2
  MODELS=(models-cache/SmolLM2-135M-Instruct.Q4_1.gguf models-cache/gemma-3-270m-q4_k_m.gguf)
fi

echo "[speed] building tutti (release)" >&2
TUTTI="$(scripts/cargo-bin.sh --release tutti)"
LLAMA_BENCH="$(scripts/llama-server.sh llama-bench)"
exec python3 scripts/speed_vs_llamacpp.py --tutti "$TUTTI" \
  --llama-bench "$LLAMA_BENCH" "${ARGS[@]}" "${MODELS[@]}"
