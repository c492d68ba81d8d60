#!/usr/bin/env bash
# Checks that the scripts which build `tutti` and then run it find the binary cargo made
# under a custom CARGO_TARGET_DIR: fetch-tokenizers.sh exports SmolLM2's tokenizer from its
# GGUF into a scratch folder with CARGO_TARGET_DIR pointing at another path (a link to
# this checkout's target/, so nothing is rebuilt), and the export must match the one in
# models-cache/. Needs scripts/fetch-models.sh and scripts/fetch-tokenizers.sh first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SMOL=models-cache/SmolLM2-135M-Instruct.Q4_1.gguf
WANT=models-cache/tokenizers/smollm2/tokenizer.json
for f in "$SMOL" "$WANT"; do
  [ -f "$f" ] || { echo "[check-target-dir] $f is missing: run scripts/fetch-models.sh and scripts/fetch-tokenizers.sh" >&2; exit 1; }
done
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tutti-target-dir.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
mkdir -p target "$TMP/models/tokenizers"
ln -s "$ROOT/target" "$TMP/elsewhere"
ln -s "$ROOT/$SMOL" "$TMP/models/"
# Only SmolLM2's is missing there: the others are copied, so nothing is fetched.
for name in llama3 qwen3 gemma3 gpt2; do
  cp -r "models-cache/tokenizers/$name" "$TMP/models/tokenizers/"
done
CARGO_TARGET_DIR="$TMP/elsewhere" scripts/fetch-tokenizers.sh "$TMP/models" >"$TMP/log" 2>&1 ||
  { cat "$TMP/log" >&2; echo "[check-target-dir] fetch-tokenizers.sh failed under a custom CARGO_TARGET_DIR" >&2; exit 1; }
grep -q "running $TMP/elsewhere/debug/tutti" "$TMP/log" ||
  { cat "$TMP/log" >&2; echo "[check-target-dir] fetch-tokenizers.sh did not run the binary under CARGO_TARGET_DIR" >&2; exit 1; }
cmp -s "$TMP/models/tokenizers/smollm2/tokenizer.json" "$WANT" ||
  { echo "[check-target-dir] the export differs from $WANT" >&2; exit 1; }
echo "[check-target-dir] fetch-tokenizers.sh found tutti under a custom CARGO_TARGET_DIR"
