//! Where and in what precision the denoisers run: `--device cpu | cuda | cuda:N` and `--dtype f32 | f16 | bf16`
//! (`vadapt augment`, `vadapt bench`).
//!
//! CUDA needs a build with the `cuda` cargo feature (candle's CUDA backend); a build without it refuses `cuda` with
//! the command that adds it, rather than falling back to the CPU behind the user's back. The dtype is the UNets' and
//! VAEs' weights and compute; samplers, composition and text embeddings stay F32 (the UNet returns F32). On CPU, F32
//! is the fast path (our fused kernels); F16 works but is slow there and BF16 has no CPU matmul in candle.

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Location, Result};

/// The device a run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// CUDA device ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{s:?}: expected cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Open the device: an error naming `--device` when this build or machine cannot.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(Error::unsupported(
                        Location::none().field("--device"),
                        format!(
                            "{self}: this vadapt was built without CUDA; build it with \
                             `cargo build --release --features cuda`"
                        ),
                    ));
                }
                Device::new_cuda(n).map_err(|e| {
                    Error::unsupported(Location::none().field("--device"), format!("{self}: {e}"))
                })
            }
        }
    }
}

/// Precision of the denoisers' weights and compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("{s:?}: expected f32, f16 or bf16")),
        }
    }
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// Device and precision together, as a run carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compute {
    pub device: DeviceSpec,
    pub precision: Precision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_cuda_is_refused_without_the_feature() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().contains("cuda:N"));
        assert_eq!(
            "f16".parse::<Precision>().map(Precision::dtype),
            Ok(DType::F16)
        );
        assert!("fp8".parse::<Precision>().is_err());
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        if !cfg!(feature = "cuda") {
            let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(
                e.contains("--features cuda") && e.contains("--device"),
                "{e}"
            );
        }
    }
}
