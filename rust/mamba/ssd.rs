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
//! group's heads. The chunks are then walked in order; for each, two kinds of task run side by
//! side, reading the states entering the chunk and writing those entering the next (two
//! buffers, swapped after every chunk):
//! - output tasks own a block of the chunk's rows of `out` (contiguous): per head the
//!   intra-chunk product, then per block of heads the state-to-output product over all their
//!   channels at once (C rows are shared, the scale `exp(cs_i)` differs per head), then D and
//!   the gate;
//! - update tasks own a block of heads and compute `S_next = exp(cs_last) S + B^T (w x)` with
//!   the x rows of all the block's heads side by side.
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
use crate::simd::{self, Arch, Isa, Kernel, Real};
use rayon::prelude::*;

/// Rows of a chunk one output task computes.
const ROW_BLOCK: usize = 16;
/// Channels (heads x headdim) whose states one update task advances.
const BLOCK_COLUMNS: usize = 256;
/// Channels of one head the sequential kernel updates side by side.
const SEQ_BLOCK: usize = 32;
/// Time steps per task of the final gating pass of the sequential kernel.
const FINISH_ROWS: usize = 64;

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
    if trivial_case(&dims, &inputs, out, final_states) {
        return Ok(());
    }
    let isa = simd::isa();
    let time = prepare_dt(isa, &dims, &inputs);
    let plan = ChunkPlan::new(&dims);
    let group = group_terms(isa, &dims, &inputs, &plan);
    let blocks = head_blocks(&dims);
    let mut states = StatePair::new(&dims, &blocks, inputs.initial_states);
    let shared = ChunkedShared {
        dims,
        inputs,
        plan,
        time: &time,
        group: &group,
        blocks: &blocks,
        isa,
    };
    for chunk in 0..plan.count {
        shared.step(chunk, &mut states, out);
        std::mem::swap(&mut states.current, &mut states.next);
    }
    states.write_final(&dims, &blocks, final_states);
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
    if trivial_case(&dims, &inputs, out, final_states) {
        return Ok(());
    }
    let isa = simd::isa();
    let time = prepare_dt(isa, &dims, &inputs);
    let (len, p, n) = (dims.len, dims.headdim, dims.dstate);
    // y per (batch, head) as (L, headdim), then scattered to (batch, L, heads, headdim).
    let mut y = vec![T::ZERO; dims.batch * dims.heads * len * p];
    y.par_chunks_mut(len * p)
        .zip(final_states.par_chunks_mut(p * n))
        .enumerate()
        .for_each(|(bh, (y, last))| {
            let job = SequentialJob {
                dims,
                inputs,
                bh,
                dt: &time.dt[bh * len..(bh + 1) * len],
                y,
                last,
            };
            simd::dispatch_on(isa, job);
        });
    finish(isa, &dims, &inputs, p, &y, out);
    Ok(())
}

/// Scatters `y`, laid out as (batch, head, channel block of `width`, L, channels), into `out`
/// `(batch, L, heads, headdim)` and applies `out = (y + D x) * silu(z)`.
fn finish<T: Real>(
    isa: Isa,
    dims: &SsdDims,
    inputs: &SsdInputs<'_, T>,
    width: usize,
    y: &[T],
    out: &mut [T],
) {
    let (len, p) = (dims.len, dims.headdim);
    out.par_chunks_mut(FINISH_ROWS * dims.heads * p)
        .enumerate()
        .for_each(|(task, rows)| {
            let first = task * FINISH_ROWS;
            for (r, row) in rows.chunks_exact_mut(dims.heads * p).enumerate() {
                let (b, t) = ((first + r) / len, (first + r) % len);
                for (h, y_out) in row.chunks_exact_mut(p).enumerate() {
                    let head = (b * dims.heads + h) * len * p;
                    for (block, part) in y_out.chunks_mut(width).enumerate() {
                        let start = head + block * width * len + t * part.len();
                        part.copy_from_slice(&y[start..start + part.len()]);
                    }
                }
            }
            simd::dispatch_on(
                isa,
                FinishJob {
                    dims: *dims,
                    inputs: *inputs,
                    first_row: first,
                    out: rows,
                },
            );
        });
}

