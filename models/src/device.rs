//! Device and dtype selection from user strings (`auto`, `cpu`, `cuda:N`, `metal`).

use crate::{Error, Result};
use candle_core::{DType, Device};

/// Parses a device spec. `auto` picks CUDA, then Metal, then the CPU; a GPU that is
/// compiled in but cannot be opened (no driver, stub libcuda) falls back to the CPU
/// with a log line rather than failing.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec_l = spec.trim().to_ascii_lowercase();
    match spec_l.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto_device()),
        "metal" => open_metal(spec),
        "cuda" => open_cuda(spec, 0),
        s if s.starts_with("cuda:") => {
            let ordinal = s["cuda:".len()..]
                .parse::<usize>()
                .map_err(|_| Error::Device {
                    spec: spec.to_string(),
                    reason: "expected cuda:N with N a GPU index".into(),
                })?;
            open_cuda(spec, ordinal)
        }
        _ => Err(Error::Device {
            spec: spec.to_string(),
            reason: "expected auto, cpu, cuda, cuda:N or metal".into(),
        }),
    }
}

fn auto_device() -> Device {
    if candle_core::utils::cuda_is_available() {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => eprintln!(
                "tutti: CUDA is compiled in but no GPU could be opened ({}); using the CPU",
                first_line(&e)
            ),
        }
    }
    if candle_core::utils::metal_is_available() {
        match Device::new_metal(0) {
            Ok(d) => return d,
            Err(e) => eprintln!(
                "tutti: Metal is compiled in but could not be opened ({}); using the CPU",
                first_line(&e)
            ),
        }
    }
    Device::Cpu
}

fn open_cuda(spec: &str, ordinal: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Device {
            spec: spec.to_string(),
            reason: "this build has no CUDA support; rebuild with `--features cuda` (see README) or use --device cpu".into(),
        });
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Device {
        spec: spec.to_string(),
        reason: format!("cannot open CUDA device {ordinal}: {}", first_line(&e)),
    })
}

fn open_metal(spec: &str) -> Result<Device> {
    if !candle_core::utils::metal_is_available() {
        return Err(Error::Device {
            spec: spec.to_string(),
            reason: "this build has no Metal support; rebuild with `--features metal` on macOS or use --device cpu".into(),
        });
    }
    Device::new_metal(0).map_err(|e| Error::Device {
        spec: spec.to_string(),
        reason: format!("cannot open the Metal device: {}", first_line(&e)),
    })
}

/// The first line of an error: candle appends a backtrace to device errors when
/// `RUST_BACKTRACE` is set, which does not belong in a one-line message.
pub fn first_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or_default().trim().to_string()
}

/// Parses a dtype; `None` means auto: F32 on the CPU (candle's CPU bf16 matmul is slow),
/// BF16 on GPUs.
pub fn parse_dtype(spec: &str) -> Result<Option<DType>> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(None),
        "f32" | "float32" => Ok(Some(DType::F32)),
        "f16" | "float16" | "half" => Ok(Some(DType::F16)),
        "bf16" | "bfloat16" => Ok(Some(DType::BF16)),
        other => Err(Error::BadDType(other.to_string())),
    }
}

/// The activation dtype used when the user did not choose one.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// A short human name for a device (`cpu`, `cuda:0`, `metal`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_cpu_build_names_the_fix() {
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[test]
    fn dtypes() {
        assert_eq!(parse_dtype("bf16").unwrap(), Some(DType::BF16));
        assert_eq!(parse_dtype("auto").unwrap(), None);
        assert!(parse_dtype("int3").is_err());
    }
}
