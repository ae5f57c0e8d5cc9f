//! int8 weights with one scale per row, for large float layers whose GEMV is memory-bound
//! (a language model's output head): a quarter of float32's bytes to read.
//!
//! ```text
//! quantize:  s[n] = f32(max_k |W[n, k]| / 127)
//!            c[n, k] = clip(round_half_even(W[n, k] / s[n]), -127, 127)     (0 when s[n] = 0)
//! matmul, float activations ([`int8_matmul`]):
//!            y[m, n] = s[n] * sum_k x[m, k] c[n, k]
//! matmul, int8 activations ([`int8_matmul_quantized`]):
//!            q[m, :], a[m] = activation_quant(x[m, :])     (BitNet's: a = 127 / max(max|x|, 1e-5))
//!            y[m, n] = T((f64(sum_k q[m, k] c[n, k]) * f64(s[n])) * (1 / f64(a[m])))
//! ```
//!
//! Quantization runs in f64 (so the float32 and float64 paths give the same codes).
//!
//! The float-activation matmul converts each block of codes to x's type on the fly and
//! multiplies in independent FMA chains (summed pairwise at the end; explicit AVX-512 and AVX2
//! loops for f32, plain vectorisable Rust otherwise), so the only error besides float rounding
//! is the weights' own (at most s[n] / 2 each). The loops are plain Rust compiled per ISA by
//! [`simd::dispatch`] (AVX-512, AVX2 + FMA, or portable).
//!
//! The int8-activation matmul quantizes each row of x with [`QuantizeRow`] and sums the
//! products exactly in i32 on the ternary kernels' code paths ([`KernelPath`]: AVX-512 VNNI
//! `vpdpbusd`, AVX2 `vpmaddubsw`, portable, which aarch64 runs too; see [`super::int8_dot`]);
//! the only roundings after the integers are those of the fixed f64 rescale above, so every
//! path and thread count gives the same bits. It adds the activations' rounding (at most
//! max|x[m]| / 254 per element) to the weights'.
//!
//! At batch 1 both kernels read each code once and are bound by memory bandwidth; for several
//! rows of x, the weight rows of a chunk stay in cache while the rows of x pass over them.
//! Each output is one dot product with a fixed order, so the result depends neither on the
//! thread count nor on the batch size.

use super::int8_dot::{self, MAX_K};
use super::kernels::KernelPath;
use super::quantize::{QuantFloat, QuantizeRow};
use crate::error::{check_len, checked_product, KernelError};
use crate::simd::{self, Arch, Kernel, Real};
use rayon::prelude::*;

/// Lanes of one accumulator chain: a 512-bit vector of f32.
const WIDTH: usize = 16;
/// Independent accumulator chains of a dot product (hides the FMA latency).
const CHAINS: usize = 4;
/// Elements per step of a dot product.
const LANES: usize = WIDTH * CHAINS;

/// 1.5 * 2^52: `x + ROUNDING` is `round_half_even(x) + ROUNDING` for |x| < 2^51, and its
/// bits exceed those of `ROUNDING` by that integer.
const ROUNDING: f64 = 6_755_399_441_055_744.0;

/// Bytes of weight rows per chunk when x has several rows: they stay in L2 while x streams.
const CHUNK_BYTES: usize = 1 << 16;

/// The floats the int8 matmul runs on.
pub trait Int8Float: Real {
    /// `c` as a float (exact).
    fn from_code(c: i8) -> Self;
    /// `sum_k x[k] c[k]` compiled for `A`.
    fn dot<A: Arch>(x: &[Self], codes: &[i8]) -> Self;
}

impl Int8Float for f32 {
    #[inline(always)]
    fn from_code(c: i8) -> f32 {
        f32::from(c)
    }

    #[inline(always)]
    fn dot<A: Arch>(x: &[f32], codes: &[i8]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `A` says which features the surrounding dispatch enabled (and checked).
            if A::AVX512 {
                return unsafe { dot_avx512(x, codes) };
            }
            if A::FMA {
                return unsafe { dot_avx2(x, codes) };
            }
        }
        dot_portable::<f32, A>(x, codes)
    }
}

impl Int8Float for f64 {
    #[inline(always)]
    fn from_code(c: i8) -> f64 {
        f64::from(c)
    }

    #[inline(always)]
    fn dot<A: Arch>(x: &[f64], codes: &[i8]) -> f64 {
        dot_portable::<f64, A>(x, codes)
    }
}

