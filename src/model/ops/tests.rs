use super::*;

/// The fused RMSNorm agrees with the unfused one (which matches transformers) to a few ulp.
#[test]
fn fused_rms_norm_matches_the_unfused_path() {
    let dev = Device::Cpu;
    let x = (Tensor::randn(0f32, 1.0, (2, 5, 96), &dev).unwrap() * 3.0).unwrap();
    let w = Tensor::randn(1f32, 0.5, 96, &dev).unwrap();
    let fused = rms_norm(&x, &w, 1e-5, false).unwrap();
    let plain = rms_norm(&x, &w, 1e-5, true).unwrap();
    assert!(fused.scale.is_none() && fused.normalized.is_none());
    assert!(plain.scale.is_some() && plain.normalized.is_some());
    let a: Vec<f32> = fused.out.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = plain.out.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

/// The fused kernel gives candle's `silu(gate) · up` to the last ulp or so, on 3-D input.
#[test]
fn fused_silu_mul_matches_candle() {
    let dev = Device::Cpu;
    let both = (Tensor::randn(0f32, 1.0, (3, 7, 2 * 37), &dev).unwrap() * 4.0).unwrap();
    let fused = silu_mul(&both).unwrap();
    let plain =
        (both.narrow(2, 0, 37).unwrap().silu().unwrap() * both.narrow(2, 37, 37).unwrap()).unwrap();
    assert_eq!(fused.dims(), [3, 7, 37]);
    let a: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = plain.flatten_all().unwrap().to_vec1().unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 4.0 * f32::EPSILON * y.abs().max(1e-30),
            "{x} vs {y}"
        );
    }
    // A strided input takes candle's path and agrees too.
    let strided = both.transpose(0, 1).unwrap();
    let c: Vec<f32> = silu_mul(&strided)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (x, y) in c.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 4.0 * f32::EPSILON * y.abs().max(1e-30),
            "{x} vs {y}"
        );
    }
}

#[test]
fn chunked_attention_equals_whole_batch() {
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (3, 5, 4, 8), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (3, 5, 2, 8), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (3, 5, 2, 8), &dev).unwrap();
    let mask = causal_mask(5, &dev).unwrap();
    let whole = attention_chunked(&q, &k, &v, &mask, true, true, usize::MAX).unwrap();
    let rows = attention_chunked(&q, &k, &v, &mask, true, true, 1).unwrap();
    let diff = |a: &Tensor, b: &Tensor| {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    };
    assert_eq!(diff(&whole.z, &rows.z), 0.0);
    assert_eq!(
        diff(
            whole.pattern.as_ref().unwrap(),
            rows.pattern.as_ref().unwrap()
        ),
        0.0
    );
    // Masked entries are -inf in both; compare the finite lower triangle via the pattern
    // above and the diagonal here.
    let s = rows.scores.unwrap();
    assert_eq!(s.dims(), [3, 4, 5, 5]);
    let row0: Vec<f32> = s
        .get(2)
        .unwrap()
        .get(3)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(row0[0].is_finite() && row0[1..].iter().all(|x| *x == f32::NEG_INFINITY));
    // The fused softmax rows sum to one.
    let sums = whole
        .pattern
        .unwrap()
        .sum(3)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
}
