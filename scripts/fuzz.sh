#!/usr/bin/env bash
# Runs one fuzz target for a while: scripts/fuzz.sh TARGET [SECONDS] [-- LIBFUZZER FLAGS]
#
# TARGET is a file name in fuzz/fuzz_targets/ without `.rs` (`scripts/fuzz.sh list`
# lists them). Installs cargo-fuzz when missing and uses the nightly toolchain when one
# is installed, else stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags).
# The run starts from the committed seeds (fuzz/corpus/TARGET) and regressions
# (fuzz/regressions/TARGET) and keeps what it finds in fuzz/target/corpus/TARGET
# (ignored by git); a crashing input lands in fuzz/artifacts/TARGET/. After fixing one,
# copy it into fuzz/regressions/TARGET/ so every test run replays it.
#
# FUZZ_SANITIZER (default `none`): the code under test is safe Rust, so the findings
# that matter are panics, overflows (debug assertions are on), hangs and runaway
# allocations, which libFuzzer catches by itself at about twice the speed;
# `FUZZ_SANITIZER=address` adds AddressSanitizer for the unsafe code in dependencies.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

TARGETS=$(ls fuzz_targets | sed 's/\.rs$//')
TARGET="${1:-}"
if [ -z "$TARGET" ] || [ "$TARGET" = list ]; then
  echo "usage: scripts/fuzz.sh TARGET [SECONDS] [-- LIBFUZZER FLAGS]; targets:" >&2
  echo "$TARGETS" | sed 's/^/  /' >&2
  [ "$TARGET" = list ] && exit 0 || exit 2
fi
if ! echo "$TARGETS" | grep -qx "$TARGET"; then
  echo "scripts/fuzz.sh: no fuzz target \`$TARGET\`; targets: $(echo $TARGETS)" >&2
  exit 2
fi
DURATION="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))
[ "${1:-}" = "--" ] && shift

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
TOOLCHAIN=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  TOOLCHAIN=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

# The same dependency versions as the main build (the fuzz workspace's own lock file is
# ignored by git and starts as a copy of the main one).
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock

WORK="target/corpus/$TARGET"
mkdir -p "$WORK"
DIRS=("$WORK" "corpus/$TARGET")
[ -d "regressions/$TARGET" ] && DIRS+=("regressions/$TARGET")

echo "[fuzz] $TARGET for ${DURATION}s (sanitizer ${FUZZ_SANITIZER:-none})" >&2
# -rss_limit_mb: an input that makes a loader allocate past 2 GiB is a finding.
# -timeout: one input running past 10 s is a hang.
cargo "${TOOLCHAIN[@]}" fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" "$TARGET" "${DIRS[@]}" -- \
  -max_total_time="$DURATION" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$@"
