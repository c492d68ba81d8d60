#!/usr/bin/env bash
# The project's test command (the README's second quick-start command; CI runs it).
#
# Fetches what the tests need (the two demo GGUF models, the real tokenizers, a venv
# with the pinned openai SDK and a llama-server build, all idempotent), checks
# formatting, lints, docs and the engine-only build, then runs every test of the
# workspace. Nothing is skipped: a test whose asset is missing fails and names the
# script that fetches it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

echo "[test] fetching demo models and tokenizers"
scripts/fetch-models.sh
scripts/fetch-tokenizers.sh
echo "[test] the openai SDK venv for the server tests"
scripts/openai-venv.sh
echo "[test] llama.cpp's llama-server for the served-member tests (built once)"
scripts/llama-server.sh >/dev/null

echo "[test] cargo fmt --check"
cargo fmt --all -- --check

echo "[test] cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "[test] cargo doc --no-deps (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "[test] the engine alone builds (no command line, no bench harness, no server)"
cargo check --lib --no-default-features --quiet
echo "[test] the engine with the embeddable server builds"
cargo check --lib --no-default-features --features serve --quiet

echo "[test] cargo test --workspace"
cargo test --workspace --all-targets "$@"
