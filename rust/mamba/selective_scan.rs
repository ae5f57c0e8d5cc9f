//! The Mamba-1 selective scan (S6), as `mamba_ssm.selective_scan_fn` defines it.
//!
//! For every batch row b and channel d, with state h in R^dstate and h_{-1} = initial state:
//!
//! ```text
//! delta'_t = softplus(delta_t + delta_bias)        (or delta_t + delta_bias without softplus)
//! h_t      = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t
//! y_t      = C_t . h_t + D u_t;       out_t = y_t * silu(z_t)
//! ```
//!
//! The kernel vectorises across channels: a block of [`LANES`] channels of one batch row runs
//! the recurrence side by side, one SIMD lane per channel, so there is no horizontal reduction
//! and B_t, C_t are broadcast (a block never straddles a group). Time is processed in chunks of
//! [`TIME_CHUNK`] steps whose inputs are first transposed into small time-major buffers. Blocks
//! run in parallel; each block's result does not depend on the others, so the output is the
//! same for every thread count. Nothing of size (L, dstate) is ever stored.

use crate::error::{check_len, KernelError};
use crate::parallel;
use crate::simd::{self, Arch, Kernel, Real};

/// Channels per SIMD block (one 512-bit register of f32).
pub const LANES: usize = 16;
/// Time steps transposed and processed per chunk.
pub const TIME_CHUNK: usize = 64;

/// How B or C is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BcForm {
    /// `(dim, dstate)`: one vector per channel, the same at every step.
    Fixed,
    /// `(batch, groups, dstate, L)`: channel d reads group `d / (dim / groups)`;
    /// `(batch, dstate, L)` is `groups = 1`.
    Variable {
        /// The number of groups; it divides `dim`.
        groups: usize,
    },
}

impl BcForm {
    fn expected_len(self, batch: usize, dim: usize, dstate: usize, len: usize) -> Vec<usize> {
        match self {
            BcForm::Fixed => vec![dim, dstate],
            BcForm::Variable { groups } => vec![batch, groups, dstate, len],
        }
    }

    /// Channels per group (`dim` for the fixed form, which never forces a block boundary).
    fn channels_per_group(self, dim: usize) -> usize {
        match self {
            BcForm::Fixed => dim.max(1),
            BcForm::Variable { groups } => dim / groups,
        }
    }
}

/// Sizes of one selective-scan call.
#[derive(Clone, Copy, Debug)]
pub struct ScanDims {
    /// Batch size.
    pub batch: usize,
    /// Channels (`d_inner`).
    pub dim: usize,
    /// State size per channel (`d_state`).
    pub dstate: usize,
    /// Sequence length L.
    pub len: usize,
    /// Form of B.
    pub b_form: BcForm,
    /// Form of C.
    pub c_form: BcForm,
}

/// Inputs of one selective-scan call; all arrays are C-contiguous with the shapes of the
/// module docs.
#[derive(Clone, Copy, Debug)]
pub struct ScanInputs<'a, T> {
    /// `(batch, dim, L)`.
    pub u: &'a [T],
    /// `(batch, dim, L)`.
    pub delta: &'a [T],
    /// `(dim, dstate)`.
    pub a: &'a [T],
    /// See [`BcForm`].
    pub b: &'a [T],
    /// See [`BcForm`].
    pub c: &'a [T],
    /// `(dim,)`: skip connection.
    pub d: Option<&'a [T]>,
    /// `(batch, dim, L)`: gate, out = y * silu(z).
    pub z: Option<&'a [T]>,
    /// `(dim,)`: added to delta before the softplus.
    pub delta_bias: Option<&'a [T]>,
    /// Apply softplus (threshold 20) to delta + delta_bias.
    pub delta_softplus: bool,
    /// `(batch, dim, dstate)`: h_{-1}; zeros when `None`.
    pub initial_state: Option<&'a [T]>,
}

