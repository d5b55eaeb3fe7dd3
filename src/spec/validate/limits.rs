//! `limits:` sizes and `compute:` settings.

use super::*;

pub(super) fn size(
    path: &str,
    text: Option<&String>,
    default: u64,
    d: &mut Vec<Diagnostic>,
) -> u64 {
    let Some(text) = text else { return default };
    match parse_size(text) {
        Ok(0) => {
            d.push(Diagnostic::error(path, "size must be more than 0 bytes"));
            default
        }
        Ok(bytes) => bytes,
        Err(err) => {
            let mut e = Diagnostic::error(path, err.to_string());
            e = match &err {
                SizeError::UnknownUnit { suggestion: Some(s), .. } => e.with_help(format!("did you mean `{s}`? units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB")),
                _ => e.with_help("units: B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)"),
            };
            d.push(e);
            default
        }
    }
}

pub(super) fn limits(raw: Option<&RawLimits>, d: &mut Vec<Diagnostic>) -> Limits {
    let memory = size(
        "/limits/memory",
        raw.and_then(|l| l.memory.as_ref()),
        DEFAULT_MEMORY,
        d,
    );
    let artifact_bytes = size(
        "/limits/artifact_bytes",
        raw.and_then(|l| l.artifact_bytes.as_ref()),
        DEFAULT_ARTIFACT_BYTES,
        d,
    );
    if artifact_bytes > memory {
        d.push(
            Diagnostic::error("/limits/artifact_bytes", "`artifact_bytes` is larger than the `memory` budget")
                .with_help("an artifact is held in memory until uploaded: make `memory` at least twice `artifact_bytes`"),
        );
    }
    Limits {
        memory,
        artifact_bytes,
    }
}

pub(super) fn compute(raw: Option<&RawCompute>, d: &mut Vec<Diagnostic>) -> Compute {
    let device = match raw.and_then(|c| c.device.as_deref()) {
        None | Some("auto") => DeviceSpec::Auto,
        Some("cpu") => DeviceSpec::Cpu,
        Some("cuda") => DeviceSpec::Cuda(0),
        Some(other) => match other.strip_prefix("cuda:").map(str::parse::<u32>) {
            Some(Ok(n)) => DeviceSpec::Cuda(n),
            _ => {
                let mut e =
                    Diagnostic::error("/compute/device", format!("unknown device `{other}`"));
                e = e.with_help(
                    did_you_mean(other, ["auto", "cpu", "cuda", "cuda:0"])
                        .unwrap_or_else(|| "write `auto`, `cpu` or `cuda:N`".to_owned()),
                );
                d.push(e);
                DeviceSpec::Auto
            }
        },
    };
    Compute {
        device,
        batch_size: raw.and_then(|c| c.batch_size).unwrap_or(8),
    }
}