/// Quantizes `w` (`(n, k)`) row by row: writes `codes` (`(n, k)`) and `scales` (`(n,)`), see
/// the module docs. Non-finite weights are an error.
pub fn quantize_rows<T: QuantFloat>(
    w: &[T],
    n: usize,
    k: usize,
    codes: &mut [i8],
    scales: &mut [f32],
) -> Result<(), KernelError> {
    check_len("W", w, &[n, k])?;
    check_len("codes", codes, &[n, k])?;
    check_len("scales", scales, &[n])?;
    if k == 0 {
        scales.fill(0.0);
        return Ok(());
    }
    codes
        .par_chunks_mut(k)
        .zip(scales.par_iter_mut())
        .zip(w.par_chunks(k))
        .enumerate()
        .try_for_each(|(row, ((codes, scale), w))| quantize_row(row, w, codes, scale))
}

fn quantize_row<T: QuantFloat>(
    row: usize,
    w: &[T],
    codes: &mut [i8],
    scale: &mut f32,
) -> Result<(), KernelError> {
    // Branch-free loops, so that they vectorise; a non-finite value is located afterwards.
    let (mut absmax, mut finite) = (T::ZERO, true);
    for &x in w {
        let a = x.abs();
        finite &= a <= T::MAX;
        absmax = if a > absmax { a } else { absmax };
    }
    if !finite {
        let (col, x) = w
            .iter()
            .enumerate()
            .find(|(_, x)| x.abs().partial_cmp(&T::MAX).is_none_or(|o| o.is_gt()))
            .expect("a non-finite value");
        return Err(KernelError::value(
            "W",
            format!("expected finite values, got {x:?} at ({row}, {col})"),
        ));
    }
    *scale = (absmax.to_f64() / 127.0) as f32;
    let s = f64::from(*scale);
    if s == 0.0 {
        codes.fill(0);
        return Ok(());
    }
    for (c, &x) in codes.iter_mut().zip(w) {
        // Clamping first is the same (rounding is monotonic and keeps integers); adding and
        // removing 1.5 * 2^52 rounds half to even without a libm call, so the loop vectorises.
        let v = (x.to_f64() / s).clamp(-127.0, 127.0);
        let rounded = (v + ROUNDING).to_bits() as i64;
        *c = rounded.wrapping_sub(ROUNDING.to_bits() as i64) as i8;
    }
    Ok(())
}

/// `out = (x @ c.T) * s`: `x` is `(m, k)`, `codes` `(n, k)`, `scales` `(n,)`, `out` `(m, n)`.
pub fn int8_matmul<T: Int8Float>(
    x: &[T],
    m: usize,
    codes: &[i8],
    scales: &[f32],
    n: usize,
    k: usize,
    out: &mut [T],
) -> Result<(), KernelError> {
    if !check_matmul(x, m, codes, scales, n, k, out)? {
        return Ok(());
    }
    let rows = chunk_rows(m, n, k);
    let isa = simd::isa();
    split_columns(out, n, rows)
        .into_par_iter()
        .enumerate()
        .for_each(|(chunk, out)| {
            let first = chunk * rows;
            let count = rows.min(n - first);
            let job = ChunkJob {
                x,
                k,
                codes: &codes[first * k..(first + count) * k],
                scales: &scales[first..first + count],
                out,
            };
            simd::dispatch_on(isa, job);
        });
    Ok(())
}

/// Checks the shapes of an int8 matmul; returns whether there is work to do (an empty output,
/// or zeros for K = 0, is already complete).
fn check_matmul<T: Real>(
    x: &[T],
    m: usize,
    codes: &[i8],
    scales: &[f32],
    n: usize,
    k: usize,
    out: &mut [T],
) -> Result<bool, KernelError> {
    check_len("x", x, &[m, k])?;
    check_len("codes", codes, &[n, k])?;
    check_len("scales", scales, &[n])?;
    check_len("out", out, &[m, n])?;
    checked_product("x", &[m, n, k])?;
    if m == 0 || n == 0 {
        return Ok(false);
    }
    if k == 0 {
        out.fill(T::ZERO);
        return Ok(false);
    }
    Ok(true)
}

/// The activations' `eps` of [`int8_matmul_quantized`] (BitNet's `activation_quant`).
pub const ACTIVATION_EPS: f64 = 1e-5;

/// Elements of x below which its rows are quantized on the calling thread.
const SERIAL_QUANTIZE: usize = 1 << 16;

