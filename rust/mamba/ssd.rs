//! The Mamba-2 state-space-dual (SSD) scan, as `mamba_ssm.mamba_chunk_scan_combined` defines it.
//!
//! Shapes (C order): x, z, out `(batch, L, heads, headdim)`; dt `(batch, L, heads)`; A, dt_bias
//! `(heads,)`; B, C `(batch, L, groups, dstate)` where head h reads group `h / (heads / groups)`;
//! D `(heads,)` or `(heads, headdim)`; initial and final states `(batch, heads, headdim, dstate)`.
//! For every batch row and head, with the state S in R^{headdim x dstate}:
//!
//! ```text
//! dt'_t = clamp(softplus(dt_t + dt_bias), dt_min, dt_max)   (softplus only if asked)
//! S_t   = exp(dt'_t A) S_{t-1} + dt'_t x_t B_t^T
//! y_t   = S_t C_t + D x_t;          out_t = y_t * silu(z_t)
//! ```
//!
//! [`ssd_scan`] computes this with the chunked SSD algorithm. Split time into chunks of Q steps;
//! inside a chunk let `cs_i = sum_{l <= i} dt'_l A` (a cumulative sum restarted at every chunk).
//! Every decay is the exponential of a difference of these sums, never a quotient of decays:
//!
//! ```text
//! intra-chunk:   Y_i  = sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) dt'_j x_j     (matrix products)
//! chunk state:   S_c  = sum_l exp(cs_last - cs_l) dt'_l x_l B_l^T
//! state passing: S_in(c + 1) = exp(cs_last(c)) S_in(c) + S_c              (sequential over c)
//! state output:  Y_i += exp(cs_i) S_in(c) C_i
//! ```
//!
//! `C B^T` and `C^T` are computed once per group and chunk (in parallel) and shared by the
//! group's heads. Then one task per (batch row, block of heads) walks the chunks in order with
//! the block's state `S^T` (dstate x channels of the block) in cache: per head the intra-chunk
//! product, then for all the block's channels at once the state-to-output product and the
//! update `S = exp(cs_last) S + B^T (w x)`; the chunk's rows are gated and written to the
//! block's columns of `out`. When batch * heads is small, heads are split into channel ranges
//! to give the threads work (output channels are independent, so this changes no bit).
//!
//! Both kernels walk the sequence in windows of whole chunks and keep the time terms (dt',
//! cumulative sums, decays) and the group terms of one window at a time, carrying the states
//! from window to window: their extra memory is about `min(L, window) x batch x (groups x
//! (dstate + Q) + 4 heads)` elements plus the states, whatever L is (a window holds about 2^20
//! elements of these terms). Every chunk is computed as in one pass, so windows change no bit.
//!
//! The task split depends on the sizes only and every task computes in a fixed order, so the
//! result does not depend on the thread count. It depends on the chunk size only through
//! rounding.
//!
//! [`ssd_scan_sequential`] runs the recurrence above one step at a time. It is the oracle of
//! the chunked kernel and its baseline in the benchmarks.

use super::matmul::{matmul, Columns, Depth, Product, Store, Strided};
use super::state_update::Granularity;
use crate::error::{check_len, KernelError};
use crate::rwkv::prefetch;
use crate::simd::{self, Arch, Isa, Kernel, Real};
use rayon::prelude::*;

/// Channels (heads x headdim) of one task.
const BLOCK_COLUMNS: usize = 256;
/// Below this many (batch, head) pairs, heads are split into channel ranges...
const MIN_TASKS: usize = 8;
/// ...of this many channels.
const SPLIT_WIDTH: usize = 32;
/// Channels of one head the sequential kernel updates side by side.
const SEQ_BLOCK: usize = 32;
/// Steps the sequential kernel runs before gating their outputs into out.
const SEQ_STEPS: usize = 16;
/// Scratch elements (time terms and group terms) of one window of chunks, at most (unless a
/// single chunk needs more): the scratch is reused from window to window, so extra memory does
/// not grow with L.
const WINDOW_ELEMENTS: usize = 1 << 20;
/// Steps of one window of the sequential kernel (a multiple of [`SEQ_STEPS`]).
const SEQ_WINDOW: usize = 4096;

/// Sizes of one SSD call.
#[derive(Clone, Copy, Debug)]
pub struct SsdDims {
    /// Batch size.
    pub batch: usize,
    /// Sequence length L.
    pub len: usize,
    /// Heads h.
    pub heads: usize,
    /// Channels per head p.
    pub headdim: usize,
    /// State size n.
    pub dstate: usize,
    /// Groups g of B and C; they divide `heads`.
    pub groups: usize,
    /// Chunk length Q of the chunked algorithm (>= 1); ignored by the sequential kernel.
    pub chunk_size: usize,
    /// Shape of D: `(heads,)` or `(heads, headdim)`.
    pub d_form: Granularity,
}

/// Inputs of one SSD call (C-contiguous, shapes in the module docs).
#[derive(Clone, Copy, Debug)]
pub struct SsdInputs<'a, T> {
    /// `(batch, L, heads, headdim)`.
    pub x: &'a [T],
    /// `(batch, L, heads)`.
    pub dt: &'a [T],
    /// `(heads,)`.
    pub a: &'a [T],
    /// `(batch, L, groups, dstate)`.
    pub b: &'a [T],
    /// `(batch, L, groups, dstate)`.
    pub c: &'a [T],
    /// Skip connection, see [`SsdDims::d_form`].
    pub d: Option<&'a [T]>,
    /// `(batch, L, heads, headdim)`: gate, out = y * silu(z).
    pub z: Option<&'a [T]>,
    /// `(heads,)`: added to dt before the softplus.
    pub dt_bias: Option<&'a [T]>,
    /// Apply softplus (threshold 20) to dt + dt_bias.
    pub dt_softplus: bool,
    /// dt' is clamped to `[dt_limit.0, dt_limit.1]`.
    pub dt_limit: (T, T),
    /// `(batch, heads, headdim, dstate)`: S_{-1}; zeros when `None`.
    pub initial_states: Option<&'a [T]>,
}

