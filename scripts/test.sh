#!/usr/bin/env bash
# The project's test command (the README's second quick-start command; CI runs it).
#
# Fetches what the tests need (the two demo GGUF models, the real tokenizers, a venv
# with the pinned openai SDK, Chromium and a llama-server build, all idempotent), checks
# formatting, lints, docs and the engine-only build, then runs every test of the
# workspace. Nothing is skipped: a test whose asset is missing fails and names the
# script that fetches it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
# Each phase is logged with the seconds since the start, so a slow run shows where.
phase() { echo "[test] +$(( $(date +%s) - START ))s $*"; }

# llama-server (C++, minutes on a cold machine) builds at low priority while the fetches
# and the cargo builds run: it fills the cores cargo leaves idle.
mkdir -p target
LLAMA_LOG="target/llama-server-build.log"
phase "building llama.cpp's llama-server in the background (once; log: $LLAMA_LOG)"
# In a session of its own, so that an early exit stops the whole build (cmake, make, cc).
setsid scripts/llama-server.sh >/dev/null 2>"$LLAMA_LOG" &
LLAMA_BUILD=$!
trap 'kill -- -"$LLAMA_BUILD" 2>/dev/null || true' EXIT

phase "fetching demo models and tokenizers"
scripts/fetch-models.sh
scripts/fetch-tokenizers.sh
phase "scripts find the binary they build under a custom CARGO_TARGET_DIR"
scripts/check-target-dir.sh
phase "the openai SDK venv for the server tests"
scripts/openai-venv.sh
phase "the lm-evaluation-harness venv for the scoring test"
scripts/lmeval-venv.sh
phase "Chromium for the web view's browser tests (installed when missing)"
TUTTI_CHROMIUM="$(scripts/chromium.sh)"
export TUTTI_CHROMIUM

phase "cargo fmt --check"
cargo fmt --all -- --check

phase "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --features tutti/fuzz -- -D warnings

phase "cargo doc --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

phase "the engine alone builds (no command line, no bench harness, no server)"
cargo check --lib --no-default-features --quiet
phase "the engine with the embeddable server builds"
cargo check --lib --no-default-features --features serve --quiet

phase "cargo test --workspace --no-run (building the tests)"
cargo test --workspace --all-targets --features tutti/fuzz --no-run --quiet
phase "waiting for the llama-server build"
if ! wait "$LLAMA_BUILD"; then
  tail -n 40 "$LLAMA_LOG"
  echo "[test] scripts/llama-server.sh failed (log above, whole in $LLAMA_LOG)" >&2
  exit 1
fi

phase "cargo test --workspace"
# Every target runs even when one fails, so that one run shows every failure; the exit
# status stays non-zero.
FAIL_FAST=(--no-fail-fast)
for a in "$@"; do [ "$a" = --no-fail-fast ] && FAIL_FAST=(); done
STATUS=0
cargo test --workspace --all-targets --features tutti/fuzz "${FAIL_FAST[@]}" "$@" || STATUS=$?
phase "cargo test --doc (docs/library.md's example runs here)"
cargo test --workspace --doc --features tutti/fuzz || STATUS=$?
# The tests above ran on the best CPU kernel set this machine has (`tutti info` names
# it); the lower sets it can also run (TUTTI_KERNELS) must give llama.cpp's logits and
# batch invariance as well.
FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true) "
LOWER=()
if [[ "$FLAGS" == *" avx512f "* && "$FLAGS" == *" avx512bw "* && "$FLAGS" == *" avx512vl "* ]]; then
  LOWER=(avx2)
  [[ "$FLAGS" == *" avx512_vnni "* ]] && LOWER+=(avx512)
fi
for SET in "${LOWER[@]}"; do
  phase "llama.cpp parity and batch invariance on the $SET kernel set"
  # The workspace's features, so that the test binaries built above are reused.
  TUTTI_KERNELS="$SET" cargo test --workspace --features tutti/fuzz \
    --test llamacpp_parity --test batch_invariance || STATUS=$?
done
[ "$STATUS" = 0 ] || exit "$STATUS"
phase "every check and test passed"