/// Handles calls with nothing to scan (an empty axis or `dstate = 0`); returns whether it did.
fn trivial_case<T: Real>(
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
            simd::dispatch(FinishJob {
                dims: *dims,
                inputs: *inputs,
                first_row: 0,
                out: &mut out[..rows * row],
            });
        }
        return true;
    }
    false
}

/// dt' and the chunk-local cumulative sums of dt' A, both `(batch, heads, L)`.
struct TimeTerms<T> {
    dt: Vec<T>,
    cumsum: Vec<T>,
}

fn prepare_dt<T: Real>(isa: Isa, dims: &SsdDims, inputs: &SsdInputs<'_, T>) -> TimeTerms<T> {
    let len = dims.len;
    let mut dt = vec![T::ZERO; dims.batch * dims.heads * len];
    let mut cumsum = vec![T::ZERO; dt.len()];
    dt.par_chunks_mut(len)
        .zip(cumsum.par_chunks_mut(len))
        .enumerate()
        .for_each(|(bh, (dt, cumsum))| {
            simd::dispatch_on(
                isa,
                DtJob {
                    dims: *dims,
                    inputs: *inputs,
                    bh,
                    dt,
                    cumsum,
                },
            );
        });
    TimeTerms { dt, cumsum }
}

/// dt' for one (batch, head) row, and its cumulative sums restarted at every chunk.
struct DtJob<'a, 'o, T> {
    dims: SsdDims,
    inputs: SsdInputs<'a, T>,
    bh: usize,
    dt: &'o mut [T],
    cumsum: &'o mut [T],
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
            *v = self.inputs.dt[(b * len + t) * heads + h] + bias;
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
        let chunks = self.dt.chunks(self.dims.chunk_size);
        for (dt, cs) in chunks.zip(self.cumsum.chunks_mut(self.dims.chunk_size)) {
            let mut sum = T::ZERO;
            for (c, &d) in cs.iter_mut().zip(dt) {
                sum += d * a;
                *c = sum;
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
struct GroupTerms<T> {
    c_t: Vec<T>,
    bc: Vec<T>,
}

fn group_terms<T: Real>(
    isa: Isa,
    dims: &SsdDims,
    inputs: &SsdInputs<'_, T>,
    plan: &ChunkPlan,
) -> GroupTerms<T> {
    let (q, n) = (plan.q, dims.dstate);
    let slots = dims.batch * dims.groups * plan.count;
    let mut c_t = vec![T::ZERO; slots * n * q];
    let mut bc = vec![T::ZERO; slots * q * q];
    c_t.par_chunks_mut(n * q)
        .zip(bc.par_chunks_mut(q * q))
        .enumerate()
        .for_each(|(slot, (c_t, bc))| {
            let c = slot % plan.count;
            let bg = slot / plan.count;
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
    GroupTerms { c_t, bc }
}

/// `dest (cols x rows) = src (rows x cols)^T`.
fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dest: &mut [T]) {
    for (i, row) in src.chunks_exact(cols).take(rows).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dest[j * rows + i] = v;
        }
    }
}

/// Heads whose states one update task advances: at most [`BLOCK_COLUMNS`] channels' worth
/// (at least one head), never across a group. Fixed by the sizes, not by the thread count.
#[derive(Clone, Copy, Debug)]
struct HeadBlock {
    first: usize,
    count: usize,
    group: usize,
}

fn head_blocks(dims: &SsdDims) -> Vec<HeadBlock> {
    let per_group = dims.heads / dims.groups;
    let per_block = (BLOCK_COLUMNS / dims.headdim.max(1)).clamp(1, per_group);
    let mut blocks = Vec::new();
    for group in 0..dims.groups {
        let end = (group + 1) * per_group;
        let mut first = group * per_group;
        while first < end {
            let count = per_block.min(end - first);
            blocks.push(HeadBlock {
                first,
                count,
                group,
            });
            first += count;
        }
    }
    blocks
}

/// The states entering the current chunk and the next one. For each batch row and head block
/// the block's heads sit side by side: `S^T` as `(dstate, heads in block * headdim)`, so that
/// an update task owns one contiguous slab and reads x rows of all its heads at once.
struct StatePair<T> {
    current: Vec<T>,
    next: Vec<T>,
}

impl<T: Real> StatePair<T> {
    fn new(dims: &SsdDims, blocks: &[HeadBlock], initial: Option<&[T]>) -> Self {
        let (n, p) = (dims.dstate, dims.headdim);
        let size = dims.batch * dims.heads * n * p;
        let mut current = vec![T::ZERO; size];
        if let Some(h0) = initial {
            for (b, row) in current.chunks_exact_mut(dims.heads * n * p).enumerate() {
                for (slab, block) in block_slabs(row, blocks, n * p) {
                    let w = block.count * p;
                    for hl in 0..block.count {
                        let h = block.first + hl;
                        let source = &h0[(b * dims.heads + h) * p * n..][..p * n];
                        for (j, state_row) in source.chunks_exact(n).enumerate() {
                            for (k, &v) in state_row.iter().enumerate() {
                                slab[k * w + hl * p + j] = v;
                            }
                        }
                    }
                }
            }
        }
        let next = vec![T::ZERO; size];
        StatePair { current, next }
    }

    /// Copies the current states to `final_states` `(batch, heads, headdim, dstate)`.
    fn write_final(&self, dims: &SsdDims, blocks: &[HeadBlock], final_states: &mut [T]) {
        let (n, p) = (dims.dstate, dims.headdim);
        let rows = self.current.chunks_exact(dims.heads * n * p);
        for (b, row) in rows.enumerate() {
            let mut offset = 0;
            for block in blocks {
                let w = block.count * p;
                let slab = &row[offset..offset + n * w];
                offset += n * w;
                for hl in 0..block.count {
                    let h = block.first + hl;
                    let dest = &mut final_states[(b * dims.heads + h) * p * n..][..p * n];
                    for (j, state_row) in dest.chunks_exact_mut(n).enumerate() {
                        for (k, v) in state_row.iter_mut().enumerate() {
                            *v = slab[k * w + hl * p + j];
                        }
                    }
                }
            }
        }
    }
}

/// Splits the states of one batch row into the slabs of `blocks`.
fn block_slabs<'s, T>(
    row: &'s mut [T],
    blocks: &[HeadBlock],
    per_head: usize,
) -> Vec<(&'s mut [T], HeadBlock)> {
    let mut slabs = Vec::with_capacity(blocks.len());
    let mut rest = row;
    for &block in blocks {
        let (slab, tail) = std::mem::take(&mut rest).split_at_mut(block.count * per_head);
        rest = tail;
        slabs.push((slab, block));
    }
    slabs
}

/// The work of one chunk: output rows, and state updates, which run side by side.
enum ChunkTask<'o, T> {
    /// Rows `r0..r1` of the chunk for batch row `batch`: `out[batch, t0 + r0 .. t0 + r1]`.
    Rows {
        batch: usize,
        r0: usize,
        r1: usize,
        out: &'o mut [T],
    },
    /// The next state of one head block of batch row `batch`.
    Update {
        batch: usize,
        block: HeadBlock,
        /// The block's slab of the next states.
        next: &'o mut [T],
    },
}

