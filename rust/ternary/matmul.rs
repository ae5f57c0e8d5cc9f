//! int8 activations x packed ternary weights, and the BitLinear forward built on it.
//!
//! ```text
//! acc[m, n] = sum_k t[n, k] q[m, k]                      exact, in int32
//! y[m, n]   = acc[m, n] * gamma / scale[m] (+ bias[n])   bitlinear
//! ```
//!
//! The activation rows are first copied to kernel order ("panels", see
//! [`super::pack::fill_panel`]) with their sums. The weight rows are then split into chunks of
//! consecutive rows that run in parallel; each chunk walks the activation rows a few at a time
//! ([`super::kernels::TILE_ROWS`]), so a block of weights is unpacked once for several tokens.
//! M = 1 is the same loop with one activation row per tile. All sums are integers, so the
//! result is the same on every code path and for every thread count.

use super::int8::split_columns;
use super::kernels::{run_chunk, ChunkJob, KernelPath, TILE_COLS};
use super::pack::{fill_panel, Layout, PackedMatrix};
use super::quantize::{QuantFloat, QuantizeRow};
use crate::error::{check_len, checked_product, KernelError};
use crate::simd;
use rayon::prelude::*;

/// The largest K whose exact products fit in int32: |acc| <= 128 K < 2^31.
/// (K = 0 is refused too: an empty dot product is no layer.)
pub const MAX_K: usize = (1 << 24) - 1;

/// Weight rows per parallel chunk, at most: 64 rows of K = 4096 in "i2" are 64 KiB, which stay
/// in L2 while the activation rows stream past.
const MAX_CHUNK_ROWS: usize = 16 * TILE_COLS;

/// `out = q @ t.T` exactly: `q` is `(m, K)` int8, `out` `(m, N)` int32.
pub fn ternary_matmul_int(
    q: &[i8],
    m: usize,
    weight: &PackedMatrix<'_>,
    out: &mut [i32],
) -> Result<(), KernelError> {
    let layout = weight.layout;
    check_len("q", q, &[m, layout.k])?;
    check_len("out", out, &[m, weight.n])?;
    check_k(&layout)?;
    let panels = Panels::from_rows(m, &layout, |i, row| {
        row.copy_from_slice(&q[i * layout.k..][..layout.k])
    })?;
    multiply(&panels, weight, out);
    Ok(())
}

/// `y = bitlinear(x)`: `x` is `(m, K)`, `bias` `(N,)`, `out` `(m, N)`; activations are quantized
/// per row with `eps = 1e-5` exactly as [`super::quantize::quantize_activations`] does.
pub fn bitlinear<T: QuantFloat>(
    x: &[T],
    m: usize,
    weight: &PackedMatrix<'_>,
    gamma: f64,
    bias: Option<&[T]>,
    out: &mut [T],
) -> Result<(), KernelError> {
    bitlinear_many(
        x,
        m,
        None,
        &[Linear {
            weight,
            gamma,
            bias,
        }],
        &mut [out],
    )
}

/// One BitLinear layer of [`bitlinear_many`]: packed weights, their scale and a bias.
pub struct Linear<'w, 'a, T> {
    /// The packed ternary weights `(N, K)`.
    pub weight: &'w PackedMatrix<'a>,
    /// The per-tensor scale (W = gamma t).
    pub gamma: f64,
    /// `(N,)`, or none.
    pub bias: Option<&'w [T]>,
}

/// An RMS norm applied to x before quantization (BitNet's sub-norms and pre-norms):
///
/// ```text
/// r = 1 / sqrt(sum_k x_k^2 / K + eps)      in f64, rounded to T
/// x'_k = (x_k * r) * weight_k              in T
/// ```
pub struct RmsNorm<'a, T> {
    /// `(K,)` per-channel weights.
    pub weight: &'a [T],
    /// Added to the mean square.
    pub eps: f64,
}