/// Runs the scan. `out` is `(batch, dim, L)`, `last_state` is `(batch, dim, dstate)`; both are
/// overwritten.
pub fn selective_scan<T: Real>(
    dims: ScanDims,
    inputs: ScanInputs<'_, T>,
    out: &mut [T],
    last_state: &mut [T],
) -> Result<(), KernelError> {
    validate(&dims, &inputs)?;
    check_len("out", out, &[dims.batch, dims.dim, dims.len])?;
    check_len(
        "last_state",
        last_state,
        &[dims.batch, dims.dim, dims.dstate],
    )?;
    if dims.batch == 0 || dims.dim == 0 {
        return Ok(());
    }
    let isa = simd::isa();
    let blocks = channel_blocks(&dims);
    let rows = split_rows(&dims, &blocks, out, last_state);
    let work = dims.batch * dims.dim * dims.len.max(1) * dims.dstate.max(1);
    let scan_block = |scratch: &mut Scratch<T>, row| {
        let job = BlockJob {
            dims,
            inputs,
            row,
            scratch,
        };
        simd::dispatch_on(isa, job)
    };
    parallel::for_each_init(rows, work, || Scratch::new(&dims), scan_block);
    Ok(())
}

fn validate<T>(dims: &ScanDims, x: &ScanInputs<'_, T>) -> Result<(), KernelError> {
    let (batch, dim, dstate, len) = (dims.batch, dims.dim, dims.dstate, dims.len);
    for (name, form) in [("B", dims.b_form), ("C", dims.c_form)] {
        if let BcForm::Variable { groups } = form {
            if groups == 0 || dim % groups != 0 {
                return Err(KernelError::value(
                    name,
                    format!("{groups} groups must divide dim = {dim}"),
                ));
            }
        }
    }
    check_len("u", x.u, &[batch, dim, len])?;
    check_len("delta", x.delta, &[batch, dim, len])?;
    check_len("A", x.a, &[dim, dstate])?;
    check_len("B", x.b, &dims.b_form.expected_len(batch, dim, dstate, len))?;
    check_len("C", x.c, &dims.c_form.expected_len(batch, dim, dstate, len))?;
    if let Some(d) = x.d {
        check_len("D", d, &[dim])?;
    }
    if let Some(z) = x.z {
        check_len("z", z, &[batch, dim, len])?;
    }
    if let Some(bias) = x.delta_bias {
        check_len("delta_bias", bias, &[dim])?;
    }
    if let Some(h0) = x.initial_state {
        check_len("initial_state", h0, &[batch, dim, dstate])?;
    }
    Ok(())
}

/// Splits `0..dim` into ranges of at most [`LANES`] channels that never cross a group boundary
/// of B or of C.
fn channel_blocks(dims: &ScanDims) -> Vec<(usize, usize)> {
    let b_group = dims.b_form.channels_per_group(dims.dim);
    let c_group = dims.c_form.channels_per_group(dims.dim);
    let mut blocks = Vec::with_capacity(dims.dim / LANES + 1);
    let mut start = 0;
    while start < dims.dim {
        let next_b = (start / b_group + 1) * b_group;
        let next_c = (start / c_group + 1) * c_group;
        let end = (start + LANES).min(next_b).min(next_c).min(dims.dim);
        blocks.push((start, end));
        start = end;
    }
    blocks
}

/// The part of the outputs one block writes.
struct BlockRow<'o, T> {
    batch: usize,
    channels: (usize, usize),
    out: &'o mut [T],
    last_state: &'o mut [T],
}

fn split_rows<'o, T>(
    dims: &ScanDims,
    blocks: &[(usize, usize)],
    out: &'o mut [T],
    last_state: &'o mut [T],
) -> Vec<BlockRow<'o, T>> {
    let mut rows = Vec::with_capacity(dims.batch * blocks.len());
    let (mut out, mut last_state) = (out, last_state);
    for batch in 0..dims.batch {
        for &(start, end) in blocks {
            let width = end - start;
            let (o, rest_out) = std::mem::take(&mut out).split_at_mut(width * dims.len);
            let (s, rest_state) = std::mem::take(&mut last_state).split_at_mut(width * dims.dstate);
            out = rest_out;
            last_state = rest_state;
            rows.push(BlockRow {
                batch,
                channels: (start, end),
                out: o,
                last_state: s,
            });
        }
    }
    rows
}