/// What every task of the chunked kernel reads.
struct ChunkedShared<'a, T> {
    dims: SsdDims,
    inputs: SsdInputs<'a, T>,
    plan: ChunkPlan,
    time: &'a TimeTerms<T>,
    group: &'a GroupTerms<T>,
    blocks: &'a [HeadBlock],
    isa: Isa,
}

impl<T: Real> ChunkedShared<'_, T> {
    /// Runs chunk `chunk`: its outputs (from `states.current`) and `states.next`, in parallel.
    fn step(&self, chunk: usize, states: &mut StatePair<T>, out: &mut [T]) {
        let dims = &self.dims;
        let (t0, rows) = self.plan.span(chunk, dims.len);
        let (n, p, row) = (dims.dstate, dims.headdim, dims.heads * dims.headdim);
        let mut tasks = Vec::new();
        let batch_states = states.next.chunks_exact_mut(dims.heads * n * p);
        for (batch, (out_b, next_b)) in out
            .chunks_exact_mut(dims.len * row)
            .zip(batch_states)
            .enumerate()
        {
            let mut rest = &mut out_b[t0 * row..(t0 + rows) * row];
            for r0 in (0..rows).step_by(ROW_BLOCK) {
                let r1 = rows.min(r0 + ROW_BLOCK);
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut((r1 - r0) * row);
                rest = tail;
                tasks.push(ChunkTask::Rows {
                    batch,
                    r0,
                    r1,
                    out: mine,
                });
            }
            for (next, block) in block_slabs(next_b, self.blocks, n * p) {
                tasks.push(ChunkTask::Update { batch, block, next });
            }
        }
        let current = &states.current;
        tasks.into_par_iter().for_each(|task| match task {
            ChunkTask::Rows { batch, r0, r1, out } => {
                self.output_rows(chunk, batch, (r0, r1), current, out)
            }
            ChunkTask::Update { batch, block, next } => {
                self.update_block(chunk, batch, block, current, next)
            }
        });
    }

    /// Offset of batch row `b`'s slab of head block `index` in a state buffer.
    fn slab_offset(&self, b: usize, index: usize) -> usize {
        let (n, p) = (self.dims.dstate, self.dims.headdim);
        let before: usize = self.blocks[..index].iter().map(|blk| blk.count).sum();
        (b * self.dims.heads + before) * n * p
    }

    /// Rows `r0..r1` of chunk `chunk`: for every head `Y = M X` (the intra-chunk product, with
    /// `M[i][j] = (C_i . B_j) exp(cs_i - cs_j) dt'_j` for `j <= i`), then for every head block
    /// `Y += exp(cs_i) C_i S_in` over all its heads at once, then D and the gate.
    fn output_rows(
        &self,
        chunk: usize,
        b: usize,
        (r0, r1): (usize, usize),
        states: &[T],
        out: &mut [T],
    ) {
        let dims = &self.dims;
        let (n, p, q, len) = (dims.dstate, dims.headdim, self.plan.q, dims.len);
        let (t0, chunk_rows) = self.plan.span(chunk, len);
        let rows = r1 - r0;
        let ld_out = dims.heads * p;
        let mut m_t = vec![T::ZERO; r1 * rows];
        for h in 0..dims.heads {
            let g = h / (dims.heads / dims.groups);
            let bh = b * dims.heads + h;
            let slot = (b * dims.groups + g) * self.plan.count + chunk;
            let dt = &self.time.dt[bh * len + t0..][..r1];
            let cs = &self.time.cumsum[bh * len + t0..][..r1];
            let decay = DecayJob {
                bc: &self.group.bc[slot * q * q..],
                ld_bc: q,
                dt,
                cs,
                r0,
                m_t: &mut m_t,
            };
            simd::dispatch_on(self.isa, decay);
            let intra = Product {
                m: rows,
                n: p,
                k: r1,
                a: Strided {
                    data: &m_t,
                    offset: 0,
                    row_stride: 1,
                    col_stride: rows,
                },
                a_col_scale: None,
                b: &self.inputs.x[x_offset(dims, b, t0, h)..],
                ldb: ld_out,
                depth: Depth::Causal { offset: r0 },
                columns: Columns::All,
            };
            matmul(self.isa, intra, &mut out[h * p..], ld_out, Store::Overwrite);
        }
        if chunk > 0 || self.inputs.initial_states.is_some() {
            // scale[i][h] = exp(cs_i) of head h
            let mut scale = vec![T::ZERO; rows * dims.heads];
            for h in 0..dims.heads {
                let cs = &self.time.cumsum[(b * dims.heads + h) * len + t0..];
                for (i, s) in scale.iter_mut().skip(h).step_by(dims.heads).enumerate() {
                    *s = cs[r0 + i].exp();
                }
            }
            for (index, block) in self.blocks.iter().enumerate() {
                let slot = (b * dims.groups + block.group) * self.plan.count + chunk;
                let w = block.count * p;
                let offset = self.slab_offset(b, index);
                let state_out = Product {
                    m: rows,
                    n: w,
                    k: n,
                    a: Strided {
                        data: &self.group.c_t,
                        offset: slot * n * q + r0,
                        row_stride: 1,
                        col_stride: chunk_rows,
                    },
                    a_col_scale: None,
                    b: &states[offset..offset + n * w],
                    ldb: w,
                    depth: Depth::Full,
                    columns: Columns::All,
                };
                let store = Store::AddGridScaled {
                    scale: &scale[block.first..],
                    ld: dims.heads,
                    block: p,
                };
                matmul(
                    self.isa,
                    state_out,
                    &mut out[block.first * p..],
                    ld_out,
                    store,
                );
            }
        }
        let finish = FinishJob {
            dims: *dims,
            inputs: self.inputs,
            first_row: b * len + t0 + r0,
            out,
        };
        simd::dispatch_on(self.isa, finish);
    }

    /// `S_next^T = exp(cs_last) S^T + B^T (w x)` for the heads of `block`, all at once:
    /// `w_l = exp(cs_last - cs_l) dt'_l` per head, x rows of the block's heads side by side.
    fn update_block(&self, chunk: usize, b: usize, block: HeadBlock, states: &[T], next: &mut [T]) {
        let dims = &self.dims;
        let (p, len) = (dims.headdim, dims.len);
        let (t0, rows) = self.plan.span(chunk, len);
        let w = block.count * p;
        let index = self
            .blocks
            .iter()
            .position(|blk| blk.first == block.first)
            .unwrap_or(0);
        let offset = self.slab_offset(b, index);
        let mut x_w = vec![T::ZERO; rows * w];
        let mut decay = vec![T::ZERO; w];
        let pack = WeightedRows {
            dims: *dims,
            x: self.inputs.x,
            time: self.time,
            b,
            t0,
            block,
            x_w: &mut x_w,
            decay: &mut decay,
        };
        simd::dispatch_on(self.isa, pack);
        let b_rows = bc_rows(self.inputs.b, dims, b, t0, block.group);
        let product = Product {
            m: dims.dstate,
            n: w,
            k: rows,
            a: Strided {
                row_stride: b_rows.col_stride,
                col_stride: b_rows.row_stride,
                ..b_rows
            },
            a_col_scale: None,
            b: &x_w,
            ldb: w,
            depth: Depth::Full,
            columns: Columns::All,
        };
        let store = Store::ScaleColumnsAddFrom {
            scale: &decay,
            previous: &states[offset..offset + next.len()],
        };
        matmul(self.isa, product, next, w, store);
    }
}

