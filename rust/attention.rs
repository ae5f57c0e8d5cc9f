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

use crate::error::{check_len, checked_product, KernelError};
use crate::simd::{self, Arch, Isa, Kernel, Real};
use rayon::prelude::*;

mod decode;

/// Queries of one task (a multiple of every micro-tile width).
pub const QUERY_BLOCK: usize = 64;
/// Keys per tile of a task's inner loop (a multiple of every micro-tile height).
pub const KEY_BLOCK: usize = 64;
/// Calls with at most this many queries per head run the decode kernel (split over key
/// blocks, all query heads of a key/value head together); longer ones the tiled kernel.
pub const DECODE_MAX_QUERIES: usize = 4;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch size.
    pub batch: usize,
    /// Query heads Hq (a multiple of `kv_heads`).
    pub heads: usize,
    /// Key/value heads Hkv: query head h reads key/value head h / (Hq / Hkv).
    pub kv_heads: usize,
    /// Queries per head Lq (at most `len_k`).
    pub len_q: usize,
    /// Keys (and values) per head Lk. Query i sits at position Lk - Lq + i.
    pub len_k: usize,
    /// Size of a query or key vector.
    pub dim_qk: usize,
    /// Size of a value vector (and of an output row).
    pub dim_v: usize,
}

impl AttentionDims {
    /// The square self-attention of `(batch, heads, len, dim)` inputs (Lq = Lk, Hq = Hkv).
    pub fn square(batch: usize, heads: usize, len: usize, dim_qk: usize, dim_v: usize) -> Self {
        AttentionDims {
            batch,
            heads,
            kv_heads: heads,
            len_q: len,
            len_k: len,
            dim_qk,
            dim_v,
        }
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Position of query 0: Lk - Lq (the causal mask is aligned bottom-right).
    pub fn offset(&self) -> usize {
        self.len_k - self.len_q
    }

    fn check(&self) -> Result<(), KernelError> {
        if self.len_q > self.len_k {
            return Err(KernelError::value(
                "q",
                format!(
                    "expected at most as many queries as keys, got Lq = {} > Lk = {}",
                    self.len_q, self.len_k
                ),
            ));
        }
        if self.kv_heads == 0 && self.heads > 0 || !self.heads.is_multiple_of(self.kv_heads.max(1))
        {
            return Err(KernelError::value(
                "k",
                format!(
                    "expected key/value heads dividing the {} query heads, got {}",
                    self.heads, self.kv_heads
                ),
            ));
        }
        Ok(())
    }
}

/// Keys or values of shape `(batch, kv_heads, Lk, width)` read in place: element
/// `(b, h, j, x)` is `data[b * batch_stride + h * head_stride + j * row_stride + x]`, so a
/// view of the first Lk rows of a larger preallocated cache is read without a copy.
#[derive(Clone, Copy, Debug)]
pub struct KvView<'a, T> {
    /// The elements, from `(0, 0, 0, 0)` to the last one the shape reaches.
    pub data: &'a [T],
    /// Elements between consecutive batch rows.
    pub batch_stride: usize,
    /// Elements between consecutive heads.
    pub head_stride: usize,
    /// Elements between consecutive positions.
    pub row_stride: usize,
}

impl<'a, T> KvView<'a, T> {
    /// A C-contiguous `(batch, kv_heads, len, width)` array.
    pub fn contiguous(data: &'a [T], kv_heads: usize, len: usize, width: usize) -> Self {
        KvView {
            data,
            batch_stride: kv_heads * len * width,
            head_stride: len * width,
            row_stride: width,
        }
    }

    /// Checks that every element of a `(batch, heads, len, width)` view lies in `data`.
    fn check(&self, name: &'static str, shape: [usize; 4]) -> Result<(), KernelError> {
        if shape.contains(&0) {
            return Ok(());
        }
        let [batch, heads, len, width] = shape;
        let span = [
            (batch - 1, self.batch_stride),
            (heads - 1, self.head_stride),
            (len - 1, self.row_stride),
        ]
        .iter()
        .try_fold(width, |acc, &(n, stride)| {
            n.checked_mul(stride).and_then(|x| x.checked_add(acc))
        })
        .ok_or_else(|| KernelError::value(name, format!("strides of {shape:?} overflow")))?;
        if span <= self.data.len() {
            Ok(())
        } else {
            Err(KernelError::Shape {
                name,
                expected: format!(
                    "{span} elements for shape {shape:?} with strides ({}, {}, {}, 1)",
                    self.batch_stride, self.head_stride, self.row_stride
                ),
                actual: format!("{} elements", self.data.len()),
            })
        }
    }

    /// The rows of key/value head `kv_head` of batch row `b`, from position `first` on.
    #[inline(always)]
    fn rows_from(&self, b: usize, kv_head: usize, first: usize) -> &'a [T] {
        &self.data[b * self.batch_stride + kv_head * self.head_stride + first * self.row_stride..]
    }
}