fn validate<T: Real>(
    dims: &SsdDims,
    x: &SsdInputs<'_, T>,
    out: &[T],
    final_states: &[T],
) -> Result<(), KernelError> {
    let SsdDims {
        batch,
        len,
        heads,
        headdim,
        dstate,
        groups,
        ..
    } = *dims;
    if groups == 0 || heads % groups != 0 {
        return Err(KernelError::value(
            "B",
            format!("{groups} groups must divide nheads = {heads}"),
        ));
    }
    if dims.chunk_size == 0 {
        return Err(KernelError::value("chunk_size", "expected chunk_size >= 1"));
    }
    let (lo, hi) = x.dt_limit;
    if !matches!(
        lo.partial_cmp(&hi),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    ) {
        return Err(KernelError::value(
            "dt_limit",
            format!("expected dt_limit[0] <= dt_limit[1], got ({lo:?}, {hi:?})"),
        ));
    }
    let seq = [batch, len, heads, headdim];
    let bc = [batch, len, groups, dstate];
    let state = [batch, heads, headdim, dstate];
    check_len("x", x.x, &seq)?;
    check_len("dt", x.dt, &[batch, len, heads])?;
    check_len("A", x.a, &[heads])?;
    check_len("B", x.b, &bc)?;
    check_len("C", x.c, &bc)?;
    if let Some(d) = x.d {
        match dims.d_form {
            Granularity::PerHead => check_len("D", d, &[heads])?,
            Granularity::PerHeadDim => check_len("D", d, &[heads, headdim])?,
        }
    }
    if let Some(z) = x.z {
        check_len("z", z, &seq)?;
    }
    if let Some(bias) = x.dt_bias {
        check_len("dt_bias", bias, &[heads])?;
    }
    if let Some(h0) = x.initial_states {
        check_len("initial_states", h0, &state)?;
    }
    check_len("out", out, &seq)?;
    check_len("final_states", final_states, &state)
}

/// Runs the chunked SSD scan. `out` is `(batch, L, heads, headdim)`, `final_states` is
/// `(batch, heads, headdim, dstate)`; both are overwritten.
pub fn ssd_scan<T: Real>(
    dims: SsdDims,
    inputs: SsdInputs<'_, T>,
    out: &mut [T],
    final_states: &mut [T],
) -> Result<(), KernelError> {
    validate(&dims, &inputs, out, final_states)?;
    let isa = simd::isa();
    if trivial_case(isa, &dims, &inputs, out, final_states) {
        return Ok(());
    }
    let plan = ChunkPlan::new(&dims);
    let blocks = head_blocks(&dims);
    let mut states = initial_block_states(&dims, &inputs, &blocks);
    for window in plan.windows(&dims) {
        let time = prepare_dt(isa, &dims, &inputs, window);
        let group = group_terms(isa, &dims, &inputs, &plan, window);
        let shared = ChunkedShared {
            dims,
            inputs,
            plan,
            window,
            time: &time,
            group: &group,
            isa,
        };
        block_tasks(&dims, &blocks, window, out, &mut states)
            .into_par_iter()
            .for_each(|task| shared.scan_block(task));
    }
    store_block_states(&dims, &blocks, &states, final_states);
    Ok(())
}

/// Runs the recurrence one step at a time (the oracle and the baseline of [`ssd_scan`]); same
/// arguments and results, `chunk_size` is ignored.
pub fn ssd_scan_sequential<T: Real>(
    dims: SsdDims,
    inputs: SsdInputs<'_, T>,
    out: &mut [T],
    final_states: &mut [T],
) -> Result<(), KernelError> {
    validate(&dims, &inputs, out, final_states)?;
    let isa = simd::isa();
    if trivial_case(isa, &dims, &inputs, out, final_states) {
        return Ok(());
    }
    // One task per (batch, head), writing its channels of out.
    let per_group = dims.heads / dims.groups;
    let heads: Vec<HeadBlock> = (0..dims.heads)
        .map(|h| HeadBlock {
            first: h,
            count: 1,
            group: h / per_group,
            j0: 0,
            width: dims.headdim,
        })
        .collect();
    let mut states = initial_block_states(&dims, &inputs, &heads);
    for window in windows(dims.len, SEQ_WINDOW, 1) {
        let time = prepare_dt(isa, &dims, &inputs, window);
        block_tasks(&dims, &heads, window, out, &mut states)
            .into_par_iter()
            .for_each(|task| {
                let bh = task.batch * dims.heads + task.block.first;
                let dt = time.slice(&time.dt, bh, window.t0, window.len);
                simd::dispatch_on(
                    isa,
                    SequentialJob {
                        dims,
                        inputs,
                        dt,
                        t0: window.t0,
                        task,
                    },
                );
            });
    }
    store_block_states(&dims, &heads, &states, final_states);
    Ok(())
}

/// Handles calls with nothing to scan (an empty axis or `dstate = 0`); returns whether it did.
fn trivial_case<T: Real>(
    isa: Isa,
    dims: &SsdDims,
    inputs: &SsdInputs<'_, T>,
    out: &mut [T],
    final_states: &mut [T],
) -> bool {
    if out.is_empty() || dims.dstate == 0 {
        // No time steps: the state is carried over; no state: y = D x only.
        match inputs.initial_states {
            Some(h0) => final_states.copy_from_slice(h0),
            None => final_states.fill(T::ZERO),
        }
        out.fill(T::ZERO);
        if !out.is_empty() {
            let rows = dims.batch * dims.len;
            let row = dims.heads * dims.headdim;
            let finish = FinishJob {
                dims: *dims,
                inputs: *inputs,
                first_row: 0,
                out: &mut out[..rows * row],
            };
            simd::dispatch_on(isa, finish);
        }
        return true;
    }
    false
}

/// dt' and the chunk-local cumulative sums of dt' A over the steps of one window, both
/// `(batch, heads, window.len)`. Also, per step t of a chunk, `growth = exp(cs_t)` (the decay
/// of the state entering the chunk) and `weight = exp(cs_last - cs_t) dt'_t` (the weight of
/// step t in the chunk's state).
struct TimeTerms<T> {
    /// First step of the window.
    t0: usize,
    /// Steps of the window.
    len: usize,
    dt: Vec<T>,
    cumsum: Vec<T>,
    growth: Vec<T>,
    weight: Vec<T>,
}

impl<T> TimeTerms<T> {
    /// The `rows` values of `field` (one of the four) of (batch, head) `bh` from step `t`.
    fn slice<'s>(&self, field: &'s [T], bh: usize, t: usize, rows: usize) -> &'s [T] {
        &field[bh * self.len + t - self.t0..][..rows]
    }
}

fn prepare_dt<T: Real>(
    isa: Isa,
    dims: &SsdDims,
    inputs: &SsdInputs<'_, T>,
    window: Window,
) -> TimeTerms<T> {
    let len = window.len;
    let mut dt = vec![T::ZERO; dims.batch * dims.heads * len];
    let mut cumsum = vec![T::ZERO; dt.len()];
    let mut growth = vec![T::ZERO; dt.len()];
    let mut weight = vec![T::ZERO; dt.len()];
    dt.par_chunks_mut(len)
        .zip(cumsum.par_chunks_mut(len))
        .zip(growth.par_chunks_mut(len).zip(weight.par_chunks_mut(len)))
        .enumerate()
        .for_each(|(bh, ((dt, cumsum), (growth, weight)))| {
            simd::dispatch_on(
                isa,
                DtJob {
                    dims: *dims,
                    inputs: *inputs,
                    bh,
                    t0: window.t0,
                    dt,
                    cumsum,
                    growth,
                    weight,
                },
            );
        });
    TimeTerms {
        t0: window.t0,
        len,
        dt,
        cumsum,
        growth,
        weight,
    }
}

