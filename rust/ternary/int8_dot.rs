//! Exact int8 x int8 dot products for the int8 matmul with quantized activations, on the
//! ternary kernels' code paths ([`KernelPath`]):
//!
//! ```text
//! dot[r][n] = sum_k q[r][k] c[n][k]          q in [-128, 127], c in [-127, 127], exact in i32
//! ```
//!
//! - AVX-512 VNNI: `vpdpbusd` multiplies unsigned by signed bytes, so the codes go in shifted,
//!   `c + 128` (an XOR with 0x80), and the caller's correction `128 sum_k q[r][k]` is
//!   subtracted: `sum (c + 128) q - 128 sum q = sum c q`. Lanes wrap in i32; the true result
//!   fits (|c q| <= 127 * 128 per term, K <= [`MAX_K`]), so the wrapped difference is exact.
//!   Each block of codes is loaded once for up to [`ROWS`] activation rows.
//! - AVX2: `vpmaddubsw` (u8 x s8, adjacent pairs summed into i16 with saturation) on |q| and
//!   `c sign(q)` (`vpsignb`): a pair is at most 2 * 128 * 127 = 32512 < 32767, so it never
//!   saturates; `vpmaddwd` by ones widens the pairs to i32.
//! - portable (and aarch64): plain Rust i32 sums.
//!
//! All paths return the same integers.

use super::kernels::KernelPath;

/// The largest K whose exact dot products fit in i32: 127 * 128 * K < 2^31.
pub const MAX_K: usize = (i32::MAX as usize) / (127 * 128);

/// Activation rows a tile multiplies by each block of codes.
pub const ROWS: usize = 4;

/// `dots[r * codes_rows + n] = sum_k q[r][k] c[n][k]` for the `rows` activation rows `q`
/// (`rows * k` bytes, with their sums `q_sums`) and the weight rows `codes` (`n * k` bytes),
/// on `path`.
pub fn dots(path: KernelPath, q: &[i8], q_sums: &[i32], codes: &[i8], k: usize, out: &mut [i32]) {
    match path {
        // SAFETY: `KernelPath::current` returns this path only when the CPU has the features
        // (and `supported` checks again, for a path chosen on another thread).
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512Vnni if avx512::supported() => unsafe {
            avx512::dots(q, q_sums, codes, k, out)
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 if is_x86_feature_detected!("avx2") => unsafe {
            avx2::dots(q, codes, k, out)
        },
        _ => portable_dots(q, codes, k, out),
    }
}

/// Every activation row against every weight row, one dot product at a time.
fn portable_dots(q: &[i8], codes: &[i8], k: usize, out: &mut [i32]) {
    let n = codes.len() / k;
    for (q, out) in q.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        for (o, c) in out.iter_mut().zip(codes.chunks_exact(k)) {
            *o = portable_dot(q, c);
        }
    }
}