/// Computes causal attention. `q` is `(batch, heads, Lq, dim_qk)` and `out`
/// `(batch, heads, Lq, dim_v)`, C-contiguous; `k` and `v` are `(batch, kv_heads, Lk, dim_qk)`
/// and `(batch, kv_heads, Lk, dim_v)` views (see [`KvView`]). `out` is overwritten.
///
/// Query i of head h attends to keys `0 ..= Lk - Lq + i` of key/value head
/// `h / (heads / kv_heads)`. Up to [`DECODE_MAX_QUERIES`] queries per head run the decode
/// kernel, longer calls the tiled one; both depend on the shapes only, never on the thread
/// count or the batch size.
pub fn causal_attention<T: Real>(
    dims: AttentionDims,
    q: &[T],
    k: KvView<'_, T>,
    v: KvView<'_, T>,
    scale: T,
    out: &mut [T],
) -> Result<(), KernelError> {
    let AttentionDims {
        batch,
        heads,
        kv_heads,
        len_q,
        len_k,
        dim_qk,
        dim_v,
    } = dims;
    dims.check()?;
    check_len("q", q, &[batch, heads, len_q, dim_qk])?;
    k.check("k", [batch, kv_heads, len_k, dim_qk])?;
    v.check("v", [batch, kv_heads, len_k, dim_v])?;
    check_len("out", out, &[batch, heads, len_q, dim_v])?;
    checked_product("k", &[batch, kv_heads, len_k, dim_qk.max(dim_v)])?;
    if out.is_empty() {
        return Ok(());
    }
    let inputs = Inputs {
        q,
        k,
        v,
        scale,
        dims,
    };
    if len_q <= DECODE_MAX_QUERIES {
        decode::attend(inputs, out);
    } else {
        tiled(inputs, out);
    }
    Ok(())
}

