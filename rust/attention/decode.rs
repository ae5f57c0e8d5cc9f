//! The decode kernel: few queries per head (Lq <= [`super::DECODE_MAX_QUERIES`]) against a
//! long key/value cache, split over key blocks (flash-decoding).
//!
//! The `G = Hq / Hkv` query heads that share a key/value head are processed together, so
//! every key and value row is read once per step, straight from the (possibly strided)
//! cache. The keys of each (batch row, key/value head) are cut into splits of [`SPLIT_KEYS`];
//! each split is an independent task that runs the online softmax over its keys and leaves,
//! for each of its `G Lq` query rows, a partial maximum m_s, denominator l_s and unnormalised
//! output o_s:
//!
//! ```text
//! m_s = max_{j in s, j <= p} S_j      l_s = sum_{j in s, j <= p} exp(S_j - m_s)
//! o_s = sum_{j in s, j <= p} exp(S_j - m_s) v_j          S_j = scale q . k_j
//! ```
//!
//! (p is the row's position, Lk - Lq + i). The splits are then merged with their
//! log-sum-exp weights:
//!
//! ```text
//! M = max_s m_s;   out = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s
//! ```
//!
//! The split boundaries depend on Lk only, so the result depends neither on the number of
//! threads nor on the batch size.

use super::{micro_gemm, Inputs, Strided, KEY_BLOCK};
use crate::parallel;
use crate::rwkv::prefetch;
use crate::simd::{self, Arch, Kernel, Real};

/// Keys per split (a multiple of [`KEY_BLOCK`]): with 5 key/value heads a 512-key cache
/// already gives 10 tasks.
pub const SPLIT_KEYS: usize = 4 * KEY_BLOCK;

/// Lanes of the dot products and axpys (a multiple of every vector width).
const LANES: usize = 16;

/// Runs the decode kernel on `inputs`, writing `out` (`(batch, heads, Lq, dim_v)`).
pub(super) fn attend<T: Real>(inputs: Inputs<'_, T>, out: &mut [T]) {
    let dims = inputs.dims;
    let rows = dims.group() * dims.len_q;
    let splits = dims.len_k.div_ceil(SPLIT_KEYS).max(1);
    let tasks = dims.batch * dims.kv_heads * splits;
    let mut partial_o = vec![T::ZERO; tasks * rows * dims.dim_v];
    let mut partial_ml = vec![(T::NEG_INFINITY, T::ZERO); tasks * rows];
    let mut items = Vec::with_capacity(tasks);
    let (mut o_rest, mut ml_rest) = (&mut partial_o[..], &mut partial_ml[..]);
    for task in 0..tasks {
        let (o, o_tail) = std::mem::take(&mut o_rest).split_at_mut(rows * dims.dim_v);
        let (ml, ml_tail) = std::mem::take(&mut ml_rest).split_at_mut(rows);
        (o_rest, ml_rest) = (o_tail, ml_tail);
        items.push((task, (o, ml)));
    }
    let work = dims.batch * dims.heads * dims.len_q * dims.len_k * (dims.dim_qk + dims.dim_v);
    let isa = simd::isa();
    parallel::for_each_init(
        items,
        work,
        || Scratch::new(rows, dims.dim_qk, dims.dim_v),
        |scratch, (task, (o, ml))| {
            let (pair, split) = (task / splits, task % splits);
            let first_key = split * SPLIT_KEYS;
            let job = SplitJob {
                inputs,
                b: pair / dims.kv_heads,
                kv_head: pair % dims.kv_heads,
                first_key,
                end_key: (first_key + SPLIT_KEYS).min(dims.len_k),
                o,
                ml,
                scratch,
            };
            simd::dispatch_on(isa, job);
        },
    );
    merge(inputs, splits, &partial_o, &partial_ml, out);
}

/// Query rows processed together: every loaded key or value vector serves this many rows.
const ROWS: usize = 4;
/// Value columns per call of the micro-kernel.
const COLUMNS: usize = 16;

