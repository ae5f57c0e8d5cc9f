//! BitNet b1.58 quantizers, bit-identical to the published PyTorch functions.
//!
//! ```text
//! weight_quant:      scale = 1 / max(mean|W|, eps)            per tensor
//!                    t = clip(round_half_even(W * scale), -1, 1)
//! activation_quant:  scale = 127 * (1 / max(max_k |x_k|, eps))   per token (row)
//!                    q = clip(round_half_even(x * scale), -128, 127)
//! ```
//!
//! All arithmetic is in the input's precision, rounded where PyTorch rounds: PyTorch evaluates
//! `127.0 / t` as `t.reciprocal() * 127.0`, so the activation scale is rounded twice, and
//! `1.0 / t` once. `mean|W|` is the (correctly rounded) f64 sum of |W| divided by the count,
//! rounded to the input type: independent of summation order. (PyTorch and NumPy sum float32 in
//! float32 in their own orders, which can move the mean by an ulp and so flip a weight lying
//! within an ulp of gamma / 2; no other weight can differ.) Non-finite inputs are rejected: they
//! have no ternary or int8 code.

use crate::error::{check_len, KernelError};
use crate::simd::{self, Arch, Kernel, Real};
use rayon::prelude::*;

/// Floats the quantizers accept: `Real` plus rounding and conversion.
pub trait QuantFloat: Real {
    /// The largest finite value.
    const MAX: Self;
    /// |self|.
    fn abs(self) -> Self;
    /// `self` rounded half to even, as PyTorch's `round`.
    fn round_half_even(self) -> Self;
    /// `self` as an integer, for integral values with |self| < 2^22 (other values give an
    /// unspecified integer). Unlike `as i32`, which saturates, it vectorises.
    fn small_integer_to_i32(self) -> i32;
}