impl<T: QuantFloat> RmsNorm<'_, T> {
    /// Writes the normed `x` into `out`.
    fn apply(&self, x: &[T], out: &mut [T]) {
        let squares = x.iter().fold(0.0f64, |acc, &v| {
            let v = v.to_f64();
            v.mul_add(v, acc)
        });
        let r = T::from_f64(1.0 / (squares / x.len() as f64 + self.eps).sqrt());
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(self.weight) {
            *o = (v * r) * w;
        }
    }
}

/// [`bitlinear`] of one `x` (`(m, K)`) through several layers of the same K and format (a
/// transformer's q/k/v projections), after an optional [`RmsNorm`] of x: x is normed and
/// quantized once and the weight chunks of all layers run in one parallel loop. `outs[i]` is
/// `(m, N_i)`; without a norm each equals the separate [`bitlinear`].
pub fn bitlinear_many<T: QuantFloat>(
    x: &[T],
    m: usize,
    norm: Option<&RmsNorm<'_, T>>,
    layers: &[Linear<'_, '_, T>],
    outs: &mut [&mut [T]],
) -> Result<(), KernelError> {
    let Some(first) = layers.first() else {
        return Ok(());
    };
    let layout = first.weight.layout;
    check_len("x", x, &[m, layout.k])?;
    check_k(&layout)?;
    if outs.len() != layers.len() {
        return Err(KernelError::value(
            "out",
            format!("expected {} outputs, got {}", layers.len(), outs.len()),
        ));
    }
    for (layer, out) in layers.iter().zip(outs.iter()) {
        check_layer(layer, &layout, m, out)?;
    }
    if let Some(norm) = norm {
        check_len("norm", norm.weight, &[layout.k])?;
        if !(norm.eps.is_finite() && norm.eps >= 0.0) {
            return Err(KernelError::value(
                "eps",
                format!("expected a finite value >= 0, got {}", norm.eps),
            ));
        }
    }
    let eps = T::from_f64(1e-5);
    let isa = simd::isa();
    let mut scales = vec![T::ZERO; m];
    let panels = Panels::try_from_rows(m, &layout, &mut scales, |i, q, scale| {
        let row = &x[i * layout.k..][..layout.k];
        *scale = match norm {
            None => simd::dispatch_on(isa, QuantizeRow { x: row, q, eps })?,
            Some(norm) => {
                let mut normed = vec![T::ZERO; layout.k];
                norm.apply(row, &mut normed);
                simd::dispatch_on(isa, QuantizeRow { x: &normed, q, eps })?
            }
        };
        Ok(())
    })?;
    let mut accs: Vec<Vec<i32>> = outs.iter().map(|out| vec![0i32; out.len()]).collect();
    let weights: Vec<&PackedMatrix<'_>> = layers.iter().map(|layer| layer.weight).collect();
    let mut acc_slices: Vec<&mut [i32]> = accs.iter_mut().map(|a| &mut a[..]).collect();
    multiply_many(&panels, &weights, &mut acc_slices);
    for ((layer, out), acc) in layers.iter().zip(outs.iter_mut()).zip(&accs) {
        let n = layer.weight.n;
        if n > 0 {
            out.par_chunks_mut(n)
                .zip(acc.par_chunks(n))
                .zip(scales.par_iter())
                .for_each(|((y, acc), &scale)| {
                    rescale_row(y, acc, layer.gamma / scale.to_f64(), layer.bias)
                });
        }
    }
    Ok(())
}

/// Checks one layer of [`bitlinear_many`] against the first one's `layout` and its output.
fn check_layer<T>(
    layer: &Linear<'_, '_, T>,
    layout: &Layout,
    m: usize,
    out: &[T],
) -> Result<(), KernelError> {
    let (weight, n) = (layer.weight, layer.weight.n);
    if weight.layout.k != layout.k || weight.layout.format != layout.format {
        return Err(KernelError::value(
            "weight",
            format!(
                "expected every layer with in_features {} in the same format, got {}",
                layout.k, weight.layout.k
            ),
        ));
    }
    check_len("out", out, &[m, n])?;
    if let Some(bias) = layer.bias {
        check_len("bias", bias, &[n])?;
    }
    if !(layer.gamma.is_finite() && layer.gamma > 0.0) {
        return Err(KernelError::value(
            "gamma",
            format!("expected a finite value > 0, got {}", layer.gamma),
        ));
    }
    Ok(())
}

