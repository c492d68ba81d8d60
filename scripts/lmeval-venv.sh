#!/usr/bin/env bash
# Create .venv-lmeval (git-ignored) with a pinned lm-evaluation-harness (its API extra:
# no torch) and the Hugging Face tokenizer library it counts context tokens with, which
# tests/lm_eval.rs runs against `tutti serve`. Idempotent: an existing venv with the
# pinned versions is kept.
#
# Usage: scripts/lmeval-venv.sh        (PYTHON picks the interpreter; default python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-lmeval"
PYTHON="${PYTHON:-python3}"
LM_EVAL_VERSION="0.4.13"
TRANSFORMERS_VERSION="5.25.0"

have() {
  "$VENV/bin/python" - "$LM_EVAL_VERSION" "$TRANSFORMERS_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("lm_eval"), version("transformers")) == (sys.argv[1], sys.argv[2]) else 1)
PY
}

if [ -x "$VENV/bin/python" ] && have; then
  echo "[lmeval-venv] lm_eval $LM_EVAL_VERSION present in .venv-lmeval"
  exit 0
fi
echo "[lmeval-venv] creating .venv-lmeval with lm_eval[api]==$LM_EVAL_VERSION"
"$PYTHON" -m venv "$VENV" || {
  echo "[lmeval-venv] ERROR: '$PYTHON -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
  exit 1
}
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "lm_eval[api]==$LM_EVAL_VERSION" "transformers==$TRANSFORMERS_VERSION"
have || { echo "[lmeval-venv] ERROR: the pinned versions did not install" >&2; exit 1; }
echo "[lmeval-venv] lm_eval $LM_EVAL_VERSION, transformers $TRANSFORMERS_VERSION"