/// dt' for one (batch, head) row of a window, its cumulative sums restarted at every chunk,
/// and the growth and weight of [`TimeTerms`].
struct DtJob<'a, 'o, T> {
    dims: SsdDims,
    inputs: SsdInputs<'a, T>,
    bh: usize,
    /// First step of the window (a chunk boundary).
    t0: usize,
    dt: &'o mut [T],
    cumsum: &'o mut [T],
    growth: &'o mut [T],
    weight: &'o mut [T],
}

impl<T: Real> Kernel for DtJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let (heads, len) = (self.dims.heads, self.dims.len);
        let (b, h) = (self.bh / heads, self.bh % heads);
        let bias = self.inputs.dt_bias.map_or(T::ZERO, |v| v[h]);
        let (lo, hi) = self.inputs.dt_limit;
        for (t, v) in self.dt.iter_mut().enumerate() {
            *v = self.inputs.dt[(b * len + self.t0 + t) * heads + h] + bias;
        }
        if self.inputs.dt_softplus {
            for v in self.dt.iter_mut() {
                *v = v.softplus();
            }
        }
        for v in self.dt.iter_mut() {
            *v = v.max_nan(lo).min_nan(hi);
        }
        let a = self.inputs.a[h];
        let q = self.dims.chunk_size;
        let chunks = self.dt.chunks(q).zip(self.cumsum.chunks_mut(q));
        let terms = self.growth.chunks_mut(q).zip(self.weight.chunks_mut(q));
        for ((dt, cs), (growth, weight)) in chunks.zip(terms) {
            let mut sum = T::ZERO;
            for (c, &d) in cs.iter_mut().zip(dt) {
                sum += d * a;
                *c = sum;
            }
            let last = sum;
            for (((g, w), &c), &d) in growth.iter_mut().zip(weight.iter_mut()).zip(&*cs).zip(dt) {
                *g = c.exp();
                *w = (last - c).exp() * d;
            }
        }
    }
}

/// The chunk grid: chunk c covers steps `c * q .. min((c + 1) * q, L)`.
#[derive(Clone, Copy, Debug)]
struct ChunkPlan {
    /// Chunk length, at most L.
    q: usize,
    /// Number of chunks.
    count: usize,
}

impl ChunkPlan {
    fn new(dims: &SsdDims) -> Self {
        let q = dims.chunk_size.min(dims.len).max(1);
        ChunkPlan {
            q,
            count: dims.len.div_ceil(q),
        }
    }

    /// (first step, length) of chunk `c` for a sequence of `len` steps.
    fn span(&self, c: usize, len: usize) -> (usize, usize) {
        let t0 = c * self.q;
        (t0, self.q.min(len - t0))
    }

    /// The windows the chunked kernel walks, as many chunks each as keep their time and group
    /// terms within [`WINDOW_ELEMENTS`].
    fn windows(&self, dims: &SsdDims) -> Vec<Window> {
        let (q, n) = (self.q, dims.dstate);
        let per_chunk = dims.batch * (dims.groups * q * (n + q) + 4 * dims.heads * q);
        let chunks = (WINDOW_ELEMENTS / per_chunk.max(1)).max(1);
        windows(dims.len, q, chunks)
    }
}

/// Steps `t0 .. t0 + len` of the sequence: chunks `first_chunk .. first_chunk + chunks` of the
/// chunk grid. The kernels keep their time and group terms for one window at a time; the
/// windows change no bit of the result (every chunk is computed as it would be in one pass).
#[derive(Clone, Copy, Debug)]
struct Window {
    t0: usize,
    len: usize,
    first_chunk: usize,
    chunks: usize,
}

/// Consecutive windows of `per_window` chunks of `q` steps covering `len` steps.
fn windows(len: usize, q: usize, per_window: usize) -> Vec<Window> {
    let count = len.div_ceil(q);
    (0..count)
        .step_by(per_window)
        .map(|first_chunk| {
            let t0 = first_chunk * q;
            let chunks = per_window.min(count - first_chunk);
            Window {
                t0,
                len: ((first_chunk + chunks) * q).min(len) - t0,
                first_chunk,
                chunks,
            }
        })
        .collect()
}

/// Element (t, group, k) of B or C of batch row `b` as a row-major matrix view over time.
fn bc_rows<'a, T>(data: &'a [T], dims: &SsdDims, b: usize, t0: usize, g: usize) -> Strided<'a, T> {
    Strided {
        data,
        offset: ((b * dims.len + t0) * dims.groups + g) * dims.dstate,
        row_stride: dims.groups * dims.dstate,
        col_stride: 1,
    }
}

/// Offset of x[b, t0, h, 0]; rows of one head are `heads * headdim` apart.
fn x_offset(dims: &SsdDims, b: usize, t0: usize, h: usize) -> usize {
    ((b * dims.len + t0) * dims.heads + h) * dims.headdim
}

/// Per (batch, group, chunk): `C^T` (dstate x rows, rows apart) and the upper triangle of
/// `B C^T` (rows x rows, q apart), the transpose of the `C B^T` of the module docs. Both are
/// shared by the group's heads, and both are laid out so that the per-head products read
/// their left operand with contiguous rows.
/// Only the chunks of one window are kept.
struct GroupTerms<T> {
    c_t: Vec<T>,
    bc: Vec<T>,
    groups: usize,
    window: Window,
}

impl<T> GroupTerms<T> {
    /// The slot of (batch row, group, chunk); the chunk lies in the window.
    fn slot(&self, b: usize, g: usize, chunk: usize) -> usize {
        (b * self.groups + g) * self.window.chunks + chunk - self.window.first_chunk
    }
}