/// One block of channels of one batch row, compiled per ISA by [`simd::dispatch_on`].
struct BlockJob<'a, 'o, 's, T> {
    dims: ScanDims,
    inputs: ScanInputs<'a, T>,
    row: BlockRow<'o, T>,
    scratch: &'s mut Scratch<T>,
}

type Lanes<T> = [T; LANES];

/// Buffers a block works in, allocated once per rayon job and reused by its blocks (a decode
/// step, L = 1, would otherwise spend its time in the allocator).
struct Scratch<T> {
    /// A log2(e) as `[dstate][lane]`.
    a_log2: Vec<Lanes<T>>,
    /// Fixed B and C as `[dstate][lane]` (empty when variable).
    b_fixed: Vec<Lanes<T>>,
    c_fixed: Vec<Lanes<T>>,
    /// The state h as `[dstate][lane]`.
    h: Vec<Lanes<T>>,
    chunk: Chunk<T>,
}

impl<T: Real> Scratch<T> {
    fn new(dims: &ScanDims) -> Self {
        let n = dims.dstate;
        // Short sequences (a decode step is L = 1) only pay for the steps they have.
        let steps = TIME_CHUNK.min(dims.len);
        let lanes = |len: usize| vec![[T::ZERO; LANES]; len];
        let fixed = |form: BcForm| lanes(if form == BcForm::Fixed { n } else { 0 });
        let variable =
            |form: BcForm| vec![T::ZERO; if form == BcForm::Fixed { 0 } else { steps * n }];
        Scratch {
            a_log2: lanes(n),
            b_fixed: fixed(dims.b_form),
            c_fixed: fixed(dims.c_form),
            h: lanes(n),
            chunk: Chunk {
                delta: lanes(steps),
                u: lanes(steps),
                z: lanes(steps),
                b: variable(dims.b_form),
                c: variable(dims.c_form),
                y: lanes(steps),
            },
        }
    }
}

/// Time-major buffers of one chunk.
struct Chunk<T> {
    delta: Vec<Lanes<T>>,
    u: Vec<Lanes<T>>,
    z: Vec<Lanes<T>>,
    b: Vec<T>,
    c: Vec<T>,
    y: Vec<Lanes<T>>,
}

impl<T: Real> Kernel for BlockJob<'_, '_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        match (self.dims.b_form, self.dims.c_form) {
            (BcForm::Fixed, BcForm::Fixed) => self.scan::<A, true, true>(),
            (BcForm::Fixed, _) => self.scan::<A, true, false>(),
            (_, BcForm::Fixed) => self.scan::<A, false, true>(),
            _ => self.scan::<A, false, false>(),
        }
    }
}

impl<T: Real> BlockJob<'_, '_, '_, T> {
    /// Loads per-channel constants, runs the chunks in order and stores the last state.
    #[inline(always)]
    fn scan<A: Arch, const B_FIXED: bool, const C_FIXED: bool>(self) {
        let n = self.dims.dstate;
        let (start, end) = self.row.channels;
        let width = end - start;
        let Scratch {
            a_log2,
            b_fixed,
            c_fixed,
            h,
            chunk,
        } = self.scratch;
        // exp(delta' A) = exp2(delta' A log2(e)): scale A once here.
        to_lanes(a_log2, self.inputs.a, start, end, n);
        for x in a_log2.iter_mut().flatten() {
            *x *= T::LOG2E;
        }
        if B_FIXED {
            to_lanes(b_fixed, self.inputs.b, start, end, n);
        }
        if C_FIXED {
            to_lanes(c_fixed, self.inputs.c, start, end, n);
        }
        let per_channel = |data: Option<&[T]>| -> Lanes<T> {
            let mut v = [T::ZERO; LANES];
            if let Some(data) = data {
                v[..width].copy_from_slice(&data[start..end]);
            }
            v
        };
        let d_skip = per_channel(self.inputs.d);
        let bias = per_channel(self.inputs.delta_bias);
        match self.inputs.initial_state {
            Some(h0) => {
                let base = self.row.batch * self.dims.dim * n;
                to_lanes(h, &h0[base..base + self.dims.dim * n], start, end, n);
            }
            None => h.iter_mut().for_each(|lanes| *lanes = [T::ZERO; LANES]),
        }
        let block = BlockData {
            dims: self.dims,
            inputs: self.inputs,
            batch: self.row.batch,
            channels: (start, end),
        };
        let step = StepConsts {
            a_log2,
            b_fixed,
            c_fixed,
            d_skip: &d_skip,
        };
        let mut t0 = 0;
        while t0 < self.dims.len {
            let steps = TIME_CHUNK.min(self.dims.len - t0);
            block.load_chunk::<A, B_FIXED, C_FIXED>(chunk, t0, steps, &bias);
            for t in 0..steps {
                chunk.y[t] = scan_step::<T, A, B_FIXED, C_FIXED>(h, chunk, t, n, &step);
            }
            block.store_chunk::<A>(chunk, self.row.out, t0, steps);
            t0 += steps;
        }
        from_lanes(self.row.last_state, h, width, n);
    }
}