/// `out = (q @ c.T) * s / a`: `x` (`(m, k)`) quantized per row to int8 codes `q` with scales
/// `a` (see the module docs), then multiplied exactly by `codes` (`(n, k)`); `scales` `(n,)`,
/// `out` `(m, n)`. K is at most [`MAX_K`] (exact i32 sums); NaN or infinity in x is an error.
pub fn int8_matmul_quantized<T: QuantFloat>(
    x: &[T],
    m: usize,
    codes: &[i8],
    scales: &[f32],
    n: usize,
    k: usize,
    out: &mut [T],
) -> Result<(), KernelError> {
    if k > MAX_K {
        return Err(KernelError::value(
            "x",
            format!(
                "expected in_features <= {MAX_K} for int8 activations (exact int32 sums), got {k}"
            ),
        ));
    }
    if !check_matmul(x, m, codes, scales, n, k, out)? {
        return Ok(());
    }
    let (q, act_scales) = quantize_x(x, m, k)?;
    let sums: Vec<i32> = q
        .chunks_exact(k)
        .map(|row| row.iter().map(|&v| i32::from(v)).sum())
        .collect();
    let inverse: Vec<f64> = act_scales.iter().map(|a| 1.0 / a.to_f64()).collect();
    let path = KernelPath::current();
    let rows = chunk_rows(m, n, k);
    split_columns(out, n, rows)
        .into_par_iter()
        .enumerate()
        .for_each(|(chunk, out)| {
            let first = chunk * rows;
            let count = rows.min(n - first);
            let mut dots = vec![0i32; m * count];
            let chunk_codes = &codes[first * k..(first + count) * k];
            int8_dot::dots(path, &q, &sums, chunk_codes, k, &mut dots);
            let chunk_scales = &scales[first..first + count];
            for ((out, dots), &inverse) in
                out.into_iter().zip(dots.chunks_exact(count)).zip(&inverse)
            {
                for ((y, &dot), &s) in out.iter_mut().zip(dots).zip(chunk_scales) {
                    // y = (dot s[n]) / a[m], in f64 as (dot * s[n]) * (1 / a[m]), rounded once.
                    *y = T::from_f64(f64::from(dot) * f64::from(s) * inverse);
                }
            }
        });
    Ok(())
}

/// The int8 codes (`(m, k)`) and scales (`(m,)`) of the rows of `x`, as
/// [`super::quantize::quantize_activations`] computes them with eps [`ACTIVATION_EPS`].
fn quantize_x<T: QuantFloat>(
    x: &[T],
    m: usize,
    k: usize,
) -> Result<(Vec<i8>, Vec<T>), KernelError> {
    let (mut q, mut act_scales) = (vec![0i8; m * k], vec![T::ZERO; m]);
    let (isa, eps) = (simd::isa(), T::from_f64(ACTIVATION_EPS));
    let row = |((x, q), a): ((&[T], &mut [i8]), &mut T)| -> Result<(), KernelError> {
        *a = simd::dispatch_on(isa, QuantizeRow { x, q, eps })?;
        Ok(())
    };
    if m * k < SERIAL_QUANTIZE {
        x.chunks_exact(k)
            .zip(q.chunks_exact_mut(k))
            .zip(act_scales.iter_mut())
            .try_for_each(row)?;
    } else {
        x.par_chunks_exact(k)
            .zip(q.par_chunks_exact_mut(k))
            .zip(act_scales.par_iter_mut())
            .try_for_each(row)?;
    }
    Ok((q, act_scales))
}

/// Weight rows per parallel chunk: about eight chunks per thread, and at most
/// [`CHUNK_BYTES`] of codes when x has several rows (so that they are reused from cache).
fn chunk_rows(m: usize, n: usize, k: usize) -> usize {
    let even = n.div_ceil(8 * rayon::current_num_threads()).max(1);
    if m == 1 {
        even
    } else {
        even.min((CHUNK_BYTES / k).max(1))
    }
}

/// Splits the rows of `out` (`(m, n)`) at every `chunk` columns: entry c holds, for each row,
/// its columns `c chunk .. (c + 1) chunk`, so that chunks can be written in parallel.
pub(super) fn split_columns<T>(out: &mut [T], n: usize, chunk: usize) -> Vec<Vec<&mut [T]>> {
    let rows = out.len() / n;
    let mut chunks: Vec<Vec<&mut [T]>> = (0..n.div_ceil(chunk))
        .map(|_| Vec::with_capacity(rows))
        .collect();
    for row in out.chunks_mut(n) {
        for (c, piece) in row.chunks_mut(chunk).enumerate() {
            chunks[c].push(piece);
        }
    }
    chunks
}

/// Consecutive weight rows against every row of x.
struct ChunkJob<'a, 'o, T> {
    x: &'a [T],
    k: usize,
    codes: &'a [i8],
    scales: &'a [f32],
    /// For each row of x, its outputs for this chunk's weight rows.
    out: Vec<&'o mut [T]>,
}

