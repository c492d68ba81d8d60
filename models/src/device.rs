//! Device and dtype selection: typed specs ([`DeviceSpec`], [`DTypeSpec`]) parsed from
//! the strings users write (`auto`, `cpu`, `cuda:N`, `metal`; `f32`, `bf16`, ...).

use crate::{Error, Result};
use candle_core::{DType, Device};

/// Where a model runs, as a user names it: `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// CUDA, then Metal, then the CPU; a GPU that is compiled in but cannot be opened
    /// (no driver, stub libcuda) falls back to the CPU with a log line.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(spec: &str) -> Result<DeviceSpec> {
        let s = spec.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "metal" => Ok(DeviceSpec::Metal),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| Error::Device {
                    spec: spec.to_string(),
                    reason: "expected cuda:N with N a GPU index".into(),
                }),
                None => Err(Error::Device {
                    spec: spec.to_string(),
                    reason: "expected auto, cpu, cuda, cuda:N or metal".into(),
                }),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => f.write_str("metal"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device; a missing backend or GPU is an error naming the fix (except
    /// under `auto`).
    pub fn open(self) -> Result<Device> {
        let spec = self.to_string();
        match self {
            DeviceSpec::Auto => Ok(auto_device()),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => open_cuda(&spec, n),
            DeviceSpec::Metal => open_metal(&spec),
        }
    }
}

/// Parses and opens a device spec (see [`DeviceSpec`]).
pub fn parse_device(spec: &str) -> Result<Device> {
    spec.parse::<DeviceSpec>()?.open()
}

fn auto_device() -> Device {
    if candle_core::utils::cuda_is_available() {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => tracing::warn!(
                "CUDA is compiled in but no GPU could be opened ({}); using the CPU",
                first_line(&e)
            ),
        }
    }
    if candle_core::utils::metal_is_available() {
        match Device::new_metal(0) {
            Ok(d) => return d,
            Err(e) => tracing::warn!(
                "Metal is compiled in but could not be opened ({}); using the CPU",
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

/// Activation dtype of dense checkpoints as a user names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DTypeSpec {
    /// F32 on the CPU (candle's CPU bf16 matmul is slow), BF16 on GPUs.
    #[default]
    Auto,
    F32,
    F16,
    BF16,
}

impl std::str::FromStr for DTypeSpec {
    type Err = Error;
    fn from_str(spec: &str) -> Result<DTypeSpec> {
        match spec.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DTypeSpec::Auto),
            "f32" | "float32" => Ok(DTypeSpec::F32),
            "f16" | "float16" | "half" => Ok(DTypeSpec::F16),
            "bf16" | "bfloat16" => Ok(DTypeSpec::BF16),
            other => Err(Error::BadDType(other.to_string())),
        }
    }
}

impl std::fmt::Display for DTypeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DTypeSpec::Auto => "auto",
            DTypeSpec::F32 => "f32",
            DTypeSpec::F16 => "f16",
            DTypeSpec::BF16 => "bf16",
        })
    }
}

impl DTypeSpec {
    /// The dtype, `None` for auto (see [`default_dtype`]).
    pub fn dtype(self) -> Option<DType> {
        match self {
            DTypeSpec::Auto => None,
            DTypeSpec::F32 => Some(DType::F32),
            DTypeSpec::F16 => Some(DType::F16),
            DTypeSpec::BF16 => Some(DType::BF16),
        }
    }
}

/// Parses a dtype; `None` means auto.
pub fn parse_dtype(spec: &str) -> Result<Option<DType>> {
    Ok(spec.parse::<DTypeSpec>()?.dtype())
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
