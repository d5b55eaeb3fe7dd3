//! A hook's activations as token-major rows, and their bytes in the stored dtype: widened to
//! f32 on the host (for a spectrum's Gram matrix), or narrowed where they were computed.

use std::borrow::Cow;

use candle_core::{DType, Device, Tensor};

use crate::sink::TensorDtype;
use crate::spec::{Dtype, Hook};

/// The element width of a hook's activation rows, from the tensor's shape.
pub(super) fn rows_and_width(hook: Hook, shape: &[usize]) -> (usize, usize) {
    match (hook, shape) {
        // [b, pos, heads, d_head] → one row per token.
        (Hook::AttnZ, [b, t, h, d]) => (b * t, h * d),
        // [b, heads, q, k] → one row per query token: heads × keys.
        (Hook::AttnPattern, [b, h, q, k]) => (b * q, h * k),
        (_, [b, t, d]) => (b * t, *d),
        (_, dims) => (
            dims.iter().take(dims.len().saturating_sub(1)).product(),
            dims.last().copied().unwrap_or(0),
        ),
    }
}

/// Activations of one hook as `[rows, width]` f32 on the CPU, token-major.
pub(super) fn as_rows(
    hook: Hook,
    tensor: &Tensor,
) -> candle_core::Result<(Vec<f32>, usize, usize)> {
    let tensor = if hook == Hook::AttnPattern {
        tensor.transpose(1, 2)?.contiguous()?
    } else {
        tensor.clone()
    };
    let (rows, width) = rows_and_width(hook, tensor.dims());
    let flat = tensor
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((rows, width))?;
    Ok((flat.flatten_all()?.to_vec1::<f32>()?, rows, width))
}

/// A hook's values in the stored dtype.
pub(super) enum Stored {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Bf16(Vec<half::bf16>),
}

impl Stored {
    /// `values` in `dtype`. The f16/bf16 narrowing runs over the whole slice at once (half's
    /// slice conversion uses the CPU's conversion instructions where it has them), not element
    /// by element; f32 values are kept as they are.
    pub(super) fn from_f32(values: Vec<f32>, dtype: Dtype) -> Self {
        use half::slice::HalfFloatSliceExt;
        match dtype {
            Dtype::F32 => Self::F32(values),
            Dtype::F16 => {
                let mut narrow = vec![half::f16::ZERO; values.len()];
                narrow.convert_from_f32_slice(&values);
                Self::F16(narrow)
            }
            Dtype::Bf16 => {
                let mut narrow = vec![half::bf16::ZERO; values.len()];
                narrow.convert_from_f32_slice(&values);
                Self::Bf16(narrow)
            }
        }
    }

    /// The values as little-endian bytes: on a little-endian machine the buffer itself.
    pub(super) fn le_bytes(&self) -> Cow<'_, [u8]> {
        fn le<T: bytemuck::Pod, const N: usize>(
            values: &[T],
            to_le: fn(T) -> [u8; N],
        ) -> Cow<'_, [u8]> {
            if cfg!(target_endian = "little") {
                Cow::Borrowed(bytemuck::cast_slice(values))
            } else {
                let mut out = vec![0u8; values.len() * N];
                for (chunk, &v) in out.chunks_exact_mut(N).zip(values) {
                    chunk.copy_from_slice(&to_le(v));
                }
                Cow::Owned(out)
            }
        }
        match self {
            Self::F32(values) => le(values, f32::to_le_bytes),
            Self::F16(values) => le(values, half::f16::to_le_bytes),
            Self::Bf16(values) => le(values, half::bf16::to_le_bytes),
        }
    }
}

/// Whether a hook's activations go straight to the stored dtype, never widened on the host:
/// when it is narrower than f32 and nothing needs the f32 values (no spectrum accumulates
/// them, no test perturbation). On a GPU the narrowing then runs there, before the copy to the
/// host, which halves the bytes copied and leaves the host only hashing and appending.
pub(super) fn narrows_early(dtype: Dtype, spectrum: bool, nudge: bool) -> bool {
    dtype != Dtype::F32 && !spectrum && !nudge
}

/// The candle dtype of a stored dtype.
pub(super) fn candle_dtype(dtype: Dtype) -> DType {
    match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::Bf16 => DType::BF16,
    }
}