fn group_terms<T: Real>(
    isa: Isa,
    dims: &SsdDims,
    inputs: &SsdInputs<'_, T>,
    plan: &ChunkPlan,
    window: Window,
) -> GroupTerms<T> {
    let (q, n) = (plan.q, dims.dstate);
    let slots = dims.batch * dims.groups * window.chunks;
    let mut c_t = vec![T::ZERO; slots * n * q];
    let mut bc = vec![T::ZERO; slots * q * q];
    c_t.par_chunks_mut(n * q)
        .zip(bc.par_chunks_mut(q * q))
        .enumerate()
        .for_each(|(slot, (c_t, bc))| {
            let c = window.first_chunk + slot % window.chunks;
            let bg = slot / window.chunks;
            let (b, g) = (bg / dims.groups, bg % dims.groups);
            let (t0, rows) = plan.span(c, dims.len);
            let c_rows = bc_rows(inputs.c, dims, b, t0, g);
            for (k, col) in c_t.chunks_exact_mut(rows).take(n).enumerate() {
                for (i, v) in col.iter_mut().enumerate() {
                    *v = c_rows.at(i, k);
                }
            }
            let product = Product {
                m: rows,
                n: rows,
                k: n,
                a: bc_rows(inputs.b, dims, b, t0, g),
                a_col_scale: None,
                b: c_t,
                ldb: rows,
                depth: Depth::Full,
                columns: Columns::UpperTriangle,
            };
            matmul(isa, product, bc, q, Store::Overwrite);
        });
    GroupTerms {
        c_t,
        bc,
        groups: dims.groups,
        window,
    }
}

/// Channels whose state one task carries through all chunks: `count` whole heads from `first`
/// (`j0 = 0`, `width = headdim`), or channels `j0..j0 + width` of one head. Never across a
/// group. Fixed by the sizes, never by the thread count.
#[derive(Clone, Copy, Debug)]
struct HeadBlock {
    first: usize,
    count: usize,
    group: usize,
    j0: usize,
    width: usize,
}

impl HeadBlock {
    /// Channels of the block: its columns of a `(heads * headdim)` row of out.
    fn columns(&self) -> usize {
        self.count * self.width
    }
}

/// Blocks of up to [`BLOCK_COLUMNS`] channels of whole heads; when batch * heads is too small
/// to keep the threads busy, every head is split into channel ranges of [`SPLIT_WIDTH`]. Output
/// channels are independent, so the split changes no bit of the result.
fn head_blocks(dims: &SsdDims) -> Vec<HeadBlock> {
    let p = dims.headdim;
    let per_group = dims.heads / dims.groups;
    let mut blocks = Vec::new();
    if dims.batch * dims.heads < MIN_TASKS {
        for h in 0..dims.heads {
            for j0 in (0..p).step_by(SPLIT_WIDTH) {
                blocks.push(HeadBlock {
                    first: h,
                    count: 1,
                    group: h / per_group,
                    j0,
                    width: SPLIT_WIDTH.min(p - j0),
                });
            }
        }
        return blocks;
    }
    let per_block = (BLOCK_COLUMNS / p.max(1)).clamp(1, per_group);
    for group in 0..dims.groups {
        let end = (group + 1) * per_group;
        let mut first = group * per_group;
        while first < end {
            let count = per_block.min(end - first);
            blocks.push(HeadBlock {
                first,
                count,
                group,
                j0: 0,
                width: p,
            });
            first += count;
        }
    }
    blocks
}

/// One (batch row, block) in one window: its columns of the window's rows of out, and its
/// state.
struct BlockTask<'o, T> {
    batch: usize,
    block: HeadBlock,
    /// `rows[i]`: the block's `columns()` channels of `out[batch, window.t0 + i]`.
    rows: Vec<&'o mut [T]>,
    /// The block's state `S^T`, `(dstate, columns())`, carried from window to window.
    state: &'o mut [T],
}

/// Offset in `(batch, heads, headdim, dstate)` of the first state row of channel `j` of the
/// block's head `hl`.
fn state_row(dims: &SsdDims, batch: usize, block: &HeadBlock, hl: usize, j: usize) -> usize {
    ((batch * dims.heads + block.first + hl) * dims.headdim + block.j0 + j) * dims.dstate
}

/// The state `S^T` `(dstate, columns)` of every (batch, block), from `initial_states` (or 0).
fn initial_block_states<T: Real>(
    dims: &SsdDims,
    inputs: &SsdInputs<'_, T>,
    blocks: &[HeadBlock],
) -> Vec<Vec<T>> {
    let n = dims.dstate;
    let mut states = Vec::with_capacity(dims.batch * blocks.len());
    for batch in 0..dims.batch {
        for block in blocks {
            let cols = block.columns();
            let mut state = vec![T::ZERO; n * cols];
            if let Some(h0) = inputs.initial_states {
                for hl in 0..block.count {
                    for j in 0..block.width {
                        let source = &h0[state_row(dims, batch, block, hl, j)..][..n];
                        for (k, &v) in source.iter().enumerate() {
                            state[k * cols + hl * block.width + j] = v;
                        }
                    }
                }
            }
            states.push(state);
        }
    }
    states
}

/// Writes the states of [`initial_block_states`]'s layout to `final_states`.
fn store_block_states<T: Real>(
    dims: &SsdDims,
    blocks: &[HeadBlock],
    states: &[Vec<T>],
    final_states: &mut [T],
) {
    let n = dims.dstate;
    let per_batch = states.chunks_exact(blocks.len().max(1));
    for (batch, states) in per_batch.enumerate() {
        for (block, state) in blocks.iter().zip(states) {
            let cols = block.columns();
            for hl in 0..block.count {
                for j in 0..block.width {
                    let dest = &mut final_states[state_row(dims, batch, block, hl, j)..][..n];
                    for (k, v) in dest.iter_mut().enumerate() {
                        *v = state[k * cols + hl * block.width + j];
                    }
                }
            }
        }
    }
}

/// Splits the window's rows of `out` and the states into the disjoint parts of every
/// (batch, block) task.
fn block_tasks<'o, T>(
    dims: &SsdDims,
    blocks: &[HeadBlock],
    window: Window,
    out: &'o mut [T],
    states: &'o mut [Vec<T>],
) -> Vec<BlockTask<'o, T>> {
    let row = dims.heads * dims.headdim;
    let mut tasks = Vec::with_capacity(dims.batch * blocks.len());
    let per_batch = out.chunks_exact_mut(dims.len * row);
    let mut states = states.iter_mut();
    for (batch, sequence) in per_batch.enumerate() {
        let first_task = tasks.len();
        for &block in blocks {
            let state = states.next().expect("one state per (batch, block)");
            tasks.push(BlockTask {
                batch,
                block,
                rows: Vec::with_capacity(window.len),
                state,
            });
        }
        let rows = &mut sequence[window.t0 * row..(window.t0 + window.len) * row];
        for out_row in rows.chunks_exact_mut(row) {
            let mut rest = out_row;
            for (task, block) in tasks[first_task..].iter_mut().zip(blocks) {
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(block.columns());
                rest = tail;
                task.rows.push(mine);
            }
        }
    }
    tasks
}

