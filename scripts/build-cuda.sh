#!/usr/bin/env bash
# Build a release `tutti` with the `cuda` feature, also on a machine without a GPU.
#
# Usage: scripts/build-cuda.sh [--no-tests] [--no-archive] [--bundle-libs]
#
#   --no-tests     build only the `tutti` binary, not the GPU test binary
#   --no-archive   skip the compressed copy of DIST (see ARCHIVE below)
#   --bundle-libs  copy the CUDA libraries the binary needs into DIST/lib (large: the
#                  cuBLAS libraries alone are ~600 MB; the default is not to copy them)
#
# Toolkit: when `nvcc` is on PATH (or $CUDA_HOME/bin/nvcc exists) and TUTTI_CUDA_WHEELS is
# not 1, that toolkit is used as is. Otherwise the CUDA 13.0 toolchain is fetched once from
# its pip wheels (pinned to the 13.0 line: newer compilers emit PTX that a 580-series
# driver rejects) and unpacked into .whl/cuda-13.0/ at the repository root (ignored by git),
# and a stub libcuda.so (soname libcuda.so.1) is generated from the driver symbol names
# the build references, so the binary links; the real driver library is found at run time.
#
# Environment:
#   CUDA_COMPUTE_CAP   target compute capability (default 90: H100/H200)
#   TUTTI_CUDA_WHEELS  1: always use the wheels; 0: never (fail without a toolkit)
#   CARGO_TARGET_DIR   default target/cuda (keeps the CPU build in target/ untouched)
#   JOBS               cargo -j (default 2)
#   PYTHON             python with pip (default python3), used only to fetch the wheels
#
# Output (DIST = $CARGO_TARGET_DIR/dist):
#   DIST/tutti-cuda      stripped release binary
#   DIST/gpu-tests       stripped test binary of tests/gpu.rs (unless --no-tests)
#   DIST/run.sh          runs a DIST binary with LD_LIBRARY_PATH pointing at the CUDA
#                        libraries it finds (DIST/lib, a CUDA toolkit, pip's nvidia/cu13)
#   DIST/MANIFEST.txt    toolkit, sizes, the shared libraries each binary needs
#   DIST/smollm2-tokenizer.json  default tokenizer of `bench speed`'s random members
#   ARCHIVE = $CARGO_TARGET_DIR/carry/tutti-cuda-dist.tar.xz: DIST compressed (the
#                        binaries are mostly GPU code and compress ~7x), for moving
#                        to a GPU machine; unpack at the repository root with
#                        `tar -xJf target/cuda/carry/tutti-cuda-dist.tar.xz`
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "[build-cuda] $*"; }
die() { echo "[build-cuda] ERROR: $*" >&2; exit 1; }

BUILD_TESTS=1
BUNDLE_LIBS=0
ARCHIVE=1
for arg in "$@"; do
  case "$arg" in
    --no-tests) BUILD_TESTS=0 ;;
    --no-archive) ARCHIVE=0 ;;
    --bundle-libs) BUNDLE_LIBS=1 ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# The caller's own target dir (or none), for the CPU-side helper scripts below: they
# build a debug `tutti`, which belongs with the CPU build rather than in the CUDA dir.
CALLER_TARGET_DIR="${CARGO_TARGET_DIR-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cuda}"
DIST="$CARGO_TARGET_DIR/dist"
WHL="$ROOT/.whl/cuda-13.0"
LINKDIR="$CARGO_TARGET_DIR/cuda-link"   # libX.so names for the linker (+ the stub libcuda)

# The 13.0 line of every wheel. Versions are the last 13.0 releases (cuRAND numbers its
# releases 10.4.x; 10.4.0 ships with CUDA 13.0).
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)

find_system_nvcc() {
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    echo "$CUDA_HOME/bin/nvcc"
  elif command -v nvcc >/dev/null 2>&1; then
    command -v nvcc
  fi
}

MODE=""
NVCC=""
if [ "${TUTTI_CUDA_WHEELS:-}" != "1" ]; then
  NVCC="$(find_system_nvcc || true)"
  [ -n "$NVCC" ] && MODE=system
fi
if [ -z "$MODE" ]; then
  [ "${TUTTI_CUDA_WHEELS:-}" = "0" ] && die "no nvcc found and TUTTI_CUDA_WHEELS=0"
  MODE=wheels
fi