/// Writes `data[ch, k]` of a `(dim, dstate)` array to `dest[k][ch - start]` for the block's
/// channels, and 0 to the padding lanes.
#[inline(always)]
fn to_lanes<T: Real>(dest: &mut [Lanes<T>], data: &[T], start: usize, end: usize, n: usize) {
    let dest = &mut dest[..n];
    for lanes in dest.iter_mut() {
        *lanes = [T::ZERO; LANES];
    }
    for (lane, row) in data[start * n..end * n].chunks_exact(n.max(1)).enumerate() {
        for (lanes, &value) in dest.iter_mut().zip(row) {
            lanes[lane] = value;
        }
    }
}

/// The inverse of [`to_lanes`]: writes lane `l < width` of `src[k]` to `data[l, k]`.
#[inline(always)]
fn from_lanes<T: Real>(data: &mut [T], src: &[Lanes<T>], width: usize, n: usize) {
    for (lane, row) in data[..width * n].chunks_exact_mut(n.max(1)).enumerate() {
        for (value, lanes) in row.iter_mut().zip(src) {
            *value = lanes[lane];
        }
    }
}

/// What a block reads: the inputs, its batch row and its channels.
struct BlockData<'a, T> {
    dims: ScanDims,
    inputs: ScanInputs<'a, T>,
    batch: usize,
    channels: (usize, usize),
}

impl<T: Real> BlockData<'_, T> {
    /// Transposes steps `t0..t0 + steps` of u, delta' and z to time-major lanes and copies
    /// B_t, C_t of this block's group to `[t][dstate]`.
    #[inline(always)]
    fn load_chunk<A: Arch, const B_FIXED: bool, const C_FIXED: bool>(
        &self,
        chunk: &mut Chunk<T>,
        t0: usize,
        steps: usize,
        bias: &Lanes<T>,
    ) {
        let (len, n, dim) = (self.dims.len, self.dims.dstate, self.dims.dim);
        let (start, end) = self.channels;
        let row_base = self.batch * dim * len;
        // Padding lanes (a block narrower than LANES) see u = delta = 0, so their h stays 0.
        for t in 0..steps {
            chunk.u[t][end - start..].fill(T::ZERO);
            chunk.delta[t][end - start..].fill(T::ZERO);
        }
        let to_lane = |dest: &mut [Lanes<T>], src: &[T], lane: usize| {
            for (lanes, &x) in dest[..steps].iter_mut().zip(&src[..steps]) {
                lanes[lane] = x;
            }
        };
        for (lane, ch) in (start..end).enumerate() {
            let base = row_base + ch * len + t0;
            to_lane(&mut chunk.u, &self.inputs.u[base..], lane);
            to_lane(&mut chunk.delta, &self.inputs.delta[base..], lane);
            if let Some(z) = self.inputs.z {
                to_lane(&mut chunk.z, &z[base..], lane);
            }
        }
        for lanes in chunk.delta[..steps].iter_mut() {
            for (x, &b) in lanes.iter_mut().zip(bias) {
                *x += b;
            }
        }
        if self.inputs.delta_softplus {
            for lanes in chunk.delta[..steps].iter_mut() {
                for x in lanes.iter_mut() {
                    *x = x.softplus_on::<A>();
                }
            }
        }
        let copy_group = |form: BcForm, data: &[T], dest: &mut [T]| {
            if let BcForm::Variable { groups } = form {
                let group = start / (dim / groups);
                let base = (self.batch * groups + group) * n * len + t0;
                for k in 0..n {
                    let src = &data[base + k * len..][..steps];
                    for (row, &x) in dest.chunks_exact_mut(n).zip(src) {
                        row[k] = x;
                    }
                }
            }
        };
        if !B_FIXED {
            copy_group(self.dims.b_form, self.inputs.b, &mut chunk.b);
        }
        if !C_FIXED {
            copy_group(self.dims.c_form, self.inputs.c, &mut chunk.c);
        }
    }

    /// Applies the gate and writes the chunk's outputs back to `(channel, L)` rows.
    #[inline(always)]
    fn store_chunk<A: Arch>(&self, chunk: &mut Chunk<T>, out: &mut [T], t0: usize, steps: usize) {
        let len = self.dims.len;
        let width = self.channels.1 - self.channels.0;
        if self.inputs.z.is_some() {
            // out = y * silu(z), vectorised across lanes before the transpose.
            for (y, z) in chunk.y[..steps].iter_mut().zip(&chunk.z[..steps]) {
                for l in 0..LANES {
                    y[l] *= z[l].silu_on::<A>();
                }
            }
        }
        for lane in 0..width {
            let row = &mut out[lane * len + t0..lane * len + t0 + steps];
            for (o, y) in row.iter_mut().zip(&chunk.y[..steps]) {
                *o = y[lane];
            }
        }
    }
}