/// What every task of the chunked kernel reads.
struct ChunkedShared<'a, T> {
    dims: SsdDims,
    inputs: SsdInputs<'a, T>,
    plan: ChunkPlan,
    window: Window,
    time: &'a TimeTerms<T>,
    group: &'a GroupTerms<T>,
    isa: Isa,
}

/// Per-task buffers, sized for a whole chunk.
struct Scratch<T> {
    /// The chunk's outputs, `(rows, columns)`.
    y: Vec<T>,
    /// `M^T` of one head, `(rows, rows)`.
    m_t: Vec<T>,
    /// The weighted x rows of a state update, `(rows, columns)`.
    x_w: Vec<T>,
    /// The state decay per column.
    decay: Vec<T>,
    /// `exp(cs)` per (row, head of the block).
    scale: Vec<T>,
}

impl<T: Real> ChunkedShared<'_, T> {
    /// Runs the window's chunks of one task in order, carrying its state `S^T`
    /// `(dstate, columns)`.
    fn scan_block(&self, task: BlockTask<'_, T>) {
        let dims = &self.dims;
        let q = self.plan.q;
        let BlockTask {
            batch,
            block,
            mut rows,
            state,
        } = task;
        let cols = block.columns();
        let carried = self.inputs.initial_states.is_some();
        let mut scratch = Scratch {
            y: vec![T::ZERO; q * cols],
            m_t: vec![T::ZERO; q * q],
            x_w: vec![T::ZERO; q * cols],
            decay: vec![T::ZERO; cols],
            scale: vec![T::ZERO; q * block.count],
        };
        let first = self.window.first_chunk;
        for chunk in first..first + self.window.chunks {
            let (t0, len) = self.plan.span(chunk, dims.len);
            let at = At {
                batch,
                block,
                chunk,
                t0,
                rows: len,
            };
            if chunk + 1 < self.plan.count {
                self.prefetch_chunk(&at, self.plan.span(chunk + 1, dims.len));
            }
            self.intra_chunk(&at, &mut scratch);
            if chunk > 0 || carried {
                self.state_output(&at, state, &mut scratch);
            }
            self.update_state(&at, &mut scratch, state);
            let finish = FinishSegments {
                dims: *dims,
                inputs: self.inputs,
                at,
                y: &scratch.y[..len * cols],
                rows: &mut rows[t0 - self.window.t0..][..len],
            };
            simd::dispatch_on(self.isa, finish);
        }
    }

    /// Starts loading the block's x and z segments of the chunk `(t0, rows)`: they are read
    /// in 1 KB pieces a whole `(heads, headdim)` row apart, which the hardware prefetchers
    /// follow poorly, and the current chunk's products leave time for the loads to land.
    fn prefetch_chunk(&self, at: &At, (t0, rows): (usize, usize)) {
        let dims = &self.dims;
        let w = at.block.width;
        for t in t0..t0 + rows {
            for hl in 0..at.block.count {
                let start = x_offset(dims, at.batch, t, at.block.first + hl) + at.block.j0;
                prefetch(&self.inputs.x[start..start + w]);
                if let Some(z) = self.inputs.z {
                    prefetch(&z[start..start + w]);
                }
            }
        }
    }

    /// `Y = M X` per head of the block, `M[i][j] = (C_i . B_j) exp(cs_i - cs_j) dt'_j` for
    /// `j <= i`.
    fn intra_chunk(&self, at: &At, scratch: &mut Scratch<T>) {
        let dims = &self.dims;
        let (q, rows) = (self.plan.q, at.rows);
        let slot = self.group.slot(at.batch, at.block.group, at.chunk);
        let cols = at.block.columns();
        for hl in 0..at.block.count {
            let h = at.block.first + hl;
            let bh = at.batch * dims.heads + h;
            let m_t = &mut scratch.m_t[..rows * rows];
            let decay = DecayJob {
                bc: &self.group.bc[slot * q * q..],
                ld_bc: q,
                dt: self.time.slice(&self.time.dt, bh, at.t0, rows),
                cs: self.time.slice(&self.time.cumsum, bh, at.t0, rows),
                m_t,
            };
            simd::dispatch_on(self.isa, decay);
            let intra = Product {
                m: rows,
                n: at.block.width,
                k: rows,
                a: Strided {
                    data: &scratch.m_t[..rows * rows],
                    offset: 0,
                    row_stride: 1,
                    col_stride: rows,
                },
                a_col_scale: None,
                b: &self.inputs.x[x_offset(dims, at.batch, at.t0, h) + at.block.j0..],
                ldb: dims.heads * dims.headdim,
                depth: Depth::Causal { offset: 0 },
                columns: Columns::All,
            };
            let y = &mut scratch.y[hl * at.block.width..rows * cols];
            matmul(self.isa, intra, y, cols, Store::Overwrite);
        }
    }

    /// `Y_i += exp(cs_i) S_in C_i` for all channels of the block at once.
    fn state_output(&self, at: &At, state: &[T], scratch: &mut Scratch<T>) {
        let dims = &self.dims;
        let (n, q, rows) = (dims.dstate, self.plan.q, at.rows);
        let count = at.block.count;
        for hl in 0..count {
            let bh = at.batch * dims.heads + at.block.first + hl;
            let growth = self.time.slice(&self.time.growth, bh, at.t0, rows);
            for (i, &g) in growth.iter().enumerate() {
                scratch.scale[i * count + hl] = g;
            }
        }
        let slot = self.group.slot(at.batch, at.block.group, at.chunk);
        let cols = at.block.columns();
        let product = Product {
            m: rows,
            n: cols,
            k: n,
            a: Strided {
                data: &self.group.c_t,
                offset: slot * n * q,
                row_stride: 1,
                col_stride: rows,
            },
            a_col_scale: None,
            b: state,
            ldb: cols,
            depth: Depth::Full,
            columns: Columns::All,
        };
        let store = Store::AddGridScaled {
            scale: &scratch.scale,
            ld: count,
            block: at.block.width,
        };
        matmul(
            self.isa,
            product,
            &mut scratch.y[..rows * cols],
            cols,
            store,
        );
    }

    /// `S^T = exp(cs_last) S^T + B^T (w x)`, `w_l = exp(cs_last - cs_l) dt'_l` per head.
    fn update_state(&self, at: &At, scratch: &mut Scratch<T>, state: &mut [T]) {
        let dims = &self.dims;
        let cols = at.block.columns();
        let pack = WeightedRows {
            dims: *dims,
            x: self.inputs.x,
            time: self.time,
            at: *at,
            x_w: &mut scratch.x_w[..at.rows * cols],
            decay: &mut scratch.decay,
        };
        simd::dispatch_on(self.isa, pack);
        let b_rows = bc_rows(self.inputs.b, dims, at.batch, at.t0, at.block.group);
        let product = Product {
            m: dims.dstate,
            n: cols,
            k: at.rows,
            a: Strided {
                row_stride: b_rows.col_stride,
                col_stride: b_rows.row_stride,
                ..b_rows
            },
            a_col_scale: None,
            b: &scratch.x_w[..at.rows * cols],
            ldb: cols,
            depth: Depth::Full,
            columns: Columns::All,
        };
        matmul(
            self.isa,
            product,
            state,
            cols,
            Store::ScaleColumnsAdd(&scratch.decay),
        );
    }
}