/// `y = acc * factor (+ bias)`, computed in f64 and rounded once.
fn rescale_row<T: QuantFloat>(y: &mut [T], acc: &[i32], factor: f64, bias: Option<&[T]>) {
    match bias {
        None => {
            for (y, &a) in y.iter_mut().zip(acc) {
                *y = T::from_f64(f64::from(a) * factor);
            }
        }
        Some(bias) => {
            for ((y, &a), &b) in y.iter_mut().zip(acc).zip(bias) {
                *y = T::from_f64(f64::from(a) * factor + b.to_f64());
            }
        }
    }
}

fn check_k(layout: &Layout) -> Result<(), KernelError> {
    if (1..=MAX_K).contains(&layout.k) {
        Ok(())
    } else {
        Err(KernelError::value(
            "weight",
            format!(
                "expected 1 <= in_features <= {MAX_K} (beyond it int32 sums can overflow), got {}",
                layout.k
            ),
        ))
    }
}

/// Activation rows in kernel order, with their sums.
struct Panels {
    data: Vec<i8>,
    row_sums: Vec<i32>,
}

impl Panels {
    /// Builds the panels of `m` rows; `fill(i, row)` writes row i's K int8 values.
    fn from_rows(
        m: usize,
        layout: &Layout,
        fill: impl Fn(usize, &mut [i8]) + Sync,
    ) -> Result<Panels, KernelError> {
        Panels::try_from_rows(m, layout, &mut vec![(); m], |i, q, _| {
            fill(i, q);
            Ok(())
        })
    }

    /// Like [`Panels::from_rows`] with a fallible `fill(i, row, extra_i)`.
    fn try_from_rows<E: Send>(
        m: usize,
        layout: &Layout,
        extra: &mut [E],
        fill: impl Fn(usize, &mut [i8], &mut E) -> Result<(), KernelError> + Sync,
    ) -> Result<Panels, KernelError> {
        let len = layout.panel_len();
        let mut data = vec![0i8; checked_product("x", &[m, len])?];
        let mut row_sums = vec![0i32; m];
        // K >= 1 (see `check_k`), so every row has a non-empty panel.
        if len > 0 {
            data.par_chunks_mut(len)
                .zip(row_sums.par_iter_mut())
                .zip(extra.par_iter_mut())
                .enumerate()
                .try_for_each_init(
                    || vec![0i8; layout.k],
                    |q, (i, ((panel, sum), extra))| {
                        fill(i, q, extra)?;
                        *sum = q.iter().map(|&v| i32::from(v)).sum();
                        fill_panel(q, layout, panel);
                        Ok(())
                    },
                )?;
        }
        Ok(Panels { data, row_sums })
    }
}

/// `out[m, n] = sum_k t[n, k] q[m, k]`, weight rows split into parallel chunks.
fn multiply(panels: &Panels, weight: &PackedMatrix<'_>, out: &mut [i32]) {
    multiply_many(panels, &[weight], &mut [out]);
}

