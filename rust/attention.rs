//! Causal softmax attention: the quadratic baseline the recurrent kernels are measured against.
//!
//! For every batch row b and head h, with query, key and value rows q_i, k_j, v_j of the
//! `(L, D)` matrices of that head and a scale s (D^-1/2 by default):
//!
//! ```text
//! out_i = sum_{j <= i} exp(s q_i . k_j - m_i) v_j  /  sum_{j <= i} exp(s q_i . k_j - m_i)
//! ```
//!
//! where m_i is the largest score of row i, so that no exponential ever overflows.
//!
//! The kernel is tiled in the FlashAttention-2 order. One task owns a block of
//! [`QUERY_BLOCK`] queries of one head and walks the tiles of [`KEY_BLOCK`] keys up to its
//! diagonal, keeping for each query the running maximum m, the running denominator l and an
//! unnormalised output o (the online softmax):
//!
//! ```text
//! S = s K_tile Q^T;  m' = max(m, colmax S);  P = exp(S - m');  alpha = exp(m - m')
//! l' = alpha l + colsum P;   o' = alpha o + V_tile^T P;     finally out = o / l
//! ```
//!
//! Everything is kept transposed, queries along the contiguous axis: the softmax then runs
//! down columns with one SIMD lane per query (no horizontal reductions), and keys and values
//! are read straight from the inputs, never copied. Both products are computed by one
//! register-blocked micro-kernel ([`micro_gemm`]): `R` key rows (or value columns) times `W`
//! queries stay in registers while the shared dimension streams past, so every loaded vector
//! is reused `R` times and every broadcast `W / lanes` times. Scratch per task is three tiles
//! of O(QUERY_BLOCK (KEY_BLOCK + D)) — the (L, L) score matrix is never stored. Tasks are
//! independent and always cover the same queries, so the result does not depend on the
//! number of threads.

use crate::error::{check_len, KernelError};
use crate::simd::{self, Arch, Isa, Kernel, Real};
use rayon::prelude::*;

/// Queries of one task (a multiple of every micro-tile width).
pub const QUERY_BLOCK: usize = 64;
/// Keys per tile of a task's inner loop (a multiple of every micro-tile height).
pub const KEY_BLOCK: usize = 64;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch size.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Sequence length L (queries and keys).
    pub len: usize,
    /// Size of a query or key vector.
    pub dim_qk: usize,
    /// Size of a value vector (and of an output row).
    pub dim_v: usize,
}

/// Computes causal attention. `q`, `k` are `(batch, heads, L, dim_qk)`, `v` and `out` are
/// `(batch, heads, L, dim_v)`, all C-contiguous; `out` is overwritten.
pub fn causal_attention<T: Real>(
    dims: AttentionDims,
    q: &[T],
    k: &[T],
    v: &[T],
    scale: T,
    out: &mut [T],
) -> Result<(), KernelError> {
    let AttentionDims {
        batch,
        heads,
        len,
        dim_qk,
        dim_v,
    } = dims;
    check_len("q", q, &[batch, heads, len, dim_qk])?;
    check_len("k", k, &[batch, heads, len, dim_qk])?;
    check_len("v", v, &[batch, heads, len, dim_v])?;
    check_len("out", out, &[batch, heads, len, dim_v])?;
    if out.is_empty() {
        return Ok(());
    }
    let isa = simd::isa();
    let tile = MicroTile::choose::<T>(isa);
    let inputs = Inputs {
        q,
        k,
        v,
        scale,
        dims,
    };
    out.par_chunks_mut(len * dim_v)
        .enumerate()
        .for_each(|(head, head_out)| {
            head_out
                .par_chunks_mut(QUERY_BLOCK * dim_v)
                .enumerate()
                .for_each_init(
                    || Scratch::new(dims, tile),
                    |scratch, (block, out)| {
                        let job = BlockJob {
                            inputs,
                            head,
                            first_query: block * QUERY_BLOCK,
                            out,
                            scratch,
                            tile,
                        };
                        simd::dispatch_on(isa, job);
                    },
                );
        });
    Ok(())
}