if [ "$MODE" = wheels ]; then
  command -v unzip >/dev/null 2>&1 || die "unzip not found"
  if [ ! -f "$WHL/.unpacked" ]; then
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' is not available"
    log "fetching the CUDA 13.0 wheels into $WHL/dl"
    mkdir -p "$WHL/dl"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
      -d "$WHL/dl" "${WHEELS[@]}"
    rm -rf "$WHL/root"
    mkdir -p "$WHL/root"
    for w in "$WHL"/dl/*.whl; do unzip -qo "$w" -d "$WHL/root"; done
    touch "$WHL/.unpacked"
  fi
  export CUDA_HOME="$WHL/root/nvidia/cu13"
  NVCC="$CUDA_HOME/bin/nvcc"
  [ -x "$NVCC" ] || die "nvcc missing in $CUDA_HOME"
  CUDA_LIBDIR="$CUDA_HOME/lib"
  # The wheels are 13.0: tell cudarc directly (its own probe parses `nvcc --version`).
  export CUDARC_CUDA_VERSION=13000
else
  export CUDA_HOME="${CUDA_HOME:-$(cd "$(dirname "$NVCC")/.." && pwd)}"
  CUDA_LIBDIR=""
  for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib"; do
    if [ -d "$d" ]; then CUDA_LIBDIR="$d"; break; fi
  done
  [ -n "$CUDA_LIBDIR" ] || die "no lib64/ under $CUDA_HOME"
fi
export PATH="$CUDA_HOME/bin:$PATH"
export NVCC
NVCC_VERSION="$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -1)"
log "toolkit: $MODE, nvcc $NVCC_VERSION at $NVCC; compute capability $CUDA_COMPUTE_CAP"

# Linker names. The wheels only ship versioned sonames (libcublas.so.13): point the
# unversioned names the linker looks for at them.
mkdir -p "$LINKDIR"
for lib in cublas cublasLt curand cudart nvrtc; do
  real="$(ls "$CUDA_LIBDIR"/lib$lib.so.[0-9]* 2>/dev/null | grep -v '\.alt\.' | sort | head -1 || true)"
  [ -n "$real" ] || real="$(ls "$CUDA_LIBDIR"/lib$lib.so 2>/dev/null || true)"
  [ -n "$real" ] || die "lib$lib.so not found in $CUDA_LIBDIR"
  ln -sf "$real" "$LINKDIR/lib$lib.so"
done

# libcuda: the real one (a machine with a driver), the toolkit's stub, or our own stub.
have_libcuda() { ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; }
if have_libcuda; then
  log "linking against the installed driver's libcuda.so.1"
  rm -f "$LINKDIR/libcuda.so"
elif [ -f "$CUDA_HOME/lib64/stubs/libcuda.so" ]; then
  log "linking against the toolkit's stub libcuda.so"
  ln -sf "$CUDA_HOME/lib64/stubs/libcuda.so" "$LINKDIR/libcuda.so"
else
  log "generating a stub libcuda.so (soname libcuda.so.1) from cudarc's driver symbols"
  CUDARC_SRC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort | tail -1 || true)"
  if [ -z "$CUDARC_SRC" ]; then
    cargo fetch --quiet
    CUDARC_SRC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort | tail -1)"
  fi
  STUB_C="$LINKDIR/cuda_stub.c"
  {
    echo "/* Generated by scripts/build-cuda.sh: every driver entry point fails with"
    echo "   CUDA_ERROR_UNKNOWN (999). Only for linking; the real libcuda.so.1 is used at run time. */"
    grep -ohE '\bfn cu[A-Za-z0-9_]+' "$CUDARC_SRC/src/driver/sys/mod.rs" \
      | sed 's/^fn //' | sort -u | sed 's/.*/int &(void) { return 999; }/'
  } >"$STUB_C"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINKDIR/libcuda.so" "$STUB_C"
  ln -sf libcuda.so "$LINKDIR/libcuda.so.1"
  log "stub: $(grep -c return "$STUB_C") symbols"
fi

# The linker finds the libraries through LIBRARY_PATH. RUSTFLAGS is left alone on
# purpose: setting it would replace the target flags of .cargo/config.toml. At run time
# DIST/run.sh puts the libraries on LD_LIBRARY_PATH.
export LIBRARY_PATH="$LINKDIR${LIBRARY_PATH:+:$LIBRARY_PATH}"

START=$(date +%s)
log "cargo build --release --features cuda (target dir $CARGO_TARGET_DIR, -j $JOBS)"
cargo build --release --features cuda -j "$JOBS" --bin tutti
mkdir -p "$DIST"
strip -o "$DIST/tutti-cuda" "$CARGO_TARGET_DIR/release/tutti"

if [ "$BUILD_TESTS" = 1 ]; then
  log "cargo test --release --features cuda --no-run --test gpu"
  TEST_BIN="$(cargo test --release --features cuda -j "$JOBS" --no-run --test gpu \
      --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
  [ -n "$TEST_BIN" ] || die "could not build the gpu test binary (run the cargo test command above to see why)"
  strip -o "$DIST/gpu-tests" "$TEST_BIN"
fi
END=$(date +%s)