/// The tiled kernel: one task per block of [`QUERY_BLOCK`] queries of one head.
fn tiled<T: Real>(inputs: Inputs<'_, T>, out: &mut [T]) {
    let dims = inputs.dims;
    let isa = simd::isa();
    let tile = MicroTile::choose::<T>(isa);
    out.par_chunks_mut(dims.len_q * dims.dim_v)
        .enumerate()
        .for_each(|(head, head_out)| {
            head_out
                .par_chunks_mut(QUERY_BLOCK * dims.dim_v)
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
    k: KvView<'a, T>,
    v: KvView<'a, T>,
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
    /// `b * heads + h` (query heads).
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
        // One past the last key any query of the task sees.
        let end = self.position(rows - 1) + 1;
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
        let start = (self.head * self.inputs.dims.len_q + self.first_query) * d;
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

    /// The position of the task's query i: Lk - Lq + first_query + i, the last key it sees.
    #[inline(always)]
    fn position(&self, i: usize) -> usize {
        self.inputs.dims.offset() + self.first_query + i
    }

    /// Whether key `key` is visible to the task's query i.
    #[inline(always)]
    fn visible(&self, key: usize, i: usize) -> bool {
        key <= self.position(i)
    }

    /// Keys of `tile` visible to the task's query i.
    #[inline(always)]
    fn visible_keys(&self, tile: KeyTile, i: usize) -> usize {
        (self.position(i) + 1)
            .saturating_sub(tile.first)
            .min(tile.keys)
    }

    /// Batch row and key/value head of the task's query head.
    #[inline(always)]
    fn kv_head(&self) -> (usize, usize) {
        let dims = self.inputs.dims;
        let (b, h) = (self.head / dims.heads, self.head % dims.heads);
        (b, h / dims.group())
    }

    /// S = K_tile (s Q^T) into `scratch.pt`, `[key][query]`. `R x W` tiles wholly above the
    /// diagonal are skipped (the softmax masks them). K is read in place, except a last group
    /// of fewer than `R` keys, which is copied with its last key repeated (and masked).
    #[inline(always)]
    fn scores<A: Arch, const R: usize, const W: usize>(&mut self, tile: KeyTile) {
        let d = self.inputs.dims.dim_qk;
        if d == 0 {
            // Empty query and key vectors: every score is 0.
            self.scratch.pt.fill(T::ZERO);
            return;
        }
        let (b, kv_head) = self.kv_head();
        let stride = self.inputs.k.row_stride;
        let k = self.inputs.k.rows_from(b, kv_head, tile.first);
        for r0 in (0..tile.keys).step_by(R) {
            let a = if r0 + R <= tile.keys {
                Strided {
                    data: &k[r0 * stride..],
                    row_stride: stride,
                    k_stride: 1,
                }
            } else {
                let pad = &mut self.scratch.key_pad[..R * d];
                for (r, dst) in pad.chunks_exact_mut(d).enumerate() {
                    let j = (r0 + r).min(tile.keys - 1);
                    dst.copy_from_slice(&k[j * stride..j * stride + d]);
                }
                Strided {
                    data: &self.scratch.key_pad[..R * d],
                    row_stride: d,
                    k_stride: 1,
                }
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
        let first_position = self.position(0);
        for j in 0..tile.keys {
            let key = tile.first + j;
            let row = &mut self.scratch.pt[j * QUERY_BLOCK..j * QUERY_BLOCK + n];
            for (i, (s, m)) in row.iter_mut().zip(&mut tile_max[..n]).enumerate() {
                if key > first_position + i {
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
        let dim_v = self.inputs.dims.dim_v;
        let (b, kv_head) = self.kv_head();
        let stride = self.inputs.v.row_stride;
        let v = self.inputs.v.rows_from(b, kv_head, tile.first);
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
                        k_stride: stride,
                    }
                } else {
                    let pad = &mut self.scratch.value_pad[..depth * R];
                    for (j, dst) in pad.chunks_exact_mut(R).enumerate() {
                        let value = &v[j * stride..j * stride + dim_v];
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

    /// Materialised scores, mask and softmax in f64: the definition. `k` and `v` are
    /// contiguous `(batch, kv_heads, Lk, .)`.
    fn naive(dims: AttentionDims, q: &[f64], k: &[f64], v: &[f64], scale: f64) -> Vec<f64> {
        let AttentionDims {
            batch,
            heads,
            len_q,
            len_k,
            dim_qk: d,
            dim_v: dv,
            ..
        } = dims;
        let mut out = vec![0.0; batch * heads * len_q * dv];
        for head in 0..batch * heads {
            let (b, h) = (head / heads, head % heads);
            let kv = b * dims.kv_heads + h / dims.group();
            let (base_k, base_v) = (kv * len_k * d, kv * len_k * dv);
            for i in 0..len_q {
                let row_q = (head * len_q + i) * d;
                let last = dims.offset() + i;
                let scores: Vec<f64> = (0..=last)
                    .map(|j| {
                        let dot: f64 = (0..d).map(|x| q[row_q + x] * k[base_k + j * d + x]).sum();
                        dot * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..dv {
                    let acc: f64 = (0..=last)
                        .map(|j| weights[j] * v[base_v + j * dv + c])
                        .sum();
                    out[(head * len_q + i) * dv + c] = acc / total;
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

    fn to_f32(x: &[f64]) -> Vec<f32> {
        x.iter().map(|&x| x as f32).collect()
    }

    /// `x` (`(heads, len, width)`, heads = batch x kv_heads) copied into the first `len` rows
    /// of a cache of `max_len` rows (NaN elsewhere, which the kernel must never read).
    fn in_cache<T: Real>(
        x: &[T],
        heads: usize,
        len: usize,
        max_len: usize,
        width: usize,
    ) -> Vec<T> {
        let mut cache = vec![T::from_f64(f64::NAN); heads * max_len * width];
        for h in 0..heads {
            let src = &x[h * len * width..(h + 1) * len * width];
            cache[h * max_len * width..][..len * width].copy_from_slice(src);
        }
        cache
    }

    fn run<T: Real>(
        dims: AttentionDims,
        q: &[T],
        k: &[T],
        v: &[T],
        scale: T,
        max_len: usize,
    ) -> Vec<T> {
        let (kvh, lk) = (dims.kv_heads, dims.len_k);
        let kc = in_cache(k, dims.batch * kvh, lk, max_len, dims.dim_qk);
        let vc = in_cache(v, dims.batch * kvh, lk, max_len, dims.dim_v);
        let kview = KvView::contiguous(&kc, kvh, max_len, dims.dim_qk);
        let vview = KvView::contiguous(&vc, kvh, max_len, dims.dim_v);
        let mut out =
            vec![T::from_f64(f64::NAN); dims.batch * dims.heads * dims.len_q * dims.dim_v];
        causal_attention(dims, q, kview, vview, scale, &mut out).unwrap();
        out
    }

    fn check(dims: AttentionDims, magnitude: f64) {
        let n_q = dims.batch * dims.heads * dims.len_q * dims.dim_qk;
        let n_k = dims.batch * dims.kv_heads * dims.len_k * dims.dim_qk;
        let n_v = dims.batch * dims.kv_heads * dims.len_k * dims.dim_v;
        let q: Vec<f64> = filled(n_q, 1).iter().map(|x| x * magnitude).collect();
        let k: Vec<f64> = filled(n_k, 2).iter().map(|x| x * magnitude).collect();
        let v = filled(n_v, 3);
        let want = naive(dims, &q, &k, &v, 1.0 / (dims.dim_qk.max(1) as f64).sqrt());
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            simd::with_isa(isa, || check_on(dims, &q, &k, &v, &want));
        }
    }

    /// Checks float64 and float32 results, reading k and v from a cache of exactly Lk
    /// positions and from one with spare ones, on the ISA `with_isa` chose.
    fn check_on(dims: AttentionDims, q: &[f64], k: &[f64], v: &[f64], want: &[f64]) {
        let scale = 1.0 / (dims.dim_qk.max(1) as f64).sqrt();
        let isa = simd::isa();
        for max_len in [dims.len_k, dims.len_k + 3] {
            let got = run(dims, q, k, v, scale, max_len);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-12, "{dims:?} {isa:?}: {g} vs {w}");
            }
            let got32 = run(
                dims,
                &to_f32(q),
                &to_f32(k),
                &to_f32(v),
                scale as f32,
                max_len,
            );
            // Scores of size ~magnitude^2 carry an absolute f32 error ~ magnitude^2 * 1e-7,
            // which moves the weights by as much: 1e-4 covers magnitude 3 with room to spare.
            for (g, w) in got32.iter().zip(want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-4,
                    "{dims:?} {isa:?} f32: {g} vs {w}"
                );
            }
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
            check(AttentionDims::square(batch, heads, len, dim_qk, dim_v), 1.0);
        }
    }

    #[test]
    fn fewer_queries_than_keys_and_grouped_heads() {
        for (batch, heads, kv_heads, len_q, len_k, dim) in [
            (1, 1, 1, 1, 1, 4),
            (2, 4, 1, 1, 300, 9),
            (1, 5, 1, 2, 70, 16),
            (1, 10, 2, 3, 600, 33),
            (2, 4, 4, 4, 257, 8),
            (1, 4, 1, 17, 130, 7),
            (1, 5, 5, 65, 200, 16),
            (1, 2, 1, 100, 100, 5),
        ] {
            let dims = AttentionDims {
                batch,
                heads,
                kv_heads,
                len_q,
                len_k,
                dim_qk: dim,
                dim_v: dim + 1,
            };
            check(dims, 1.0);
        }
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let dims = AttentionDims::square(1, 1, 100, 8, 8);
        check(dims, 3.0);
        check(AttentionDims { len_q: 1, ..dims }, 3.0);
        let q = vec![1.0e4_f32; 100 * 8];
        let v = to_f32(&filled(100 * 8, 4));
        for len_q in [100, 1] {
            let dims = AttentionDims { len_q, ..dims };
            let out = run(dims, &q[..len_q * 8], &q, &v, 1.0, 100);
            assert!(out.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn results_do_not_depend_on_the_batch() {
        let dims = AttentionDims {
            batch: 3,
            heads: 4,
            kv_heads: 2,
            len_q: 1,
            len_k: 700,
            dim_qk: 16,
            dim_v: 16,
        };
        let q = to_f32(&filled(3 * 4 * 16, 5));
        let k = to_f32(&filled(3 * 2 * 700 * 16, 6));
        let v = to_f32(&filled(3 * 2 * 700 * 16, 7));
        let all = run(dims, &q, &k, &v, 0.25, 700);
        let one = AttentionDims { batch: 1, ..dims };
        let last = run(
            one,
            &q[2 * 64..],
            &k[2 * 22400..],
            &v[2 * 22400..],
            0.25,
            700,
        );
        assert_eq!(&all[2 * 64..], &last[..]);
    }

    #[test]
    fn empty_and_mismatched_inputs() {
        let dims = AttentionDims::square(2, 1, 0, 4, 4);
        let empty = KvView::contiguous(&[][..], 1, 0, 4);
        causal_attention::<f32>(dims, &[], empty, empty, 0.5, &mut []).unwrap();
        let dims = AttentionDims::square(2, 1, 3, 4, 4);
        let x = vec![0.0_f32; 24];
        let short = KvView::contiguous(&x[..23], 1, 3, 4);
        let full = KvView::contiguous(&x[..], 1, 3, 4);
        let err = causal_attention(dims, &x, short, full, 0.5, &mut x.clone()).unwrap_err();
        assert!(matches!(err, KernelError::Shape { name: "k", .. }));
        let long_q = AttentionDims { len_q: 4, ..dims };
        let err = causal_attention(long_q, &[0.0; 32], full, full, 0.5, &mut [0.0; 32]);
        assert!(matches!(err, Err(KernelError::Value { name: "q", .. })));
        let bad_group = AttentionDims {
            heads: 3,
            kv_heads: 2,
            batch: 1,
            ..dims
        };
        let err = causal_attention(bad_group, &[0.0; 36], full, full, 0.5, &mut [0.0; 36]);
        assert!(matches!(err, Err(KernelError::Value { name: "k", .. })));
    }
}