/// The right operand of a state update: for the heads of `block` side by side,
/// `x_w[l][hl * p + j] = exp(cs_last - cs_l) dt'_l x[t0 + l, head, j]`, and the state decay
/// `decay[hl * p + j] = exp(cs_last)` of each head.
struct WeightedRows<'a, 'o, T> {
    dims: SsdDims,
    x: &'a [T],
    time: &'a TimeTerms<T>,
    b: usize,
    t0: usize,
    block: HeadBlock,
    x_w: &'o mut [T],
    decay: &'o mut [T],
}

impl<T: Real> Kernel for WeightedRows<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let dims = &self.dims;
        let (p, len) = (dims.headdim, dims.len);
        let w = self.block.count * p;
        let rows = self.x_w.len() / w;
        for hl in 0..self.block.count {
            let h = self.block.first + hl;
            let bh = self.b * dims.heads + h;
            let dt = &self.time.dt[bh * len + self.t0..][..rows];
            let cs = &self.time.cumsum[bh * len + self.t0..][..rows];
            let last = cs[rows - 1];
            self.decay[hl * p..(hl + 1) * p].fill(last.exp());
            for (l, x_row) in self.x_w.chunks_exact_mut(w).enumerate() {
                let weight = (last - cs[l]).exp() * dt[l];
                let x = &self.x[x_offset(dims, self.b, self.t0 + l, h)..][..p];
                for (v, &xv) in x_row[hl * p..(hl + 1) * p].iter_mut().zip(x) {
                    *v = weight * xv;
                }
            }
        }
    }
}