/// Where one chunk of one task lies.
#[derive(Clone, Copy, Debug)]
struct At {
    batch: usize,
    block: HeadBlock,
    chunk: usize,
    t0: usize,
    rows: usize,
}

/// The right operand of a state update: for the block's channels side by side,
/// `x_w[l][hl * width + j] = exp(cs_last - cs_l) dt'_l x[t0 + l, head, j0 + j]`, and the state
/// decay `decay[hl * width + j] = exp(cs_last)` of each head.
struct WeightedRows<'a, 'o, T> {
    dims: SsdDims,
    x: &'a [T],
    time: &'a TimeTerms<T>,
    at: At,
    x_w: &'o mut [T],
    decay: &'o mut [T],
}

impl<T: Real> Kernel for WeightedRows<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let dims = &self.dims;
        let at = self.at;
        let (w, cols) = (at.block.width, at.block.columns());
        for hl in 0..at.block.count {
            let h = at.block.first + hl;
            let bh = at.batch * dims.heads + h;
            let weights = self.time.slice(&self.time.weight, bh, at.t0, at.rows);
            let growth = self.time.slice(&self.time.growth, bh, at.t0, at.rows)[at.rows - 1];
            self.decay[hl * w..(hl + 1) * w].fill(growth);
            let rows = self.x_w.chunks_exact_mut(cols).zip(weights);
            for (l, (x_row, &weight)) in rows.enumerate() {
                let x = &self.x[x_offset(dims, at.batch, at.t0 + l, h) + at.block.j0..][..w];
                for (v, &xv) in x_row[hl * w..(hl + 1) * w].iter_mut().zip(x) {
                    *v = weight * xv;
                }
            }
        }
    }
}

/// Writes a chunk's outputs of one block to its segments of out:
/// `out = (y + D x) * silu(z)`.
struct FinishSegments<'a, 'r, 'o, T> {
    dims: SsdDims,
    inputs: SsdInputs<'a, T>,
    at: At,
    /// `(rows, columns)`.
    y: &'a [T],
    rows: &'r mut [&'o mut [T]],
}

impl<T: Real> Kernel for FinishSegments<'_, '_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let dims = &self.dims;
        let (p, at) = (dims.headdim, self.at);
        let (w, cols) = (at.block.width, at.block.columns());
        for (i, segment) in self.rows.iter_mut().enumerate() {
            let row = at.batch * dims.len + at.t0 + i;
            let y_row = &self.y[i * cols..(i + 1) * cols];
            for hl in 0..at.block.count {
                let h = at.block.first + hl;
                let start = (row * dims.heads + h) * p + at.block.j0;
                let x = &self.inputs.x[start..start + w];
                let y = &y_row[hl * w..(hl + 1) * w];
                let out = &mut segment[hl * w..(hl + 1) * w];
                let d = match (self.inputs.d, dims.d_form) {
                    (Some(d), Granularity::PerHead) => Skip::Head(d[h]),
                    (Some(d), Granularity::PerHeadDim) => {
                        Skip::Channels(&d[h * p + at.block.j0..][..w])
                    }
                    (None, _) => Skip::Head(T::ZERO),
                };
                let z = self.inputs.z.map(|z| &z[start..start + w]);
                gate_into::<T, A>(out, y, x, d, z);
            }
        }
    }
}

/// D: one value per head, or per channel (the given slice).
#[derive(Clone, Copy)]
enum Skip<'a, T> {
    Head(T),
    Channels(&'a [T]),
}

/// `out = (y + D x) * silu(z)` in one pass (`silu(z)` = 1 without z).
#[inline(always)]
fn gate_into<T: Real, A: Arch>(out: &mut [T], y: &[T], x: &[T], d: Skip<'_, T>, z: Option<&[T]>) {
    let gate = |v: T, i: usize| match z {
        Some(z) => v * z[i].silu(),
        None => v,
    };
    match d {
        Skip::Head(dh) => {
            for (i, ((o, &yv), &xv)) in out.iter_mut().zip(y).zip(x).enumerate() {
                *o = gate(T::fma::<A>(dh, xv, yv), i);
            }
        }
        Skip::Channels(d) => {
            for (i, (((o, &yv), &xv), &dv)) in out.iter_mut().zip(y).zip(x).zip(d).enumerate() {
                *o = gate(T::fma::<A>(dv, xv, yv), i);
            }
        }
    }
}

/// The masked decay matrix of one chunk and head, transposed:
/// `M^T[j][i] = (B_j . C_i) exp(cs_i - cs_j) dt'_j` for `i >= j`, 0 below the diagonal.
struct DecayJob<'a, 'o, T> {
    /// Rows of `B C^T`, `ld_bc` apart.
    bc: &'a [T],
    ld_bc: usize,
    /// dt' and cumsum of the chunk's steps.
    dt: &'a [T],
    cs: &'a [T],
    /// `(rows, rows)`.
    m_t: &'o mut [T],
}

impl<T: Real> Kernel for DecayJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let rows = self.cs.len();
        for (j, row) in self.m_t.chunks_exact_mut(rows).enumerate() {
            let (cs_j, dt_j) = (self.cs[j], self.dt[j]);
            let bc_row = &self.bc[j * self.ld_bc..][j..rows];
            let (zeros, lower) = row.split_at_mut(j);
            zeros.fill(T::ZERO);
            for ((m, &bc), &cs_i) in lower.iter_mut().zip(bc_row).zip(&self.cs[j..]) {
                *m = bc * (cs_i - cs_j).exp() * dt_j;
            }
        }
    }
}

/// `out = (y + D x) * silu(z)` in place over whole `(heads, headdim)` rows; `first_row` is the
/// flat (batch, t) index of the first row.
struct FinishJob<'a, 'o, T> {
    dims: SsdDims,
    inputs: SsdInputs<'a, T>,
    first_row: usize,
    out: &'o mut [T],
}