/// Per-block constants of the step: A log2(e), fixed B or C, and D, as `[dstate][lane]` / lanes.
struct StepConsts<'s, T> {
    a_log2: &'s [Lanes<T>],
    b_fixed: &'s [Lanes<T>],
    c_fixed: &'s [Lanes<T>],
    d_skip: &'s Lanes<T>,
}

/// One time step for all lanes:
/// `h[k] = exp2(delta' A[k] log2 e) h[k] + (delta' u) B_t[k]`, `y = sum_k C_t[k] h[k] + D u`.
#[inline(always)]
fn scan_step<T: Real, A: Arch, const B_FIXED: bool, const C_FIXED: bool>(
    h: &mut [Lanes<T>],
    chunk: &Chunk<T>,
    t: usize,
    n: usize,
    consts: &StepConsts<'_, T>,
) -> Lanes<T> {
    let delta = &chunk.delta[t];
    let u = &chunk.u[t];
    let mut delta_u = [T::ZERO; LANES];
    let mut y = [T::ZERO; LANES];
    for l in 0..LANES {
        delta_u[l] = delta[l] * u[l];
    }
    let b_t = if B_FIXED {
        &[][..]
    } else {
        &chunk.b[t * n..t * n + n]
    };
    let c_t = if C_FIXED {
        &[][..]
    } else {
        &chunk.c[t * n..t * n + n]
    };
    // Equal lengths let the compiler drop the bounds checks inside the loop.
    let (h, a_log2) = (&mut h[..n], &consts.a_log2[..n]);
    let b_fixed = if B_FIXED {
        &consts.b_fixed[..n]
    } else {
        &[][..]
    };
    let c_fixed = if C_FIXED {
        &consts.c_fixed[..n]
    } else {
        &[][..]
    };
    for k in 0..n {
        let (h_k, a_k) = (&mut h[k], &a_log2[k]);
        for l in 0..LANES {
            let b = if B_FIXED { b_fixed[k][l] } else { b_t[k] };
            let c = if C_FIXED { c_fixed[k][l] } else { c_t[k] };
            let decay = (delta[l] * a_k[l]).exp2_on::<A>();
            h_k[l] = T::fma::<A>(decay, h_k[l], delta_u[l] * b);
            y[l] = T::fma::<A>(c, h_k[l], y[l]);
        }
    }
    for l in 0..LANES {
        y[l] = T::fma::<A>(consts.d_skip[l], u[l], y[l]);
    }
    y
}