/// The register tile of the micro-kernel: `rows` x `width` accumulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MicroTile {
    /// 8 x 32: 16 zmm accumulators of f32 on AVX-512 (of 32 registers).
    R8W32,
    /// 8 x 16: 16 zmm accumulators of f64 on AVX-512.
    R8W16,
    /// 4 x 16: 8 ymm accumulators of f32 on AVX2 (of 16 registers).
    R4W16,
    /// 4 x 8: f64 on AVX2, and the portable path.
    R4W8,
}

impl MicroTile {
    /// The largest tile whose accumulators fit in the registers of `isa` for `T`, with
    /// enough independent accumulators to hide the FMA latency.
    fn choose<T>(isa: Isa) -> MicroTile {
        let is_f32 = std::mem::size_of::<T>() == 4;
        match (isa, is_f32) {
            (Isa::Avx512, true) => MicroTile::R8W32,
            (Isa::Avx512, false) => MicroTile::R8W16,
            (Isa::Avx2, true) => MicroTile::R4W16,
            _ => MicroTile::R4W8,
        }
    }

    fn rows(self) -> usize {
        match self {
            MicroTile::R8W32 | MicroTile::R8W16 => 8,
            MicroTile::R4W16 | MicroTile::R4W8 => 4,
        }
    }
}

/// `n` rounded up to a multiple of `m`.
fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// The whole inputs; a task reads the rows of its head.
#[derive(Clone, Copy)]
struct Inputs<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    scale: T,
    dims: AttentionDims,
}

/// Per-task tiles, all with the task's queries along the contiguous axis; reused by the
/// tasks a rayon worker runs in turn.
struct Scratch<T> {
    /// `(dim_qk, QUERY_BLOCK)`: s Q^T.
    qt: Vec<T>,
    /// `(KEY_BLOCK, QUERY_BLOCK)`: scores S, then probabilities P.
    pt: Vec<T>,
    /// `(dim_v_padded, QUERY_BLOCK)`: the unnormalised output o^T.
    ot: Vec<T>,
    /// Running maxima m, per query.
    max: [T; QUERY_BLOCK],
    /// Running denominators l, per query.
    sum: [T; QUERY_BLOCK],
    /// `(R, dim_qk)`: a last group of fewer than `R` keys, padded.
    key_pad: Vec<T>,
    /// `(KEY_BLOCK, R)`: a last group of fewer than `R` value columns, padded.
    value_pad: Vec<T>,
    /// `dim_v` rounded up to the micro-tile height.
    dim_v_padded: usize,
}

impl<T: Real> Scratch<T> {
    fn new(dims: AttentionDims, tile: MicroTile) -> Self {
        let dim_v_padded = round_up(dims.dim_v, tile.rows());
        Scratch {
            qt: vec![T::ZERO; dims.dim_qk * QUERY_BLOCK],
            pt: vec![T::ZERO; KEY_BLOCK * QUERY_BLOCK],
            ot: vec![T::ZERO; dim_v_padded * QUERY_BLOCK],
            max: [T::NEG_INFINITY; QUERY_BLOCK],
            sum: [T::ZERO; QUERY_BLOCK],
            key_pad: vec![T::ZERO; tile.rows() * dims.dim_qk],
            value_pad: vec![T::ZERO; KEY_BLOCK * tile.rows()],
            dim_v_padded,
        }
    }
}

/// One block of queries of one head, compiled per ISA by [`simd::dispatch_on`].
struct BlockJob<'a, 'o, 's, T> {
    inputs: Inputs<'a, T>,
    /// `b * heads + h`.
    head: usize,
    first_query: usize,
    /// `(queries, dim_v)`: this block's rows of the output.
    out: &'o mut [T],
    scratch: &'s mut Scratch<T>,
    tile: MicroTile,
}

impl<T: Real> Kernel for BlockJob<'_, '_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        match self.tile {
            MicroTile::R8W32 => self.attend::<A, 8, 32>(),
            MicroTile::R8W16 => self.attend::<A, 8, 16>(),
            MicroTile::R4W16 => self.attend::<A, 4, 16>(),
            MicroTile::R4W8 => self.attend::<A, 4, 8>(),
        }
    }
}