/// [`multiply`] for several weights at once: the chunks of all of them run in one parallel
/// loop (`outs[i]` is `(m, N_i)`).
fn multiply_many(panels: &Panels, weights: &[&PackedMatrix<'_>], outs: &mut [&mut [i32]]) {
    let m = panels.row_sums.len();
    if m == 0 {
        return;
    }
    let path = KernelPath::current();
    let mut jobs = Vec::new();
    for (weight, out) in weights.iter().zip(outs.iter_mut()) {
        let n = weight.n;
        if n == 0 {
            continue;
        }
        let rows = chunk_rows(n);
        let row_bytes = weight.layout.row_bytes();
        for (chunk, out) in split_columns(out, n, rows).into_iter().enumerate() {
            let first = chunk * rows;
            let count = rows.min(n - first);
            let data = &weight.data[first * row_bytes..(first + count) * row_bytes];
            jobs.push((weight.layout, data, out));
        }
    }
    jobs.into_par_iter().for_each(|(layout, weights, out)| {
        let job = ChunkJob {
            layout: &layout,
            weights,
            panels: &panels.data,
            row_sums: &panels.row_sums,
            out,
        };
        run_chunk(path, job);
    });
}

/// Weight rows per chunk: a multiple of [`TILE_COLS`], small enough for about four chunks per
/// thread, at most [`MAX_CHUNK_ROWS`].
fn chunk_rows(n: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads();
    let tiles = n
        .div_ceil(TILE_COLS)
        .div_ceil(tasks)
        .clamp(1, MAX_CHUNK_ROWS / TILE_COLS);
    tiles * TILE_COLS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Isa;
    use crate::ternary::kernels::KernelPath;
    use crate::ternary::pack::{pack, Format};

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn reference(trits: &[i8], q: &[i8], m: usize, n: usize, k: usize) -> Vec<i32> {
        let mut out = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: i64 = (0..k)
                    .map(|x| i64::from(trits[j * k + x]) * i64::from(q[i * k + x]))
                    .sum();
                out[i * n + j] = dot as i32;
            }
        }
        out
    }

    #[test]
    fn every_path_matches_the_reference() {
        let mut rng = Lcg(7);
        let mut paths = std::collections::BTreeSet::new();
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 257),
            (5, 9, 320),
            (6, 7, 1000),
            (2, 13, 2560),
        ] {
            let trits: Vec<i8> = (0..n * k).map(|_| (rng.next() % 3) as i8 - 1).collect();
            let q: Vec<i8> = (0..m * k).map(|_| rng.next() as i8).collect();
            let expected = reference(&trits, &q, m, n, k);
            for format in [Format::I2, Format::T1] {
                let packed = pack(&trits, n, k, format).unwrap();
                let weight = PackedMatrix::new(&packed, n, k, format).unwrap();
                for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                    simd::with_isa(isa, || {
                        paths.insert(KernelPath::current().name());
                        let mut out = vec![0i32; m * n];
                        ternary_matmul_int(&q, m, &weight, &mut out).unwrap();
                        assert_eq!(out, expected, "{format:?} {isa:?} m={m} n={n} k={k}");
                    });
                }
            }
        }
        // Every path this CPU has was exercised.
        assert!(paths.contains("scalar"));
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            assert!(paths.contains("avx2"));
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vbmi") {
            assert!(paths.contains("avx512_vnni"));
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            assert!(paths.contains("neon_dotprod"));
        }
    }

    #[test]
    fn gemv_stays_exact_past_2_pow_23_weights() {
        // Scaled "i2" plane accumulators would wrap here without their periodic shift back.
        let k = 8_400_000;
        let trits = vec![1i8; k];
        let q = vec![-128i8; k];
        let packed = pack(&trits, 1, k, Format::I2).unwrap();
        let weight = PackedMatrix::new(&packed, 1, k, Format::I2).unwrap();
        let mut out = [0i32];
        ternary_matmul_int(&q, 1, &weight, &mut out).unwrap();
        assert_eq!(out[0], -128 * k as i32);
    }

    #[test]
    fn extremes_do_not_overflow() {
        let (m, n, k) = (2, 2, 65536);
        let trits: Vec<i8> = (0..n * k).map(|i| if i < k { 1 } else { -1 }).collect();
        let q: Vec<i8> = (0..m * k).map(|i| if i < k { -128 } else { 127 }).collect();
        let expected = reference(&trits, &q, m, n, k);
        for format in [Format::I2, Format::T1] {
            let packed = pack(&trits, n, k, format).unwrap();
            let weight = PackedMatrix::new(&packed, n, k, format).unwrap();
            let mut out = vec![0i32; m * n];
            ternary_matmul_int(&q, m, &weight, &mut out).unwrap();
            assert_eq!(out, expected);
        }
    }
}