/// A hook's activations in the stored dtype, token-major, converted by candle (round to
/// nearest even, like [`Stored::from_f32`], so the bytes are the same).
pub(super) fn narrowed(hook: Hook, tensor: &Tensor, dtype: Dtype) -> candle_core::Result<Stored> {
    let tensor = if hook == Hook::AttnPattern {
        tensor.transpose(1, 2)?.contiguous()?
    } else {
        tensor.clone()
    };
    let flat = tensor
        .to_dtype(candle_dtype(dtype))?
        .to_device(&Device::Cpu)?
        .flatten_all()?;
    Ok(match dtype {
        Dtype::F32 => Stored::F32(flat.to_vec1()?),
        Dtype::F16 => Stored::F16(flat.to_vec1()?),
        Dtype::Bf16 => Stored::Bf16(flat.to_vec1()?),
    })
}

/// Moves the first value one step up in `dtype` (one unit in the last place as stored), so the
/// change survives the conversion to the stored dtype and reaches the artifact's bytes and the
/// spectrum's Gram matrix alike. Test-only: see [`CaptureWork::perturb_for_tests`](super::CaptureWork::perturb_for_tests).
pub(super) fn nudge_first(values: &mut [f32], dtype: Dtype) {
    // The next representable value above `bits` for a sign-magnitude float of 16 bits.
    fn next_up_16(bits: u16) -> u16 {
        match bits {
            0x8000 => 1,
            b if b & 0x8000 == 0 => b + 1,
            b => b - 1,
        }
    }
    let Some(value) = values.first_mut() else {
        return;
    };
    *value = match dtype {
        Dtype::F32 => value.next_up(),
        Dtype::F16 => {
            half::f16::from_bits(next_up_16(half::f16::from_f32(*value).to_bits())).to_f32()
        }
        Dtype::Bf16 => {
            half::bf16::from_bits(next_up_16(half::bf16::from_f32(*value).to_bits())).to_f32()
        }
    };
}

pub(super) fn tensor_dtype(dtype: Dtype) -> TensorDtype {
    match dtype {
        Dtype::F32 => TensorDtype::F32,
        Dtype::F16 => TensorDtype::F16,
        Dtype::Bf16 => TensorDtype::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slice conversion must give the same bytes as converting one element at a time
    /// (round to nearest even), rounding ties, subnormals, infinities and NaN included.
    #[test]
    fn slice_conversion_matches_elementwise() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            65520.0,
            1e-8,
            6.0e-5,
            1.0 + f32::EPSILON,
            1.000_488_3,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        // Enough values to take the vectorised path, with every low mantissa pattern.
        values.extend((0..4099u32).map(|i| f32::from_bits(0x3f80_0000 + i * 37)));
        let expect = |dtype: Dtype| -> Vec<u8> {
            values
                .iter()
                .flat_map(|&v| match dtype {
                    Dtype::F32 => v.to_le_bytes().to_vec(),
                    Dtype::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                    Dtype::Bf16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                })
                .collect()
        };
        let to_bytes = |values: &[f32], dtype| {
            Stored::from_f32(values.to_vec(), dtype)
                .le_bytes()
                .into_owned()
        };
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            assert_eq!(to_bytes(&values, dtype), expect(dtype), "{dtype:?}");
        }
        let nan = to_bytes(&[f32::NAN], Dtype::F16);
        assert!(half::f16::from_le_bytes([nan[0], nan[1]]).is_nan());
    }

    /// Narrowing early (candle's conversion, on the device) stores exactly the bytes of the
    /// host path (widen to f32 rows, then the slice conversion), pattern transpose included.
    #[test]
    fn early_narrowing_stores_the_same_bytes_as_the_host_path() {
        let mut values: Vec<f32> = (0..2 * 3 * 4 * 5u32)
            .map(|i| f32::from_bits(0x3f80_0000 + i * 40_961) * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        values[..6].copy_from_slice(&[1.000_488_3, 65520.0, 1e-8, 6.0e-5, -0.0, 3.0e38]);
        for (hook, shape) in [
            (Hook::ResidPost, vec![2, 12, 5]),
            (Hook::AttnZ, vec![2, 3, 4, 5]),
            (Hook::AttnPattern, vec![2, 3, 4, 5]),
        ] {
            let tensor = Tensor::from_slice(&values, shape.as_slice(), &Device::Cpu).unwrap();
            let (rows, _, _) = as_rows(hook, &tensor).unwrap();
            for dtype in [Dtype::F16, Dtype::Bf16] {
                assert_eq!(
                    narrowed(hook, &tensor, dtype).unwrap().le_bytes(),
                    Stored::from_f32(rows.clone(), dtype).le_bytes(),
                    "{hook:?} {dtype:?}"
                );
            }
        }
        assert!(narrows_early(Dtype::F16, false, false));
        assert!(!narrows_early(Dtype::F32, false, false));
        assert!(!narrows_early(Dtype::Bf16, true, false));
        assert!(!narrows_early(Dtype::F16, false, true));
    }
}