/// One tile of keys as the task sees it.
#[derive(Clone, Copy)]
struct KeyTile {
    /// Index of the tile's first key.
    first: usize,
    /// Keys of the tile that some query of the task may see (j <= i, j < L).
    keys: usize,
    /// Queries of the task, rounded up to the micro-tile width (the padding ones are
    /// computed on zero queries and never stored).
    queries: usize,
}

impl<T: Real> BlockJob<'_, '_, '_, T> {
    /// Runs the online softmax over the key tiles up to the diagonal, then normalises.
    #[inline(always)]
    fn attend<A: Arch, const R: usize, const W: usize>(mut self) {
        let rows = self.out.len() / self.inputs.dims.dim_v;
        let queries = round_up(rows, W);
        self.load_queries(rows, queries);
        let scratch = &mut *self.scratch;
        scratch.ot.fill(T::ZERO);
        scratch.max.fill(T::NEG_INFINITY);
        scratch.sum.fill(T::ZERO);
        // One past the last query, which is also one past the last key any query sees.
        let end = self.first_query + rows;
        for first in (0..end).step_by(KEY_BLOCK) {
            let tile = KeyTile {
                first,
                keys: KEY_BLOCK.min(end - first),
                queries,
            };
            self.scores::<A, R, W>(tile);
            self.softmax_update(tile);
            self.accumulate::<A, R, W>(tile);
        }
        self.store(rows);
    }

    /// Writes s Q^T of this task's queries to `scratch.qt`; padding queries are zero.
    #[inline(always)]
    fn load_queries(&mut self, rows: usize, queries: usize) {
        let d = self.inputs.dims.dim_qk;
        let start = (self.head * self.inputs.dims.len + self.first_query) * d;
        let source = &self.inputs.q[start..start + rows * d];
        let scale = self.inputs.scale;
        for (i, query) in source.chunks_exact(d.max(1)).enumerate() {
            for (x, &value) in query.iter().enumerate() {
                self.scratch.qt[x * QUERY_BLOCK + i] = value * scale;
            }
        }
        for x in 0..d {
            self.scratch.qt[x * QUERY_BLOCK + rows..x * QUERY_BLOCK + queries].fill(T::ZERO);
        }
    }

    /// Whether key `key` is visible to query `first_query + i`.
    #[inline(always)]
    fn visible(&self, key: usize, i: usize) -> bool {
        key <= self.first_query + i
    }

    /// Keys of `tile` visible to query `first_query + i`.
    #[inline(always)]
    fn visible_keys(&self, tile: KeyTile, i: usize) -> usize {
        (self.first_query + i + 1)
            .saturating_sub(tile.first)
            .min(tile.keys)
    }

    /// S = K_tile (s Q^T) into `scratch.pt`, `[key][query]`. `R x W` tiles wholly above the
    /// diagonal are skipped (the softmax masks them). K is read in place, except a last group
    /// of fewer than `R` keys, which is copied with its last key repeated (and masked).
    #[inline(always)]
    fn scores<A: Arch, const R: usize, const W: usize>(&mut self, tile: KeyTile) {
        let AttentionDims { len, dim_qk: d, .. } = self.inputs.dims;
        if d == 0 {
            // Empty query and key vectors: every score is 0.
            self.scratch.pt.fill(T::ZERO);
            return;
        }
        let k = &self.inputs.k[(self.head * len + tile.first) * d..];
        let k = &k[..tile.keys * d];
        for r0 in (0..tile.keys).step_by(R) {
            let rows = if r0 + R <= tile.keys {
                &k[r0 * d..(r0 + R) * d]
            } else {
                let pad = &mut self.scratch.key_pad[..R * d];
                for (r, dst) in pad.chunks_exact_mut(d).enumerate() {
                    let j = (r0 + r).min(tile.keys - 1);
                    dst.copy_from_slice(&k[j * d..(j + 1) * d]);
                }
                &self.scratch.key_pad[..R * d]
            };
            let a = Strided {
                data: rows,
                row_stride: d,
                k_stride: 1,
            };
            for c0 in (0..tile.queries).step_by(W) {
                if !self.visible(tile.first + r0, c0 + W - 1) {
                    continue;
                }
                let mut acc = [[T::ZERO; W]; R];
                micro_gemm::<T, A, R, W>(&mut acc, a, &self.scratch.qt[c0..], QUERY_BLOCK, d);
                for (r, acc_row) in acc.iter().enumerate() {
                    let at = (r0 + r) * QUERY_BLOCK + c0;
                    self.scratch.pt[at..at + W].copy_from_slice(acc_row);
                }
            }
        }
    }

    /// Turns the scores of every query into probabilities against its updated running
    /// maximum and rescales its running sum and output: m' = max(m, max_j S_j),
    /// P_j = exp(S_j - m') for visible keys (0 for the others), alpha = exp(m - m'),
    /// l' = alpha l + sum_j P_j, o' = alpha o. Each step runs across queries, one per lane.
    #[inline(always)]
    fn softmax_update(&mut self, tile: KeyTile) {
        let n = tile.queries;
        let mut tile_max = [T::NEG_INFINITY; QUERY_BLOCK];
        for j in 0..tile.keys {
            let key = tile.first + j;
            let row = &mut self.scratch.pt[j * QUERY_BLOCK..j * QUERY_BLOCK + n];
            for (i, (s, m)) in row.iter_mut().zip(&mut tile_max[..n]).enumerate() {
                if key > self.first_query + i {
                    *s = T::NEG_INFINITY;
                }
                *m = m.max_nan(*s);
            }
        }
        let mut alpha = [T::ONE; QUERY_BLOCK];
        for i in 0..n {
            let new_max = self.scratch.max[i].max_nan(tile_max[i]);
            // exp(-inf - m') saturates to a tiny normal number rather than 0; on the first
            // tile l and o are still 0, so it adds nothing either way.
            alpha[i] = (self.scratch.max[i] - new_max).exp();
            self.scratch.max[i] = new_max;
        }
        let scratch = &mut *self.scratch;
        let max = &scratch.max[..n];
        let mut total = [T::ZERO; QUERY_BLOCK];
        for row in scratch.pt.chunks_exact_mut(QUERY_BLOCK).take(tile.keys) {
            for ((s, &m), t) in row[..n].iter_mut().zip(max).zip(&mut total[..n]) {
                // Masked scores are -inf: their exp saturates to a tiny number, replaced by 0.
                let p = (*s - m).exp();
                *s = if *s == T::NEG_INFINITY { T::ZERO } else { p };
                *t += *s;
            }
        }
        for ((l, &a), &t) in scratch.sum[..n]
            .iter_mut()
            .zip(&alpha[..n])
            .zip(&total[..n])
        {
            *l = a * *l + t;
        }
        for row in scratch.ot.chunks_exact_mut(QUERY_BLOCK) {
            for (o, &a) in row[..n].iter_mut().zip(&alpha[..n]) {
                *o *= a;
            }
        }
    }

    /// o^T += V_tile^T P: value columns (rows of o^T) `R` at a time, queries `W` at a time,
    /// each query tile stopping at the last key its queries can see. V is read in place,
    /// except a last group of fewer than `R` columns, which is copied with its last column
    /// repeated (the extra rows of o^T are never stored).
    #[inline(always)]
    fn accumulate<A: Arch, const R: usize, const W: usize>(&mut self, tile: KeyTile) {
        let AttentionDims { len, dim_v, .. } = self.inputs.dims;
        let v = &self.inputs.v[(self.head * len + tile.first) * dim_v..];
        let v = &v[..tile.keys * dim_v];
        for c0 in (0..tile.queries).step_by(W) {
            let depth = self.visible_keys(tile, c0 + W - 1);
            if depth == 0 {
                continue;
            }
            for r0 in (0..self.scratch.dim_v_padded).step_by(R) {
                let a = if r0 + R <= dim_v {
                    Strided {
                        data: &v[r0..],
                        row_stride: 1,
                        k_stride: dim_v,
                    }
                } else {
                    let pad = &mut self.scratch.value_pad[..depth * R];
                    for (value, dst) in v.chunks_exact(dim_v).zip(pad.chunks_exact_mut(R)) {
                        for (r, x) in dst.iter_mut().enumerate() {
                            *x = value[(r0 + r).min(dim_v - 1)];
                        }
                    }
                    Strided {
                        data: &self.scratch.value_pad[..depth * R],
                        row_stride: 1,
                        k_stride: R,
                    }
                };
                let mut acc = [[T::ZERO; W]; R];
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let at = (r0 + r) * QUERY_BLOCK + c0;
                    acc_row.copy_from_slice(&self.scratch.ot[at..at + W]);
                }
                micro_gemm::<T, A, R, W>(&mut acc, a, &self.scratch.pt[c0..], QUERY_BLOCK, depth);
                for (r, acc_row) in acc.iter().enumerate() {
                    let at = (r0 + r) * QUERY_BLOCK + c0;
                    self.scratch.ot[at..at + W].copy_from_slice(acc_row);
                }
            }
        }
    }

    /// out_i = o_i / l_i for the task's real queries (divided across queries, one per lane,
    /// then transposed into the output rows).
    #[inline(always)]
    fn store(&mut self, rows: usize) {
        let dim_v = self.inputs.dims.dim_v;
        let sum = &self.scratch.sum[..rows];
        for row in self.scratch.ot.chunks_exact_mut(QUERY_BLOCK).take(dim_v) {
            for (o, &l) in row[..rows].iter_mut().zip(sum) {
                *o = *o / l;
            }
        }
        for (i, out) in self.out.chunks_exact_mut(dim_v).enumerate() {
            for (c, dst) in out.iter_mut().enumerate() {
                *dst = self.scratch.ot[c * QUERY_BLOCK + i];
            }
        }
    }
}