/// Rows `r0..r1` of the masked decay matrix of one chunk and head, transposed:
/// `M^T[j][i - r0] = (B_j . C_i) exp(cs_i - cs_j) dt'_j` for `i >= j`, 0 below the diagonal.
struct DecayJob<'a, 'o, T> {
    /// Rows of `B C^T`, `ld_bc` apart.
    bc: &'a [T],
    ld_bc: usize,
    /// dt' and cumsum of the chunk's first r1 steps.
    dt: &'a [T],
    cs: &'a [T],
    r0: usize,
    /// `(r1, r1 - r0)`.
    m_t: &'o mut [T],
}

impl<T: Real> Kernel for DecayJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let r1 = self.cs.len();
        let rows = r1 - self.r0;
        for (j, row) in self.m_t.chunks_exact_mut(rows).enumerate() {
            let (cs_j, dt_j) = (self.cs[j], self.dt[j]);
            // Columns i = r0 + ii with i >= j are in the lower triangle of M.
            let first = j.max(self.r0);
            let bc_row = &self.bc[j * self.ld_bc..][first..r1];
            let (zeros, lower) = row.split_at_mut(first - self.r0);
            zeros.fill(T::ZERO);
            for ((m, &bc), &cs_i) in lower.iter_mut().zip(bc_row).zip(&self.cs[first..]) {
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
    bh: usize,
    dt: &'a [T],
    /// `(L, headdim)`.
    y: &'o mut [T],
    /// `(headdim, dstate)`.
    last: &'o mut [T],
}

impl<T: Real> Kernel for SequentialJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let dims = &self.dims;
        let (p, n) = (dims.headdim, dims.dstate);
        let (b, h) = (self.bh / dims.heads, self.bh % dims.heads);
        let g = h / (dims.heads / dims.groups);
        let a = self.inputs.a[h];
        let mut state = vec![T::ZERO; n * p];
        if let Some(h0) = self.inputs.initial_states {
            transpose(&h0[self.bh * p * n..][..p * n], p, n, &mut state);
        }
        for (t, y) in self.y.chunks_exact_mut(p).enumerate() {
            let dt = self.dt[t];
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
                step.block::<A, SEQ_BLOCK>(&mut state, p, j0, &mut y[j0..j0 + SEQ_BLOCK]);
                j0 += SEQ_BLOCK;
            }
            if j0 < p {
                step.tail::<A>(&mut state, p, j0, &mut y[j0..]);
            }
        }
        transpose(&state, n, p, self.last);
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
        for isa in [Isa::Scalar, Isa::Avx512] {
            simd::force_isa(Some(isa));
            for (batch, len, heads, p, n, groups) in [
                (1, 1, 1, 1, 1, 1),
                (2, 13, 4, 3, 5, 2),
                (1, 70, 3, 17, 9, 3),
                (2, 9, 2, 8, 16, 1),
            ] {
                let case = Case::new(batch, len, heads, p, n, groups);
                let (want_out, want_last) = case.naive();
                let (out, last) = run(ssd_scan_sequential, &case, 1);
                assert_close(&out, &want_out, "sequential out");
                assert_close(&last, &want_last, "sequential state");
                for chunk in [1, 3, 4, 16, 64, 1000] {
                    let (out, last) = run(ssd_scan, &case, chunk);
                    assert_close(&out, &want_out, "chunked out");
                    assert_close(&last, &want_last, "chunked state");
                }
            }
        }
        simd::force_isa(None);
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