impl<T: Int8Float> Kernel for ChunkJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let k = self.k;
        for (x, out) in self.x.chunks_exact(k).zip(self.out) {
            for ((y, codes), &s) in out
                .iter_mut()
                .zip(self.codes.chunks_exact(k))
                .zip(self.scales)
            {
                *y = dot::<T, A>(x, codes) * T::from_f64(f64::from(s));
            }
        }
    }
}

/// `sum_k x[k] c[k]`: the explicit AVX-512 or AVX2 loop for f32 when `A` allows it, else
/// [`dot_portable`].
#[inline(always)]
fn dot<T: Int8Float, A: Arch>(x: &[T], codes: &[i8]) -> T {
    T::dot::<A>(x, codes)
}

/// `sum_k x[k] c[k]` in [`LANES`] independent accumulators, then pairwise: plain Rust that
/// vectorises for the target's baseline.
#[inline(always)]
fn dot_portable<T: Int8Float, A: Arch>(x: &[T], codes: &[i8]) -> T {
    let k = x.len().min(codes.len());
    let body = k - k % WIDTH;
    let mut acc = [T::ZERO; WIDTH];
    for (x, c) in x[..body]
        .chunks_exact(WIDTH)
        .zip(codes[..body].chunks_exact(WIDTH))
    {
        for l in 0..WIDTH {
            acc[l] = T::fma::<A>(x[l], T::from_code(c[l]), acc[l]);
        }
    }
    let mut tail = T::ZERO;
    for (&x, &c) in x[body..k].iter().zip(&codes[body..k]) {
        tail = T::fma::<A>(x, T::from_code(c), tail);
    }
    let mut width = WIDTH;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0] + tail
}

/// The AVX-512 f32 dot: 16 codes sign-extended to i32 and converted per vector, [`CHAINS`]
/// independent FMA chains.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(x: &[f32], codes: &[i8]) -> f32 {
    use std::arch::x86_64::*;
    let k = x.len().min(codes.len());
    let body = k - k % LANES;
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    let (xp, cp) = (x.as_ptr(), codes.as_ptr());
    for k0 in (0..body).step_by(LANES) {
        for (chain, acc) in acc.iter_mut().enumerate() {
            let at = k0 + chain * 16;
            let c = _mm512_cvtepi8_epi32(_mm_loadu_si128(cp.add(at) as *const __m128i));
            let xv = _mm512_loadu_ps(xp.add(at));
            *acc = _mm512_fmadd_ps(xv, _mm512_cvtepi32_ps(c), *acc);
        }
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let mut total = _mm512_reduce_add_ps(sum);
    for (&x, &c) in x[body..k].iter().zip(&codes[body..k]) {
        total = x.mul_add(f32::from(c), total);
    }
    total
}