# Which shared libraries do the binaries need, and where are they here?
needed() { readelf -d "$1" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'; }
LIBS="$(for b in "$DIST"/tutti-cuda "$DIST"/gpu-tests; do [ -f "$b" ] && needed "$b"; done \
  | sort -u | grep -E '^lib(cu|nv)' | grep -v '^libcuda\.so' || true)"
if [ "$BUNDLE_LIBS" = 1 ]; then
  mkdir -p "$DIST/lib"
  for l in $LIBS; do
    cp -L "$CUDA_LIBDIR/$l" "$DIST/lib/$l"
    # cuBLAS loads cuBLASLt by soname.
    [ "$l" = libcublas.so.13 ] && cp -L "$CUDA_LIBDIR/libcublasLt.so.13" "$DIST/lib/"
  done
fi

# SmolLM2's tokenizer: the default shared tokenizer of `bench speed`'s random members
# (found there by the binaries when run from the repository root).
t="$ROOT/models-cache/tokenizers/smollm2/tokenizer.json"
if [ ! -f "$t" ]; then
  log "fetching the demo models and tokenizers (SmolLM2's tokenizer comes from its GGUF)"
  # With the caller's target dir: the export builds a CPU `tutti` (debug), not the CUDA one.
  (
    if [ -n "$CALLER_TARGET_DIR" ]; then export CARGO_TARGET_DIR="$CALLER_TARGET_DIR"; else unset CARGO_TARGET_DIR; fi
    unset CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION
    "$ROOT/scripts/fetch-models.sh" >&2
    "$ROOT/scripts/fetch-tokenizers.sh" >&2
  ) || die "fetching the tokenizer of bench speed's random members failed (log above)"
fi
[ -f "$t" ] || die "$t is missing after scripts/fetch-tokenizers.sh"
cp "$t" "$DIST/smollm2-tokenizer.json"

cat >"$DIST/run.sh" <<'EOF'
#!/usr/bin/env bash
# Runs a binary of this folder with the CUDA libraries it needs on LD_LIBRARY_PATH:
# ./lib beside this script, else the first folder holding libcublasLt.so.13 among a CUDA
# toolkit's lib64 and the pip `nvidia/cu13/lib` folders of any python3 on PATH.
# Usage: run.sh tutti-cuda info      run.sh gpu-tests --test-threads 1
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$1"; shift
[ -x "$HERE/$bin" ] && bin="$HERE/$bin"
dirs=()
[ -d "$HERE/lib" ] && dirs+=("$HERE/lib")
for d in ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 - 2>/dev/null <<'PY'
import glob, site, sys
roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
for r in roots:
    for d in glob.glob(r + "/nvidia/cu13/lib") + glob.glob(r + "/nvidia/*/lib"):
        print(d)
PY
); do
  if ls "$d"/libcublasLt.so.13 "$d"/libcurand.so.10 "$d"/libcudart.so.13 >/dev/null 2>&1; then
    dirs+=("$d")
  fi
done
# Each needed library from the first folder that has it.
extra=""
for d in "${dirs[@]}"; do extra="$extra:$d"; done
export LD_LIBRARY_PATH="${extra#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$bin" "$@"
EOF
chmod +x "$DIST/run.sh"

{
  echo "toolkit: $MODE, nvcc $NVCC_VERSION"
  echo "compute capability: $CUDA_COMPUTE_CAP"
  echo "build seconds: $((END - START))"
  for b in "$DIST"/tutti-cuda "$DIST"/gpu-tests; do
    [ -f "$b" ] || continue
    echo "$(basename "$b"): $(stat -c %s "$b") bytes; needs: $(needed "$b" | tr '\n' ' ')"
  done
  echo "CUDA libraries needed at run time (sizes here):"
  for l in $LIBS libcublasLt.so.13; do
    [ -e "$CUDA_LIBDIR/$l" ] && echo "  $l $(stat -L -c %s "$CUDA_LIBDIR/$l") bytes"
  done
} >"$DIST/MANIFEST.txt"
if [ "$ARCHIVE" = 1 ]; then
  mkdir -p "$CARGO_TARGET_DIR/carry"
  ARCHIVE_FILE="$CARGO_TARGET_DIR/carry/tutti-cuda-dist.tar.xz"
  log "compressing $DIST into $ARCHIVE_FILE"
  # Paths inside the archive are relative to the repository root.
  tar -C "$ROOT" -cf - "$(realpath --relative-to="$ROOT" "$DIST")" | xz -T"$JOBS" -6 >"$ARCHIVE_FILE"
  echo "archive: $ARCHIVE_FILE $(stat -c %s "$ARCHIVE_FILE") bytes" >>"$DIST/MANIFEST.txt"
fi
cat "$DIST/MANIFEST.txt"
log "done in $((END - START)) s: $DIST"