/// Per-task buffers, reused by the tasks a worker runs in turn. Rows are padded to a
/// multiple of [`ROWS`] (padding rows have zero queries and are never stored).
struct Scratch<T> {
    /// `(rows, dim_qk)`: the task's queries times the scale.
    q: Vec<T>,
    /// `(rows, KEY_BLOCK)`: scores, then probabilities (0 past a row's last key), of one
    /// block of keys.
    s: Vec<T>,
    /// `(rows, dim_v)`: the unnormalised outputs.
    o: Vec<T>,
    /// `(rows,)`: keys of the block each row sees.
    visible: Vec<usize>,
}

impl<T: Real> Scratch<T> {
    fn new(rows: usize, dim_qk: usize, dim_v: usize) -> Self {
        let rows = rows.div_ceil(ROWS) * ROWS;
        Scratch {
            q: vec![T::ZERO; rows * dim_qk],
            s: vec![T::ZERO; rows * KEY_BLOCK],
            o: vec![T::ZERO; rows * dim_v],
            visible: vec![0; rows],
        }
    }
}

/// One split of the keys of one (batch row, key/value head), for all its query rows.
struct SplitJob<'a, 'o, 's, T> {
    inputs: Inputs<'a, T>,
    b: usize,
    kv_head: usize,
    first_key: usize,
    end_key: usize,
    /// `(rows, dim_v)`: the unnormalised outputs o_s.
    o: &'o mut [T],
    /// `(rows,)`: (m_s, l_s).
    ml: &'o mut [(T, T)],
    scratch: &'s mut Scratch<T>,
}

impl<T: Real> Kernel for SplitJob<'_, '_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        self.attend::<A>()
    }
}