impl<T: Real> Kernel for FinishJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let p = self.dims.headdim;
        let start = self.first_row * self.dims.heads * p;
        let x = &self.inputs.x[start..start + self.out.len()];
        if let Some(d) = self.inputs.d {
            let rows = self.out.chunks_exact_mut(p).zip(x.chunks_exact(p));
            for (row, (out, x)) in rows.enumerate() {
                // The slice starts at a (batch, t) boundary, so row i is head i % heads.
                let h = row % self.dims.heads;
                match self.dims.d_form {
                    Granularity::PerHead => {
                        let dh = d[h];
                        for (o, &xv) in out.iter_mut().zip(x) {
                            *o = T::fma::<A>(dh, xv, *o);
                        }
                    }
                    Granularity::PerHeadDim => {
                        let dh = &d[h * p..(h + 1) * p];
                        for ((o, &xv), &dv) in out.iter_mut().zip(x).zip(dh) {
                            *o = T::fma::<A>(dv, xv, *o);
                        }
                    }
                }
            }
        }
        if let Some(z) = self.inputs.z {
            let z = &z[start..start + self.out.len()];
            for (o, &zv) in self.out.iter_mut().zip(z) {
                *o *= zv.silu();
            }
        }
    }
}

/// The recurrence of one (batch, head), one step at a time. The state is kept as
/// `(dstate, headdim)` so that the inner loop runs over contiguous channels:
/// `S[k][:] = exp(dt' A) S[k][:] + (dt' B_t[k]) x_t[:]`, `y_t[:] += C_t[k] S[k][:]`.
struct SequentialJob<'a, 'o, T> {
    dims: SsdDims,
    inputs: SsdInputs<'a, T>,
    /// dt' of this (batch, head) over the window.
    dt: &'a [T],
    /// First step of the window.
    t0: usize,
    /// The head's channels of the window's rows of out, and its state `(dstate, headdim)`.
    task: BlockTask<'o, T>,
}

impl<T: Real> Kernel for SequentialJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let dims = &self.dims;
        let (p, n) = (dims.headdim, dims.dstate);
        let (b, h) = (self.task.batch, self.task.block.first);
        let g = self.task.block.group;
        let a = self.inputs.a[h];
        let d = match (self.inputs.d, dims.d_form) {
            (Some(d), Granularity::PerHead) => Skip::Head(d[h]),
            (Some(d), Granularity::PerHeadDim) => Skip::Channels(&d[h * p..(h + 1) * p]),
            (None, _) => Skip::Head(T::ZERO),
        };
        // y of SEQ_STEPS steps, gated into out after each block of steps: touching out and z
        // inside the step loop would evict the state from L1.
        let mut y_block = vec![T::ZERO; SEQ_STEPS * p];
        let BlockTask {
            mut rows, state, ..
        } = self.task;
        for (t0, rows) in rows
            .chunks_mut(SEQ_STEPS)
            .enumerate()
            .map(|(i, r)| (self.t0 + i * SEQ_STEPS, r))
        {
            for (i, y) in y_block.chunks_exact_mut(p).take(rows.len()).enumerate() {
                let t = t0 + i;
                let dt = self.dt[t - self.t0];
                let step = Step {
                    decay: (dt * a).exp(),
                    dt,
                    x: &self.inputs.x[x_offset(dims, b, t, h)..][..p],
                    b: &self.inputs.b[((b * dims.len + t) * dims.groups + g) * n..][..n],
                    c: &self.inputs.c[((b * dims.len + t) * dims.groups + g) * n..][..n],
                };
                // Blocks of SEQ_BLOCK channels keep x_t and y_t in registers while the loop
                // streams over the state rows.
                let mut j0 = 0;
                while j0 + SEQ_BLOCK <= p {
                    step.block::<A, SEQ_BLOCK>(state, p, j0, &mut y[j0..j0 + SEQ_BLOCK]);
                    j0 += SEQ_BLOCK;
                }
                if j0 < p {
                    step.tail::<A>(state, p, j0, &mut y[j0..]);
                }
            }
            for (i, (out, y)) in rows.iter_mut().zip(y_block.chunks_exact(p)).enumerate() {
                let start = x_offset(dims, b, t0 + i, h);
                let x = &self.inputs.x[start..start + p];
                let z = self.inputs.z.map(|z| &z[start..start + p]);
                gate_into::<T, A>(out, y, x, d, z);
            }
        }
    }
}

/// One time step of the sequential kernel: `S[k][j] = decay S[k][j] + (dt' B[k]) x[j]`,
/// `y[j] = sum_k C[k] S[k][j]`, over channels `j0..` of a `(dstate, headdim)` state.
struct Step<'a, T> {
    decay: T,
    dt: T,
    x: &'a [T],
    b: &'a [T],
    c: &'a [T],
}