macro_rules! quant_float {
    ($t:ty, $bits:ty, $magic:expr) => {
        impl QuantFloat for $t {
            const MAX: $t = <$t>::MAX;
            #[inline(always)]
            fn abs(self) -> $t {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn round_half_even(self) -> $t {
                self.round_ties_even()
            }
            #[inline(always)]
            fn small_integer_to_i32(self) -> i32 {
                // 1.5 * 2^mantissa_bits: adding it puts an integral self into the low mantissa
                // bits exactly, offset by the magic number's own bits.
                let shifted = (self + $magic).to_bits() as $bits;
                shifted.wrapping_sub(<$t>::to_bits($magic) as $bits) as i32
            }
        }
    };
}

quant_float!(f32, i32, 12_582_912.0);
quant_float!(f64, i64, 6_755_399_441_055_744.0);

/// Elements per chunk of the sum: fixed, so that the result does not depend on the thread
/// count.
const SUM_CHUNK: usize = 1 << 14;

/// A sum carried as an unevaluated pair `hi + lo` (about 106 significant bits).
#[derive(Clone, Copy, Default)]
struct DoubleSum {
    hi: f64,
    lo: f64,
}

impl DoubleSum {
    /// Adds `x`, keeping the rounding error of `hi + x` in `lo` (Knuth's TwoSum).
    #[inline(always)]
    fn add(&mut self, x: f64) {
        let sum = self.hi + x;
        let x_part = sum - self.hi;
        let error = (self.hi - (sum - x_part)) + (x - x_part);
        self.hi = sum;
        self.lo += error;
    }

    fn merge(&mut self, other: DoubleSum) {
        self.add(other.hi);
        self.add(other.lo);
    }

    fn value(self) -> f64 {
        self.hi + self.lo
    }
}

/// `sum_k |w_k|` of one chunk in [`DoubleSum`] lanes, or `None` if it holds NaN or infinity.
fn abs_sum<T: QuantFloat>(chunk: &[T]) -> Option<DoubleSum> {
    let mut lanes = [DoubleSum::default(); LANES];
    let mut finite = true;
    for group in chunk.chunks(LANES) {
        for (lane, v) in lanes.iter_mut().zip(group) {
            let a = v.to_f64().abs();
            finite &= a <= f64::MAX;
            lane.add(a);
        }
    }
    let mut total = DoubleSum::default();
    for lane in lanes {
        total.merge(lane);
    }
    finite.then_some(total)
}

/// `gamma = max(mean|W|, eps)` of the whole tensor, in `T`: the sum of |W| is carried in
/// about 106 bits (so it is the correctly rounded f64 sum but for ties at the 2^-100 level,
/// whatever the order), divided by the count in f64 and rounded to `T`.
pub fn weight_gamma<T: QuantFloat>(w: &[T], eps: T) -> Result<T, KernelError> {
    if w.is_empty() {
        return Err(KernelError::value("W", "expected a non-empty matrix"));
    }
    let partial: Vec<Option<DoubleSum>> = w.par_chunks(SUM_CHUNK).map(abs_sum).collect();
    let mut sum = DoubleSum::default();
    for chunk in partial {
        sum.merge(chunk.ok_or_else(|| KernelError::value("W", "contains NaN or infinity"))?);
    }
    let mean = T::from_f64(sum.value() / w.len() as f64);
    Ok(if mean > eps { mean } else { eps })
}

/// Quantizes `w` (`(n, k)`) to ternary values with one scale: returns `(trits, gamma)`.
pub fn quantize_weights<T: QuantFloat>(
    w: &[T],
    n: usize,
    k: usize,
    eps: T,
) -> Result<(Vec<i8>, T), KernelError> {
    check_len("W", w, &[n, k])?;
    check_eps(eps)?;
    let gamma = weight_gamma(w, eps)?;
    // PyTorch: `1.0 / t` is `t.reciprocal() * 1.0`, one rounding.
    let scale = T::ONE / gamma;
    let trits = w
        .par_iter()
        .map(|&v| {
            let t = (v * scale).round_half_even();
            // clip(t, -1, 1)
            if t > T::ONE {
                1
            } else if t < -T::ONE {
                -1
            } else {
                t.small_integer_to_i32() as i8
            }
        })
        .collect();
    Ok((trits, gamma))
}

fn check_eps<T: QuantFloat>(eps: T) -> Result<(), KernelError> {
    if eps.to_f64() > 0.0 && eps.to_f64().is_finite() {
        Ok(())
    } else {
        Err(KernelError::value(
            "eps",
            format!("expected a finite value > 0, got {}", eps.to_f64()),
        ))
    }
}

/// The per-token activation scale `127 * (1 / max(amax, eps))`, rounded as PyTorch rounds it.
#[inline]
pub fn activation_scale<T: QuantFloat>(amax: T, eps: T) -> T {
    let clamped = if amax > eps { amax } else { eps };
    (T::ONE / clamped) * T::from_f64(127.0)
}

/// Quantizes `x` (`(m, k)`) per row: writes `q` (`(m, k)`) and `scales` (`(m,)`).
pub fn quantize_activations<T: QuantFloat>(
    x: &[T],
    m: usize,
    k: usize,
    eps: T,
    q: &mut [i8],
    scales: &mut [T],
) -> Result<(), KernelError> {
    check_len("x", x, &[m, k])?;
    check_len("q", q, &[m, k])?;
    check_len("scale", scales, &[m])?;
    check_eps(eps)?;
    if m == 0 || k == 0 {
        scales.fill(activation_scale(T::ZERO, eps));
        return Ok(());
    }
    let isa = simd::isa();
    x.par_chunks(k)
        .zip(q.par_chunks_mut(k))
        .zip(scales.par_iter_mut())
        .try_for_each(|((x, q), scale)| {
            *scale = simd::dispatch_on(isa, QuantizeRow { x, q, eps })?;
            Ok(())
        })
}

/// Quantizes one row; returns its scale. Compiled per ISA by [`simd::dispatch_on`].
pub struct QuantizeRow<'a, T> {
    /// The row of activations.
    pub x: &'a [T],
    /// Its int8 codes, written here.
    pub q: &'a mut [i8],
    /// The clamp of the absolute maximum.
    pub eps: T,
}

