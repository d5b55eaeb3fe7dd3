//! Device and compute-dtype selection (`cpu`, `cuda:N`, `auto`; `f32`, `f16`, `bf16`).
//!
//! CUDA is behind the `cuda` cargo feature; without it, asking for `cuda:N` is a clear error
//! rather than candle's generic "not compiled" message, and `auto` means CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use super::ModelError;

/// Where a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
    /// CUDA device 0 when built with `cuda` and a device is present, else the CPU.
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(ModelError::Device {
                    device: s.to_string(),
                    reason: "expected `cpu`, `cuda:N` or `auto`".into(),
                }),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    pub fn open(self) -> Result<Device, ModelError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            // `cuda_is_available` only says the feature is compiled in; whether a GPU is there
            // shows when opening it, and `auto` means the CPU when none is.
            Self::Auto if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() => {
                let device = Device::new_cuda(0).unwrap_or(Device::Cpu);
                prime_kernels(&device);
                Ok(device)
            }
            Self::Auto => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !cfg!(feature = "cuda") {
                    return Err(ModelError::Device {
                        device: self.to_string(),
                        reason: "this hubsweep was built without CUDA support; rebuild with `--features cuda`"
                            .into(),
                    });
                }
                let device = Device::new_cuda(ordinal).map_err(|e| ModelError::Device {
                    device: self.to_string(),
                    reason: e.to_string(),
                })?;
                prime_kernels(&device);
                Ok(device)
            }
        }
    }
}

/// Has the driver compile candle's CUDA kernels for this GPU, several modules at once, when
/// the device is opened.
///
/// candle ships its kernels as PTX and loads a module the first time one of its kernels runs;
/// loading PTX has the driver compile it for the GPU at hand. For the eight modules a forward
/// pass uses that is ~11 s of `ptxas`, one module after another (measured here with CUDA 13's
/// `ptxas -arch=sm_90`: `binary` alone 5.4 s), inside the first forward pass. The driver keeps
/// what it compiles in its JIT cache (`~/.nv/ComputeCache`, or `CUDA_CACHE_PATH`), so
/// compiling them here in parallel, bounded by the largest, makes candle's own loads cache
/// hits; on later runs on the same machine everything is a cache hit (milliseconds). The
/// threads are joined here: none may be inside the driver when the process exits. With the
/// cache switched off (`CUDA_CACHE_DISABLE=1`, read by the driver, not here) this adds the
/// parallel compile (bounded by `binary`) before candle's own. Nothing depends on it: a
/// failure is ignored and candle compiles what it needs itself.
#[cfg(feature = "cuda")]
fn prime_kernels(device: &Device) {
    use candle_core::cuda::cudarc::nvrtc::Ptx;
    use candle_core::cuda::kernels;
    let Device::Cuda(cuda) = device else {
        return;
    };
    let context = cuda.cuda_stream().context().clone();
    std::thread::scope(|scope| {
        for module in [
            kernels::BINARY,
            kernels::INDEXING,
            kernels::UNARY,
            kernels::REDUCE,
            kernels::CAST,
            kernels::TERNARY,
            kernels::FILL,
            kernels::AFFINE,
        ] {
            let context = &context;
            let spawned = std::thread::Builder::new()
                .name("cuda-jit".into())
                .spawn_scoped(scope, move || {
                    drop(context.load_module(Ptx::from_src(module.ptx())))
                });
            if spawned.is_err() {
                return;
            }
        }
    });
}

#[cfg(not(feature = "cuda"))]
fn prime_kernels(_: &Device) {}

/// The dtype activations are computed in. Norms and softmax always run in f32 internally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComputeDtype {
    /// 32-bit float (the reference-parity setting).
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl ComputeDtype {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The spelling used on the command line and in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

impl FromStr for ComputeDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown dtype `{other}` (expected `f32`, `f16` or `bf16`)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!(DeviceSpec::Auto.open().is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let err = DeviceSpec::Cuda(0).open().unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