impl<T: Real> Step<'_, T> {
    #[inline(always)]
    fn block<A: Arch, const W: usize>(
        &self,
        state: &mut [T],
        p: usize,
        j0: usize,
        y_out: &mut [T],
    ) {
        let x: [T; W] = self.x[j0..j0 + W].try_into().expect("W channels");
        let mut y = [T::ZERO; W];
        for ((row, &bk), &ck) in state.chunks_exact_mut(p).zip(self.b).zip(self.c) {
            let s: &mut [T; W] = (&mut row[j0..j0 + W]).try_into().expect("W channels");
            let dt_b = self.dt * bk;
            let mut updated = [T::ZERO; W];
            for ((u, sv), &xv) in updated.iter_mut().zip(s.iter()).zip(&x) {
                *u = T::fma::<A>(dt_b, xv, self.decay * *sv);
            }
            *s = updated;
            for (yv, &u) in y.iter_mut().zip(&updated) {
                *yv = T::fma::<A>(ck, u, *yv);
            }
        }
        y_out.copy_from_slice(&y);
    }

    #[inline(always)]
    fn tail<A: Arch>(&self, state: &mut [T], p: usize, j0: usize, y: &mut [T]) {
        let x = &self.x[j0..];
        y.fill(T::ZERO);
        for ((row, &bk), &ck) in state.chunks_exact_mut(p).zip(self.b).zip(self.c) {
            let dt_b = self.dt * bk;
            for ((sv, &xv), yv) in row[j0..].iter_mut().zip(x).zip(y.iter_mut()) {
                *sv = T::fma::<A>(dt_b, xv, self.decay * *sv);
                *yv = T::fma::<A>(ck, *sv, *yv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64, scale: f64, shift: f64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * scale + shift
            })
            .collect()
    }

    struct Case {
        dims: SsdDims,
        x: Vec<f64>,
        dt: Vec<f64>,
        a: Vec<f64>,
        b: Vec<f64>,
        c: Vec<f64>,
        d: Vec<f64>,
        z: Vec<f64>,
        bias: Vec<f64>,
        h0: Vec<f64>,
    }

    impl Case {
        fn new(batch: usize, len: usize, heads: usize, p: usize, n: usize, groups: usize) -> Self {
            let dims = SsdDims {
                batch,
                len,
                heads,
                headdim: p,
                dstate: n,
                groups,
                chunk_size: 4,
                d_form: Granularity::PerHeadDim,
            };
            let seq = batch * len * heads * p;
            let bc = batch * len * groups * n;
            Case {
                dims,
                x: values(seq, 1, 2.0, 0.0),
                dt: values(batch * len * heads, 2, 2.0, -1.0),
                a: values(heads, 3, 1.0, -1.0),
                b: values(bc, 4, 2.0, 0.0),
                c: values(bc, 5, 2.0, 0.0),
                d: values(heads * p, 6, 2.0, 0.0),
                z: values(seq, 7, 4.0, 0.0),
                bias: values(heads, 8, 1.0, 0.0),
                h0: values(batch * heads * p * n, 9, 2.0, 0.0),
            }
        }

        fn inputs(&self) -> SsdInputs<'_, f64> {
            SsdInputs {
                x: &self.x,
                dt: &self.dt,
                a: &self.a,
                b: &self.b,
                c: &self.c,
                d: Some(&self.d),
                z: Some(&self.z),
                dt_bias: Some(&self.bias),
                dt_softplus: true,
                dt_limit: (0.0, f64::INFINITY),
                initial_states: Some(&self.h0),
            }
        }

        /// The formula of the module docs, with libm and no tricks.
        fn naive(&self) -> (Vec<f64>, Vec<f64>) {
            let SsdDims {
                batch,
                len,
                heads,
                headdim: p,
                dstate: n,
                groups,
                ..
            } = self.dims;
            let mut out = vec![0.0; batch * len * heads * p];
            let mut last = self.h0.clone();
            for b in 0..batch {
                for h in 0..heads {
                    let g = h / (heads / groups);
                    let s = &mut last[(b * heads + h) * p * n..][..p * n];
                    for t in 0..len {
                        let raw = self.dt[(b * len + t) * heads + h] + self.bias[h];
                        let dt = if raw > 20.0 { raw } else { raw.exp().ln_1p() };
                        let bc = ((b * len + t) * groups + g) * n;
                        for j in 0..p {
                            let i = ((b * len + t) * heads + h) * p + j;
                            let mut y = 0.0;
                            for k in 0..n {
                                let v = &mut s[j * n + k];
                                *v = (dt * self.a[h]).exp() * *v + dt * self.x[i] * self.b[bc + k];
                                y += self.c[bc + k] * *v;
                            }
                            y += self.d[h * p + j] * self.x[i];
                            let z = self.z[i];
                            out[i] = y * z / (1.0 + (-z).exp());
                        }
                    }
                }
            }
            (out, last)
        }
    }

    type Scan = fn(SsdDims, SsdInputs<'_, f64>, &mut [f64], &mut [f64]) -> Result<(), KernelError>;

    fn run(scan: Scan, case: &Case, chunk_size: usize) -> (Vec<f64>, Vec<f64>) {
        let dims = SsdDims {
            chunk_size,
            ..case.dims
        };
        let mut out = vec![f64::NAN; case.x.len()];
        let mut last = vec![f64::NAN; case.h0.len()];
        scan(dims, case.inputs(), &mut out, &mut last).unwrap();
        (out, last)
    }

    fn assert_close(got: &[f64], want: &[f64], what: &str) {
        let scale = want.iter().fold(1.0_f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-11 * scale, "{what}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn chunked_and_sequential_match_the_formula() {
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            simd::with_isa(isa, || check_every_chunk_size(isa));
        }
    }

    fn check_every_chunk_size(isa: Isa) {
        for (batch, len, heads, p, n, groups) in [
            (1, 1, 1, 1, 1, 1),
            (2, 13, 4, 3, 5, 2),
            (1, 70, 3, 17, 9, 3),
            (2, 9, 2, 8, 16, 1),
        ] {
            let case = Case::new(batch, len, heads, p, n, groups);
            let (want_out, want_last) = case.naive();
            let (out, last) = run(ssd_scan_sequential, &case, 1);
            assert_close(&out, &want_out, &format!("{isa:?} sequential out"));
            assert_close(&last, &want_last, &format!("{isa:?} sequential state"));
            for chunk in [1, 3, 4, 16, 64, 1000] {
                let (out, last) = run(ssd_scan, &case, chunk);
                assert_close(&out, &want_out, &format!("{isa:?} chunked out"));
                assert_close(&last, &want_last, &format!("{isa:?} chunked state"));
            }
        }
    }

    #[test]
    fn windows_change_no_bit() {
        // Chunks of 64 with 64 states and 2 groups: a window holds 62 chunks, so 6000 steps
        // take two windows (and the sequential kernel two of its own).
        let case = Case::new(1, 6000, 2, 2, 64, 2);
        let dims = SsdDims {
            chunk_size: 64,
            ..case.dims
        };
        let plan = ChunkPlan::new(&dims);
        assert_eq!(plan.windows(&dims).len(), 2);
        let (want_out, want_last) = case.naive();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            for scan in [ssd_scan as Scan, ssd_scan_sequential] {
                let (out, last) = simd::with_isa(isa, || run(scan, &case, 64));
                assert_close(&out, &want_out, &format!("{isa:?} out"));
                assert_close(&last, &want_last, &format!("{isa:?} state"));
            }
        }
    }

    #[test]
    fn windows_cover_the_sequence() {
        for (len, q, per) in [(1, 1, 1), (10, 3, 2), (4096, 32, 128), (4097, 32, 128)] {
            let all = windows(len, q, per);
            let mut next = (0, 0);
            for w in &all {
                assert_eq!((w.t0, w.first_chunk), next);
                assert!(w.chunks <= per && w.len <= w.chunks * q && w.len > 0);
                next = (w.t0 + w.len, w.first_chunk + w.chunks);
            }
            assert_eq!(next, (len, len.div_ceil(q)));
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let case = Case::new(1, 5, 4, 2, 3, 2);
        let mut out = vec![0.0; case.x.len()];
        let mut last = vec![0.0; case.h0.len()];
        let groups = SsdDims {
            groups: 3,
            ..case.dims
        };
        let err = ssd_scan(groups, case.inputs(), &mut out, &mut last).unwrap_err();
        assert!(err.to_string().starts_with("B:"), "{err}");
        let chunk = SsdDims {
            chunk_size: 0,
            ..case.dims
        };
        let err = ssd_scan(chunk, case.inputs(), &mut out, &mut last).unwrap_err();
        assert!(err.to_string().starts_with("chunk_size:"), "{err}");
        let err = ssd_scan(case.dims, case.inputs(), &mut out[1..], &mut last).unwrap_err();
        assert!(err.to_string().starts_with("out:"), "{err}");
    }
}