/// Lanes of the absolute-maximum reduction (one 512-bit register of f32).
const LANES: usize = 16;

impl<T: QuantFloat> Kernel for QuantizeRow<'_, T> {
    type Output = Result<T, KernelError>;

    #[inline(always)]
    fn run<A: Arch>(self) -> Result<T, KernelError> {
        let amax = abs_max(self.x).ok_or_else(|| {
            KernelError::value("x", "contains NaN or infinity; it has no int8 code")
        })?;
        let scale = activation_scale(amax, self.eps);
        let (lo, hi) = (T::from_f64(-128.0), T::from_f64(127.0));
        for (q, &v) in self.q.iter_mut().zip(self.x) {
            // clip(round_half_even(x * scale), -128, 127)
            let r = (v * scale).round_half_even();
            let r = if r < lo {
                lo
            } else if r > hi {
                hi
            } else {
                r
            };
            *q = r.small_integer_to_i32() as i8;
        }
        Ok(scale)
    }
}

/// `max_k |x_k|`, or `None` when `x` holds a NaN or an infinity.
#[inline(always)]
fn abs_max<T: QuantFloat>(x: &[T]) -> Option<T> {
    let mut lanes = [T::ZERO; LANES];
    // Every finite |v| is <= T::MAX; NaN and infinity are not.
    let mut finite = [true; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            let a = chunk[l].abs();
            finite[l] &= a <= T::MAX;
            lanes[l] = if a > lanes[l] { a } else { lanes[l] };
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        let a = v.abs();
        finite[l] &= a <= T::MAX;
        lanes[l] = if a > lanes[l] { a } else { lanes[l] };
    }
    let amax = lanes
        .iter()
        .fold(T::ZERO, |m, &v| if v > m { v } else { m });
    finite.iter().all(|&f| f).then_some(amax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_ties_round_to_even() {
        // amax = 2: scale = 127 * 0.5 = 63.5 exactly; x = 1 gives 63.5, which rounds to 64.
        let x = [2.0f32, 1.0, -1.0, 0.0];
        let mut q = [0i8; 4];
        let mut s = [0f32; 1];
        quantize_activations(&x, 1, 4, 1e-5, &mut q, &mut s).unwrap();
        assert_eq!(s[0], 63.5);
        assert_eq!(q, [127, 64, -64, 0]);
    }

    #[test]
    fn weight_ties_round_to_even() {
        // mean|W| = 1: 0.5 -> 0, 1.5 -> 2 -> clipped to 1, -2.5 -> -2 -> -1.
        let w = [0.5f32, 1.5, -2.5, 0.0, 0.5, 0.5, -0.5, 0.0];
        let (t, gamma) = quantize_weights(&w, 2, 4, 1e-5).unwrap();
        assert_eq!(gamma, 0.75);
        let (t1, _) = quantize_weights(&[0.5f32, 1.5, -2.5, 0.0], 1, 4, 1e-5).unwrap();
        assert_eq!(t1, [0, 1, -1, 0]);
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn non_finite_is_an_error() {
        let mut q = [0i8; 2];
        let mut s = [0f32; 1];
        for bad in [f32::NAN, f32::INFINITY] {
            assert!(quantize_activations(&[1.0, bad], 1, 2, 1e-5, &mut q, &mut s).is_err());
            assert!(quantize_weights(&[1.0f32, bad], 1, 2, 1e-5).is_err());
        }
    }

    #[test]
    fn zero_rows_quantize_to_zero() {
        let mut q = [1i8; 3];
        let mut s = [0f64; 1];
        quantize_activations(&[0.0f64; 3], 1, 3, 1e-5, &mut q, &mut s).unwrap();
        assert_eq!(q, [0, 0, 0]);
        assert_eq!(s[0], (1.0 / 1e-5) * 127.0);
    }
}
