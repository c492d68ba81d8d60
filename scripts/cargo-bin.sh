#!/usr/bin/env bash
# Build one of the workspace's binaries and print the path of the executable cargo made,
# wherever CARGO_TARGET_DIR (or a `build.target-dir` setting) puts it. Scripts use this
# instead of spelling `target/PROFILE/NAME`, which is wrong under a custom target dir.
#
# Usage: scripts/cargo-bin.sh [--release] [cargo build flags...] NAME
#   NAME: the binary (`tutti`). Cargo's progress and errors go to stderr; the path is the
#   only line on stdout. Exits non-zero when the build fails or makes no such binary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: scripts/cargo-bin.sh [cargo build flags...] NAME" >&2; exit 2; }
NAME="${*: -1}"
FLAGS=("${@:1:$#-1}")
# The JSON messages name every artifact; the one with an executable and our name is it.
# Diagnostics are rendered to stderr as a plain build would print them.
OUT="$(cd "$ROOT" && cargo build --quiet "${FLAGS[@]}" --bin "$NAME" \
  --message-format=json-render-diagnostics)"
EXE="$(printf '%s\n' "$OUT" | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m.get("target", {}).get("name") == name:
        print(m["executable"])
' "$NAME" | tail -n 1)"
if [ -z "$EXE" ] || [ ! -x "$EXE" ]; then
  echo "scripts/cargo-bin.sh: cargo built no executable named $NAME" >&2
  exit 1
fi
echo "$EXE"
