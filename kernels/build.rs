//! Under the `cuda` feature, compiles `src/cuda/topk.cu` to PTX with nvcc; the PTX is
//! embedded in the library and loaded on the device at the first call. Without the
//! feature this does nothing, so CPU builds need no CUDA toolkit.
//!
//! nvcc: `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on PATH. Target: the virtual
//! architecture `compute_$CUDA_COMPUTE_CAP` (e.g. 90 or 90a), else the first GPU that
//! `nvidia-smi` reports, else 80 (the PTX is JIT-compiled for newer GPUs by the driver).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cuda/topk.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = env::var("NVCC")
        .ok()
        .or_else(|| {
            env::var("CUDA_HOME")
                .ok()
                .map(|h| PathBuf::from(h).join("bin").join("nvcc"))
                .filter(|p| p.exists())
                .map(|p| p.display().to_string())
        })
        .unwrap_or_else(|| "nvcc".to_string());
    let cap = env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|c| c.trim().replace('.', ""))
        .filter(|c| !c.is_empty())
        .or_else(gpu_compute_cap)
        .unwrap_or_else(|| "80".to_string());
    let ptx = out_dir.join("topk.ptx");
    let status = Command::new(&nvcc)
        .args([
            "--ptx",
            &format!("--gpu-architecture=compute_{cap}"),
            "-O3",
            "-std=c++17",
            "-o",
        ])
        .arg(&ptx)
        .arg("src/cuda/topk.cu")
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run nvcc ({nvcc}): {e}; the `cuda` feature needs a CUDA toolkit (see scripts/build-cuda.sh)")
        });
    if !status.success() {
        panic!("nvcc failed on src/cuda/topk.cu ({status})");
    }
}

/// Compute capability of the first GPU, as `nvidia-smi` reports it ("9.0" -> "90").
fn gpu_compute_cap() -> Option<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let cap = text.lines().next()?.trim().replace('.', "");
    (!cap.is_empty() && cap.chars().all(|c| c.is_ascii_digit())).then_some(cap)
}