/// The AVX2 f32 dot: 8 codes per vector, [`CHAINS`] independent FMA chains.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(x: &[f32], codes: &[i8]) -> f32 {
    use std::arch::x86_64::*;
    const STEP: usize = 8 * CHAINS;
    let k = x.len().min(codes.len());
    let body = k - k % STEP;
    let mut acc = [_mm256_setzero_ps(); CHAINS];
    let (xp, cp) = (x.as_ptr(), codes.as_ptr());
    for k0 in (0..body).step_by(STEP) {
        for (chain, acc) in acc.iter_mut().enumerate() {
            let at = k0 + chain * 8;
            let c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(cp.add(at) as *const __m128i));
            let xv = _mm256_loadu_ps(xp.add(at));
            *acc = _mm256_fmadd_ps(xv, _mm256_cvtepi32_ps(c), *acc);
        }
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
    let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair));
    let mut total = _mm_cvtss_f32(one);
    for (&x, &c) in x[body..k].iter().zip(&codes[body..k]) {
        total = x.mul_add(f32::from(c), total);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Isa;

    fn filled(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    #[test]
    fn quantize_rows_matches_the_definition() {
        let (n, k) = (5, 37);
        let mut w = filled(n * k, 1);
        w[2 * k..3 * k].fill(0.0); // a zero row
        w[4 * k + 3] = 2.5; // its absmax gives the code 127
        let mut codes = vec![0i8; n * k];
        let mut scales = vec![0f32; n];
        quantize_rows(&w, n, k, &mut codes, &mut scales).unwrap();
        assert_eq!(scales[2], 0.0);
        assert_eq!(codes[4 * k + 3], 127);
        for row in 0..n {
            let absmax = w[row * k..(row + 1) * k]
                .iter()
                .fold(0.0f64, |a, x| a.max(x.abs()));
            assert_eq!(scales[row], (absmax / 127.0) as f32);
            for col in 0..k {
                let s = f64::from(scales[row]);
                let want = if s > 0.0 {
                    (w[row * k + col] / s).round_ties_even()
                } else {
                    0.0
                };
                assert_eq!(f64::from(codes[row * k + col]), want.clamp(-127.0, 127.0));
            }
        }
        let bad = [1.0, f64::NAN];
        let err = quantize_rows(&bad, 1, 2, &mut [0; 2], &mut [0.0]).unwrap_err();
        assert!(matches!(err, KernelError::Value { name: "W", .. }));
    }

    #[test]
    fn every_path_matches_the_definition() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 7, 64),
            (3, 9, 65),
            (5, 33, 200),
            (2, 70, 1000),
        ] {
            let x = filled(m * k, 2);
            let codes: Vec<i8> = filled(n * k, 3).iter().map(|v| (v * 127.0) as i8).collect();
            let scales: Vec<f32> = filled(n, 4)
                .iter()
                .map(|v| (v.abs() + 0.1) as f32)
                .collect();
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    let dot: f64 = (0..k)
                        .map(|j| x[r * k + j] * f64::from(codes[c * k + j]))
                        .sum();
                    dot * f64::from(scales[c])
                })
                .collect();
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                simd::with_isa(isa, || {
                    let mut out = vec![0.0f64; m * n];
                    int8_matmul(&x, m, &codes, &scales, n, k, &mut out).unwrap();
                    let mut out32 = vec![0.0f32; m * n];
                    int8_matmul(&x32, m, &codes, &scales, n, k, &mut out32).unwrap();
                    for ((&g, &g32), &w) in out.iter().zip(&out32).zip(&want) {
                        // |terms| <= 127 * 1.1: f64 sums within 1e-10 K, f32 within 1e-6 * 140 K.
                        let tol = 1e-10 * k as f64;
                        assert!((g - w).abs() <= tol, "{isa:?} {m} {n} {k}: {g} vs {w}");
                        let tol = 1e-6 * 140.0 * k as f64;
                        assert!(
                            (f64::from(g32) - w).abs() <= tol,
                            "{isa:?} f32: {g32} vs {w}"
                        );
                    }
                });
            }
        }
    }

    #[test]
    fn quantized_path_matches_the_definition_on_every_path() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 7, 63),
            (3, 9, 65),
            (5, 33, 200),
            (2, 70, 1000),
        ] {
            let x: Vec<f32> = filled(m * k, 5).iter().map(|&v| v as f32).collect();
            let codes: Vec<i8> = filled(n * k, 6).iter().map(|v| (v * 127.0) as i8).collect();
            let scales: Vec<f32> = filled(n, 7)
                .iter()
                .map(|v| (v.abs() + 0.1) as f32)
                .collect();
            let (mut q, mut a) = (vec![0i8; m * k], vec![0f32; m]);
            super::super::quantize::quantize_activations(&x, m, k, 1e-5, &mut q, &mut a).unwrap();
            let want: Vec<f32> = (0..m * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    let dot: i64 = (0..k)
                        .map(|j| i64::from(q[r * k + j]) * i64::from(codes[c * k + j]))
                        .sum();
                    (dot as f64 * f64::from(scales[c]) * (1.0 / f64::from(a[r]))) as f32
                })
                .collect();
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                simd::with_isa(isa, || {
                    let mut out = vec![0.0f32; m * n];
                    int8_matmul_quantized(&x, m, &codes, &scales, n, k, &mut out).unwrap();
                    assert_eq!(out, want, "{isa:?} {m} {n} {k}");
                });
            }
        }
        let err = int8_matmul_quantized(&[f32::NAN], 1, &[1], &[1.0], 1, 1, &mut [0.0]);
        assert!(matches!(err, Err(KernelError::Value { name: "x", .. })));
    }

    #[test]
    fn bad_lengths_are_errors() {
        let err = int8_matmul(&[0.0f32; 3], 1, &[0; 4], &[1.0; 2], 2, 2, &mut [0.0; 2]);
        assert!(matches!(err, Err(KernelError::Shape { name: "x", .. })));
        let err = int8_matmul(&[0.0f32; 2], 1, &[0; 4], &[1.0; 1], 2, 2, &mut [0.0; 2]);
        assert!(matches!(
            err,
            Err(KernelError::Shape { name: "scales", .. })
        ));
    }
}