/// `sum_k q[k] c[k]` (exact for k <= [`MAX_K`]); vectorises for the target's baseline.
#[inline(always)]
pub fn portable_dot(q: &[i8], c: &[i8]) -> i32 {
    q.iter().zip(c).fold(0i32, |acc, (&q, &c)| {
        acc.wrapping_add(i32::from(q) * i32::from(c))
    })
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{portable_dot, ROWS};
    use std::arch::x86_64::*;

    /// Bytes per vector.
    const W: usize = 64;

    /// Whether this CPU has the features (those of the ternary VNNI kernel, so that both
    /// kernels share [`super::KernelPath::Avx512Vnni`]).
    pub fn supported() -> bool {
        crate::ternary::kernels::avx512_vnni_supported()
    }

    /// See [`super::dots`].
    ///
    /// # Safety
    /// The CPU must pass [`supported`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dots(q: &[i8], q_sums: &[i32], codes: &[i8], k: usize, out: &mut [i32]) {
        let (m, n) = (q_sums.len(), codes.len() / k);
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(ROWS);
            let q = &q[r0 * k..(r0 + rows) * k];
            let sums = &q_sums[r0..r0 + rows];
            let out = &mut out[r0 * n..(r0 + rows) * n];
            match rows {
                1 => rows_dots::<1>(q, sums, codes, k, out),
                2 => rows_dots::<2>(q, sums, codes, k, out),
                3 => rows_dots::<3>(q, sums, codes, k, out),
                _ => rows_dots::<ROWS>(q, sums, codes, k, out),
            }
            r0 += rows;
        }
    }

    /// R activation rows against every weight row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn rows_dots<const R: usize>(
        q: &[i8],
        sums: &[i32],
        codes: &[i8],
        k: usize,
        out: &mut [i32],
    ) {
        let n = codes.len() / k;
        let q_rows: [&[i8]; R] = std::array::from_fn(|r| &q[r * k..(r + 1) * k]);
        for (j, c) in codes.chunks_exact(k).enumerate() {
            let raw = if R == 1 {
                [dot_one(q_rows[0], c); R]
            } else {
                dot_rows::<R>(&q_rows, c)
            };
            for r in 0..R {
                // sum (c + 128) q - 128 sum q = sum c q (wrapping: see the module docs).
                out[r * n + j] = raw[r].wrapping_sub(sums[r].wrapping_mul(128));
            }
        }
    }

    /// `sum_k (c[k] + 128) q[k]` with four independent accumulators (wrapping).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn dot_one(q: &[i8], c: &[i8]) -> i32 {
        let k = q.len();
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut acc = [_mm512_setzero_si512(); 4];
        let (qp, cp) = (q.as_ptr(), c.as_ptr());
        let body = k - k % (4 * W);
        for at in (0..body).step_by(4 * W) {
            for (j, acc) in acc.iter_mut().enumerate() {
                let cv = _mm512_loadu_si512(cp.add(at + j * W) as *const _);
                let qv = _mm512_loadu_si512(qp.add(at + j * W) as *const _);
                *acc = _mm512_dpbusd_epi32(*acc, _mm512_xor_si512(cv, flip), qv);
            }
        }
        let mut at = body;
        while at < k {
            // Bytes past k load as 0: q = 0 there, so (0 ^ 0x80) * 0 adds nothing.
            let mask = if k - at >= W {
                u64::MAX
            } else {
                (1u64 << (k - at)) - 1
            };
            let cv = _mm512_maskz_loadu_epi8(mask, cp.add(at));
            let qv = _mm512_maskz_loadu_epi8(mask, qp.add(at));
            acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_xor_si512(cv, flip), qv);
            at += W;
        }
        let sum = _mm512_add_epi32(
            _mm512_add_epi32(acc[0], acc[1]),
            _mm512_add_epi32(acc[2], acc[3]),
        );
        _mm512_reduce_add_epi32(sum)
    }

    /// `sum_k (c[k] + 128) q_r[k]` for each of R rows: each block of codes is loaded and
    /// shifted once (wrapping).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn dot_rows<const R: usize>(q: &[&[i8]; R], c: &[i8]) -> [i32; R] {
        let k = c.len();
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut acc = [_mm512_setzero_si512(); R];
        let body = k - k % W;
        for at in (0..body).step_by(W) {
            let cv = _mm512_xor_si512(_mm512_loadu_si512(c.as_ptr().add(at) as *const _), flip);
            for (acc, q) in acc.iter_mut().zip(q) {
                let qv = _mm512_loadu_si512(q.as_ptr().add(at) as *const _);
                *acc = _mm512_dpbusd_epi32(*acc, cv, qv);
            }
        }
        let mut out = [0i32; R];
        for ((o, acc), q) in out.iter_mut().zip(&acc).zip(q) {
            // The tail in plain integers: sum (c + 128) q over it.
            let tail = portable_dot(&q[body..], &c[body..])
                .wrapping_add(128i32.wrapping_mul(q[body..].iter().map(|&v| i32::from(v)).sum()));
            *o = _mm512_reduce_add_epi32(*acc).wrapping_add(tail);
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::portable_dot;
    use std::arch::x86_64::*;

    /// Bytes per vector.
    const W: usize = 32;

    /// See [`super::dots`].
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dots(q: &[i8], codes: &[i8], k: usize, out: &mut [i32]) {
        let n = codes.len() / k;
        for (q, out) in q.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(k)) {
                *o = dot(q, c);
            }
        }
    }

    /// `sum_k q[k] c[k]`: `vpmaddubsw(|q|, c sign(q))` (never saturates, see the module docs),
    /// widened by `vpmaddwd`, in four independent accumulators.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn dot(q: &[i8], c: &[i8]) -> i32 {
        let k = q.len();
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 4];
        let (qp, cp) = (q.as_ptr(), c.as_ptr());
        let body = k - k % (4 * W);
        for at in (0..body).step_by(4 * W) {
            for (j, acc) in acc.iter_mut().enumerate() {
                let qv = _mm256_loadu_si256(qp.add(at + j * W) as *const __m256i);
                let cv = _mm256_loadu_si256(cp.add(at + j * W) as *const __m256i);
                let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(qv), _mm256_sign_epi8(cv, qv));
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
            }
        }
        let sum = _mm256_add_epi32(
            _mm256_add_epi32(acc[0], acc[1]),
            _mm256_add_epi32(acc[2], acc[3]),
        );
        let half = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        let pair = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
        let one = _mm_add_epi32(pair, _mm_shuffle_epi32::<1>(pair));
        _mm_cvtsi128_si32(one).wrapping_add(portable_dot(&q[body..], &c[body..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{self, Isa};

    fn bytes(len: usize, seed: u64, lo: i32) -> Vec<i8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (lo + (state >> 40) as i32 % (128 - lo)) as i8
            })
            .collect()
    }

    fn reference(q: &[i8], codes: &[i8], k: usize) -> Vec<i32> {
        let mut out = Vec::new();
        for q in q.chunks(k) {
            for c in codes.chunks(k) {
                let dot: i64 = q
                    .iter()
                    .zip(c)
                    .map(|(&a, &b)| i64::from(a) * i64::from(b))
                    .sum();
                out.push(dot as i32);
            }
        }
        out
    }

    #[test]
    fn every_path_gives_the_exact_integers() {
        let mut paths = std::collections::BTreeSet::new();
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 3, 63),
            (2, 5, 64),
            (3, 4, 65),
            (4, 7, 257),
            (5, 6, 1000),
            (9, 3, 2560),
        ] {
            let q = bytes(m * k, 1 + k as u64, -128);
            let codes = bytes(n * k, 2 + n as u64, -127);
            let sums: Vec<i32> = q
                .chunks(k)
                .map(|r| r.iter().map(|&v| i32::from(v)).sum())
                .collect();
            let want = reference(&q, &codes, k);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                simd::with_isa(isa, || {
                    let path = KernelPath::current();
                    paths.insert(path.name());
                    let mut out = vec![0i32; m * n];
                    dots(path, &q, &sums, &codes, k, &mut out);
                    assert_eq!(out, want, "{path:?} {m} {n} {k}");
                });
            }
        }
        assert!(paths.contains("scalar"));
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            assert!(paths.contains("avx2"));
        }
        #[cfg(target_arch = "x86_64")]
        if crate::ternary::kernels::avx512_vnni_supported() {
            assert!(paths.contains("avx512_vnni"));
        }
    }

    #[test]
    fn extremes_at_max_k_do_not_overflow() {
        // -128 * -127 per term over MAX_K terms: the largest positive sum there is; and
        // -128 * 127 for the most negative.
        let k = MAX_K;
        let q = vec![-128i8; 2 * k];
        let mut codes = vec![-127i8; k];
        codes.extend(vec![127i8; k]);
        let sums = vec![-128 * k as i32; 2];
        let want = [127 * 128 * k as i32, -127 * 128 * k as i32];
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            simd::with_isa(isa, || {
                let path = KernelPath::current();
                let mut out = vec![0i32; 4];
                dots(path, &q, &sums, &codes, k, &mut out);
                assert_eq!(out, [want[0], want[1], want[0], want[1]], "{path:?}");
            });
        }
    }
}