impl<T: Real> SplitJob<'_, '_, '_, T> {
    /// Row r of the task is query `r % Lq` of query head `kv_head G + r / Lq`; it sits at
    /// position Lk - Lq + r % Lq.
    #[inline(always)]
    fn position(&self, r: usize) -> usize {
        self.inputs.dims.offset() + r % self.inputs.dims.len_q
    }

    #[inline(always)]
    fn attend<A: Arch>(mut self) {
        let dims = self.inputs.dims;
        let (dv, rows) = (dims.dim_v, self.ml.len());
        self.load_queries();
        self.scratch.o.fill(T::ZERO);
        self.ml.fill((T::NEG_INFINITY, T::ZERO));
        for first in (self.first_key..self.end_key).step_by(KEY_BLOCK) {
            let n = KEY_BLOCK.min(self.end_key - first);
            for r in 0..rows {
                self.scratch.visible[r] = (self.position(r) + 1).saturating_sub(first).min(n);
            }
            self.scores::<A>(first, n);
            for r in 0..rows {
                let seen = self.scratch.visible[r];
                let p = &mut self.scratch.s[r * KEY_BLOCK..(r + 1) * KEY_BLOCK];
                p[seen..].fill(T::ZERO);
                if seen > 0 {
                    let o = &mut self.scratch.o[r * dv..(r + 1) * dv];
                    self.ml[r] = softmax_update::<T, A>(self.ml[r], &mut p[..seen], o);
                }
            }
            self.accumulate::<A>(first, n);
        }
        self.o.copy_from_slice(&self.scratch.o[..rows * dv]);
    }

    /// S[r][j] = (scale q_r) . k_j for the keys `first..first + n`, [`ROWS`] rows at a time, so
    /// that each loaded piece of a key serves all of them.
    #[inline(always)]
    fn scores<A: Arch>(&mut self, first: usize, n: usize) {
        let d = self.inputs.dims.dim_qk;
        let k = self.inputs.k.rows_from(self.b, self.kv_head, first);
        let stride = self.inputs.k.row_stride;
        let Scratch { q, s, .. } = &mut *self.scratch;
        if d == 0 {
            // Empty query and key vectors: every score is 0.
            s.fill(T::ZERO);
            return;
        }
        let v = self.inputs.v.rows_from(self.b, self.kv_head, first);
        let (v_stride, dv) = (self.inputs.v.row_stride, self.inputs.dims.dim_v);
        for (group, (q, s)) in q
            .chunks_exact(ROWS * d)
            .zip(s.chunks_exact_mut(ROWS * KEY_BLOCK))
            .enumerate()
        {
            for j in 0..n {
                if group == 0 {
                    // The values of these keys are read next, column block by column block
                    // (a stride the hardware prefetchers follow poorly): start loading them,
                    // and the keys of the next block.
                    prefetch(&v[j * v_stride..j * v_stride + dv]);
                    let ahead = (j + KEY_BLOCK) * stride;
                    if ahead + d <= k.len() {
                        prefetch(&k[ahead..ahead + d]);
                    }
                }
                let dots = dot_rows::<T, A>(q, &k[j * stride..][..d]);
                for (r, &x) in dots.iter().enumerate() {
                    s[r * KEY_BLOCK + j] = x;
                }
            }
        }
    }

    /// o_r += sum_j P[r][j] v_j over the keys `first..first + n`: [`ROWS`] rows by
    /// [`COLUMNS`] value columns in registers while the keys stream past.
    #[inline(always)]
    fn accumulate<A: Arch>(&mut self, first: usize, n: usize) {
        let dv = self.inputs.dims.dim_v;
        let v = self.inputs.v.rows_from(self.b, self.kv_head, first);
        let stride = self.inputs.v.row_stride;
        let body = dv - dv % COLUMNS;
        let Scratch { s, o, .. } = &mut *self.scratch;
        for (p, o) in s
            .chunks_exact(ROWS * KEY_BLOCK)
            .zip(o.chunks_exact_mut((ROWS * dv).max(1)))
        {
            let a = Strided {
                data: p,
                row_stride: KEY_BLOCK,
                k_stride: 1,
            };
            for c0 in (0..body).step_by(COLUMNS) {
                let mut acc = [[T::ZERO; COLUMNS]; ROWS];
                for (r, acc) in acc.iter_mut().enumerate() {
                    acc.copy_from_slice(&o[r * dv + c0..r * dv + c0 + COLUMNS]);
                }
                micro_gemm::<T, A, ROWS, COLUMNS>(&mut acc, a, &v[c0..], stride, n);
                for (r, acc) in acc.iter().enumerate() {
                    o[r * dv + c0..r * dv + c0 + COLUMNS].copy_from_slice(acc);
                }
            }
            for j in 0..n {
                let value = &v[j * stride + body..j * stride + dv];
                for r in 0..ROWS {
                    axpy::<T, A>(
                        &mut o[r * dv + body..(r + 1) * dv],
                        p[r * KEY_BLOCK + j],
                        value,
                    );
                }
            }
        }
    }

    /// Copies the task's queries, times the scale, to `scratch.q` (padding rows stay 0).
    #[inline(always)]
    fn load_queries(&mut self) {
        let dims = self.inputs.dims;
        let (d, group) = (dims.dim_qk, dims.group());
        let first_head = self.b * dims.heads + self.kv_head * group;
        let q = &self.inputs.q[first_head * dims.len_q * d..][..group * dims.len_q * d];
        for (dst, &x) in self.scratch.q.iter_mut().zip(q) {
            *dst = x * self.inputs.scale;
        }
    }
}

/// One block of a row's scores `p` (all visible) against its running (m, l) and output o:
/// m' = max(m, max_j S_j), P_j = exp(S_j - m') (written over `p`), alpha = exp(m - m'),
/// l' = alpha l + sum_j P_j, o' = alpha o. Returns (m', l').
#[inline(always)]
fn softmax_update<T: Real, A: Arch>((m, l): (T, T), p: &mut [T], o: &mut [T]) -> (T, T) {
    let block_max = p.iter().fold(T::NEG_INFINITY, |acc, &s| acc.max_nan(s));
    let new_max = m.max_nan(block_max);
    // Two passes, so that the exponentials vectorise (a running sum in the same loop keeps it
    // scalar).
    for s in p.iter_mut() {
        *s = (*s - new_max).exp_on::<A>();
    }
    let total = lane_sum(p);
    if m == new_max {
        return (new_max, l + total);
    }
    // m = -inf before the first visible key: l and o are still 0 and stay so.
    let alpha = if m == T::NEG_INFINITY {
        T::ZERO
    } else {
        (m - new_max).exp_on::<A>()
    };
    for x in o.iter_mut() {
        *x *= alpha;
    }
    (new_max, alpha * l + total)
}