/// The left operand of [`micro_gemm`]: element (r, k) at `data[r * row_stride + k * k_stride]`.
#[derive(Clone, Copy)]
struct Strided<'a, T> {
    data: &'a [T],
    row_stride: usize,
    k_stride: usize,
}

/// The micro-kernel: `acc[r][w] += sum_{k < depth} a(r, k) * b[k * b_stride + w]` for r < R,
/// w < W. `acc` stays in registers while the shared dimension streams past: each loaded row
/// of `b` is used by all `R` rows, each broadcast `a(r, k)` by all `W` columns.
#[inline(always)]
fn micro_gemm<T: Real, A: Arch, const R: usize, const W: usize>(
    acc: &mut [[T; W]; R],
    a: Strided<'_, T>,
    b: &[T],
    b_stride: usize,
    depth: usize,
) {
    if depth == 0 {
        return;
    }
    let (row_stride, k_stride) = (a.row_stride, a.k_stride);
    let a = &a.data[..(R - 1) * row_stride + (depth - 1) * k_stride + 1];
    let b = &b[..(depth - 1) * b_stride + W];
    for k in 0..depth {
        let b_row: &[T; W] = b[k * b_stride..k * b_stride + W]
            .try_into()
            .expect("a W-wide row");
        let a_k = &a[k * k_stride..];
        for r in 0..R {
            let a_rk = a_k[r * row_stride];
            for w in 0..W {
                acc[r][w] = T::fma::<A>(a_rk, b_row[w], acc[r][w]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Materialised scores, mask and softmax in f64: the definition.
    fn naive(dims: AttentionDims, q: &[f64], k: &[f64], v: &[f64], scale: f64) -> Vec<f64> {
        let AttentionDims {
            batch,
            heads,
            len,
            dim_qk: d,
            dim_v: dv,
        } = dims;
        let mut out = vec![0.0; batch * heads * len * dv];
        for head in 0..batch * heads {
            let base_qk = head * len * d;
            let base_v = head * len * dv;
            for i in 0..len {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let dot: f64 = (0..d)
                            .map(|x| q[base_qk + i * d + x] * k[base_qk + j * d + x])
                            .sum();
                        dot * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..dv {
                    let acc: f64 = (0..=i).map(|j| weights[j] * v[base_v + j * dv + c]).sum();
                    out[base_v + i * dv + c] = acc / total;
                }
            }
        }
        out
    }

    /// A deterministic pseudo-random sequence in [-1, 1).
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

    fn check(dims: AttentionDims, magnitude: f64) {
        let n_qk = dims.batch * dims.heads * dims.len * dims.dim_qk;
        let n_v = dims.batch * dims.heads * dims.len * dims.dim_v;
        let q: Vec<f64> = filled(n_qk, 1).iter().map(|x| x * magnitude).collect();
        let k: Vec<f64> = filled(n_qk, 2).iter().map(|x| x * magnitude).collect();
        let v = filled(n_v, 3);
        let scale = 1.0 / (dims.dim_qk.max(1) as f64).sqrt();
        let want = naive(dims, &q, &k, &v, scale);
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            simd::with_isa(isa, || check_on(dims, &q, &k, &v, &want));
        }
    }

    /// Checks float64 and float32 results on the ISA `with_isa` chose.
    fn check_on(dims: AttentionDims, q: &[f64], k: &[f64], v: &[f64], want: &[f64]) {
        let n_v = want.len();
        let scale = 1.0 / (dims.dim_qk.max(1) as f64).sqrt();
        let isa = simd::isa();
        let mut got = vec![f64::NAN; n_v];
        causal_attention(dims, q, k, v, scale, &mut got).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-12, "{dims:?} {isa:?}: {g} vs {w}");
        }
        let q32: Vec<f32> = q.iter().map(|&x| x as f32).collect();
        let k32: Vec<f32> = k.iter().map(|&x| x as f32).collect();
        let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        let mut got32 = vec![f32::NAN; n_v];
        causal_attention(dims, &q32, &k32, &v32, scale as f32, &mut got32).unwrap();
        // Scores of size ~magnitude^2 carry an absolute f32 error ~ magnitude^2 * 1e-7,
        // which moves the weights by as much: 1e-4 covers magnitude 3 with room to spare.
        for (g, w) in got32.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-4,
                "{dims:?} {isa:?} f32: {g} vs {w}"
            );
        }
    }

    #[test]
    fn matches_the_definition() {
        for (batch, heads, len, dim_qk, dim_v) in [
            (1, 1, 1, 1, 1),
            (1, 2, 5, 3, 7),
            (2, 3, 64, 16, 16),
            (1, 2, 65, 64, 64),
            (1, 1, 200, 33, 17),
            (1, 1, 130, 0, 5),
        ] {
            let dims = AttentionDims {
                batch,
                heads,
                len,
                dim_qk,
                dim_v,
            };
            check(dims, 1.0);
        }
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let dims = AttentionDims {
            batch: 1,
            heads: 1,
            len: 100,
            dim_qk: 8,
            dim_v: 8,
        };
        check(dims, 3.0);
        let q = vec![1.0e4_f32; 100 * 8];
        let v = filled(100 * 8, 4)
            .iter()
            .map(|&x| x as f32)
            .collect::<Vec<_>>();
        let mut out = vec![0.0_f32; 100 * 8];
        causal_attention(dims, &q, &q, &v, 1.0, &mut out).unwrap();
        assert!(out.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn empty_and_mismatched_inputs() {
        let dims = AttentionDims {
            batch: 2,
            heads: 1,
            len: 0,
            dim_qk: 4,
            dim_v: 4,
        };
        causal_attention::<f32>(dims, &[], &[], &[], 0.5, &mut []).unwrap();
        let dims = AttentionDims { len: 3, ..dims };
        let x = vec![0.0_f32; 24];
        let err = causal_attention(dims, &x, &x[..23], &x, 0.5, &mut x.clone()).unwrap_err();
        assert!(matches!(err, KernelError::Shape { name: "k", .. }));
    }
}
