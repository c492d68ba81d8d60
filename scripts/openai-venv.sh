#!/usr/bin/env bash
# Create .venv-openai (git-ignored) with the pinned official `openai` Python SDK, which
# tests/openai_sdk.rs runs against `tutti serve`. Idempotent: an existing venv with the
# pinned version is kept.
#
# Usage: scripts/openai-venv.sh        (PYTHON picks the interpreter; default python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-openai"
PYTHON="${PYTHON:-python3}"
OPENAI_VERSION="3.51.0"

if [ -x "$VENV/bin/python" ] &&
  [ "$("$VENV/bin/python" -c 'import openai; print(openai.__version__)' 2>/dev/null)" = "$OPENAI_VERSION" ]; then
  echo "[openai-venv] openai $OPENAI_VERSION present in .venv-openai"
  exit 0
fi
echo "[openai-venv] creating .venv-openai with openai==$OPENAI_VERSION"
"$PYTHON" -m venv "$VENV" || {
  echo "[openai-venv] ERROR: '$PYTHON -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
  exit 1
}
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
"$VENV/bin/python" -c 'import openai; print("[openai-venv] openai", openai.__version__)'