/// `q_r . key` for the [`ROWS`] rows of `q` (`(ROWS, D)`), one row after the other (the key
/// stays in L1 between them).
#[inline(always)]
fn dot_rows<T: Real, A: Arch>(q: &[T], key: &[T]) -> [T; ROWS] {
    let d = key.len();
    std::array::from_fn(|r| dot::<T, A>(&q[r * d..(r + 1) * d], key))
}

/// `sum_x a_x b_x` over two chains of [`LANES`] independent accumulators (summed pairwise at
/// the end), so that it vectorises and the FMA latency is hidden.
#[inline(always)]
fn dot<T: Real, A: Arch>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let body = n - n % (2 * LANES);
    let (mut even, mut odd) = ([T::ZERO; LANES], [T::ZERO; LANES]);
    for (x, y) in a[..body]
        .chunks_exact(2 * LANES)
        .zip(b[..body].chunks_exact(2 * LANES))
    {
        for l in 0..LANES {
            even[l] = T::fma::<A>(x[l], y[l], even[l]);
        }
        for l in 0..LANES {
            odd[l] = T::fma::<A>(x[LANES + l], y[LANES + l], odd[l]);
        }
    }
    let mut tail = T::ZERO;
    for (&x, &y) in a[body..n].iter().zip(&b[body..n]) {
        tail = T::fma::<A>(x, y, tail);
    }
    for l in 0..LANES {
        even[l] += odd[l];
    }
    pairwise_sum(&even) + tail
}

/// `sum_j x_j` in [`LANES`] independent accumulators, then pairwise (it vectorises).
#[inline(always)]
fn lane_sum<T: Real>(x: &[T]) -> T {
    let body = x.len() - x.len() % LANES;
    let mut acc = [T::ZERO; LANES];
    for chunk in x[..body].chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += chunk[l];
        }
    }
    let tail = x[body..].iter().fold(T::ZERO, |total, &v| total + v);
    pairwise_sum(&acc) + tail
}

/// The sum of the lanes of `acc`, halving the width at each step.
#[inline(always)]
fn pairwise_sum<T: Real>(acc: &[T; LANES]) -> T {
    let mut acc = *acc;
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0]
}

/// `y += alpha x`.
#[inline(always)]
fn axpy<T: Real, A: Arch>(y: &mut [T], alpha: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = T::fma::<A>(alpha, x, *y);
    }
}

/// Merges the splits of every query row into `out` (see the module docs).
fn merge<T: Real>(
    inputs: Inputs<'_, T>,
    splits: usize,
    partial_o: &[T],
    partial_ml: &[(T, T)],
    out: &mut [T],
) {
    let dims = inputs.dims;
    let (dv, lq, group) = (dims.dim_v, dims.len_q, dims.group());
    let rows = group * lq;
    for pair in 0..dims.batch * dims.kv_heads {
        let (b, kv_head) = (pair / dims.kv_heads, pair % dims.kv_heads);
        for r in 0..rows {
            let at = |s: usize| (pair * splits + s) * rows + r;
            // Splits that saw no key of this row have l = 0 and are left out.
            let seen = (0..splits).filter(|&s| partial_ml[at(s)].1 != T::ZERO);
            let max = seen
                .clone()
                .fold(T::NEG_INFINITY, |acc, s| acc.max_nan(partial_ml[at(s)].0));
            let head = b * dims.heads + kv_head * group + r / lq;
            let dst = &mut out[(head * lq + r % lq) * dv..][..dv];
            dst.fill(T::ZERO);
            let mut total = T::ZERO;
            for s in seen {
                let (m, l) = partial_ml[at(s)];
                let weight = if m == max { T::ONE } else { (m - max).exp() };
                total += weight * l;
                for (y, &x) in dst.iter_mut().zip(&partial_o[at(s) * dv..][..dv]) {
                    *y += weight * x;
                }
            }
            for y in dst.iter_mut() {
                *y = *y / total;
            }
        }
    }
}
