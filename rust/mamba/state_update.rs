//! One decode step of a Mamba layer (`mamba_ssm.selective_state_update`), updating the state
//! in place.
//!
//! The state is `(batch, heads, headdim, dstate)`; the Mamba-1 form is `heads = dim`,
//! `headdim = 1`. For every row (b, h, p), with dt' = softplus(dt + dt_bias) when asked:
//!
//! ```text
//! state[k] = exp(dt' A[k]) state[k] + dt' B[k] x;   y = sum_k C[k] state[k] + D x;   y *= silu(z)
//! ```
//!
//! Rows run in parallel; within a row the loop over the state dimension vectorises.

use crate::error::{check_len, KernelError};
use crate::parallel;
use crate::simd::{self, Arch, Kernel, Real};

/// Whether a per-head parameter also varies along the head dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One value per head: shape `(heads,)` (or `(batch, heads)` for dt).
    PerHead,
    /// One value per (head, p): shape `(heads, headdim)` (or `(batch, heads, headdim)`).
    PerHeadDim,
}

/// How A is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecayForm {
    /// `(heads,)`: one scalar per head, the Mamba-2 form.
    PerHead,
    /// `(heads, headdim, dstate)`: the Mamba-1 form (`headdim = 1`) and mamba_ssm's full form.
    Full,
}

/// Sizes of one decode step.
#[derive(Clone, Copy, Debug)]
pub struct UpdateDims {
    /// Batch size.
    pub batch: usize,
    /// Heads (the channel count in the Mamba-1 form).
    pub heads: usize,
    /// Channels per head (1 in the Mamba-1 form).
    pub headdim: usize,
    /// State size.
    pub dstate: usize,
    /// Groups of B and C; they divide `heads`.
    pub groups: usize,
    /// Shape of dt (and of dt_bias, D when given).
    pub dt_form: Granularity,
    /// Shape of D.
    pub d_form: Granularity,
    /// Shape of dt_bias.
    pub bias_form: Granularity,
    /// Shape of A.
    pub a_form: DecayForm,
}

/// Inputs of one decode step (C-contiguous).
#[derive(Clone, Copy, Debug)]
pub struct UpdateInputs<'a, T> {
    /// `(batch, heads, headdim)`.
    pub x: &'a [T],
    /// See [`UpdateDims::dt_form`].
    pub dt: &'a [T],
    /// See [`DecayForm`].
    pub a: &'a [T],
    /// `(batch, groups, dstate)`.
    pub b: &'a [T],
    /// `(batch, groups, dstate)`.
    pub c: &'a [T],
    /// Skip connection.
    pub d: Option<&'a [T]>,
    /// `(batch, heads, headdim)`: gate.
    pub z: Option<&'a [T]>,
    /// Added to dt before the softplus.
    pub dt_bias: Option<&'a [T]>,
    /// Apply softplus (threshold 20) to dt + dt_bias.
    pub dt_softplus: bool,
}

fn granular_dims(form: Granularity, lead: &[usize], heads: usize, headdim: usize) -> Vec<usize> {
    let mut dims = lead.to_vec();
    dims.push(heads);
    if form == Granularity::PerHeadDim {
        dims.push(headdim);
    }
    dims
}

fn granular_index(form: Granularity, head: usize, p: usize, headdim: usize) -> usize {
    match form {
        Granularity::PerHead => head,
        Granularity::PerHeadDim => head * headdim + p,
    }
}

/// Runs one step: updates `state` `(batch, heads, headdim, dstate)` in place and writes `out`
/// `(batch, heads, headdim)`.
pub fn selective_state_update<T: Real>(
    dims: UpdateDims,
    inputs: UpdateInputs<'_, T>,
    state: &mut [T],
    out: &mut [T],
) -> Result<(), KernelError> {
    let UpdateDims {
        batch,
        heads,
        headdim,
        dstate,
        groups,
        ..
    } = dims;
    if groups == 0 || heads % groups != 0 {
        return Err(KernelError::value(
            "B",
            format!("{groups} groups must divide {heads}"),
        ));
    }
    check_len("state", state, &[batch, heads, headdim, dstate])?;
    check_len("out", out, &[batch, heads, headdim])?;
    check_len("x", inputs.x, &[batch, heads, headdim])?;
    check_len(
        "dt",
        inputs.dt,
        &granular_dims(dims.dt_form, &[batch], heads, headdim),
    )?;
    let a_dims = match dims.a_form {
        DecayForm::PerHead => vec![heads],
        DecayForm::Full => vec![heads, headdim, dstate],
    };
    check_len("A", inputs.a, &a_dims)?;
    check_len("B", inputs.b, &[batch, groups, dstate])?;
    check_len("C", inputs.c, &[batch, groups, dstate])?;
    if let Some(d) = inputs.d {
        check_len("D", d, &granular_dims(dims.d_form, &[], heads, headdim))?;
    }
    if let Some(z) = inputs.z {
        check_len("z", z, &[batch, heads, headdim])?;
    }
    if let Some(bias) = inputs.dt_bias {
        check_len(
            "dt_bias",
            bias,
            &granular_dims(dims.bias_form, &[], heads, headdim),
        )?;
    }
    let isa = simd::isa();
    // A task takes whole (batch, head) pairs, about 16k state elements' worth.
    let head_len = headdim * dstate;
    let heads_per_task = (16384 / head_len.max(1)).max(1);
    let tasks = split_heads(
        state,
        out,
        heads_per_task * head_len,
        heads_per_task * headdim,
    );
    let tasks: Vec<_> = tasks.into_iter().enumerate().collect();
    let work = batch * heads * head_len;
    let update_heads = |_: &mut (), (task, (state, out)): (usize, (&mut [T], &mut [T]))| {
        let first = task * heads_per_task;
        simd::dispatch_on(
            isa,
            HeadsJob {
                dims,
                inputs,
                first,
                state,
                out,
            },
        );
    };
    parallel::for_each_init_above(PARALLEL_MIN_STATE, tasks, work, || (), update_heads);
    Ok(())
}

/// Splits state and out into matching task slices (also when one of them is empty).
fn split_heads<'o, T>(
    state: &'o mut [T],
    out: &'o mut [T],
    state_step: usize,
    out_step: usize,
) -> Vec<(&'o mut [T], &'o mut [T])> {
    if out_step == 0 {
        return Vec::new();
    }
    let tasks = out.len().div_ceil(out_step);
    let (mut state, mut out) = (state, out);
    let mut parts = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let s_len = state_step.min(state.len());
        let o_len = out_step.min(out.len());
        let (s, rest_state) = std::mem::take(&mut state).split_at_mut(s_len);
        let (o, rest_out) = std::mem::take(&mut out).split_at_mut(o_len);
        state = rest_state;
        out = rest_out;
        parts.push((s, o));
    }
    parts
}

/// State elements below which a step runs on the calling thread: an element costs a few
/// vector instructions, so a decode step of mamba2-130m (24 x 64 x 128, ~13 us on one core)
/// is less work than waking the pool and waiting for it.
const PARALLEL_MIN_STATE: usize = 1 << 20;

/// Whole heads `first..` (flat `batch * heads + head` indices) of the multi-head form.
struct HeadsJob<'a, 'o, T> {
    dims: UpdateDims,
    inputs: UpdateInputs<'a, T>,
    first: usize,
    state: &'o mut [T],
    out: &'o mut [T],
}

/// Partial sums kept per lane so that the reduction over the state vectorises.
const ACC: usize = 16;

impl<T: Real> Kernel for HeadsJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let UpdateDims {
            heads,
            headdim,
            dstate: n,
            groups,
            ..
        } = self.dims;
        if self.dims.a_form == DecayForm::Full && headdim == 1 {
            self.channels::<A>();
            return;
        }
        let inputs = self.inputs;
        let head_len = headdim * n;
        let count = self.out.len().checked_div(headdim).unwrap_or(0);
        for i in 0..count {
            let bh = self.first + i;
            let (b, head) = (bh / heads, bh % heads);
            let bc = (b * groups + head / (heads / groups)) * n;
            let (b_vec, c_vec) = (&inputs.b[bc..bc + n], &inputs.c[bc..bc + n]);
            // Mamba-2's usual form has one step size (and one decay) per head: computed once,
            // not once per row, as the same expressions give the same values.
            let per_head = self.dims.dt_form == Granularity::PerHead
                && (inputs.dt_bias.is_none() || self.dims.bias_form == Granularity::PerHead);
            let head_dt = per_head.then(|| self.step_size::<A>(bh, head, 0));
            let head_decay = match (head_dt, self.dims.a_form) {
                (Some(dt), DecayForm::PerHead) => Some((dt * inputs.a[head]).exp_on::<A>()),
                _ => None,
            };
            if let (Some(dt), Some(decay)) = (head_dt, head_decay) {
                // One step size and decay for the whole head: rows in blocks of ROWS.
                let head_start = i * head_len;
                for p0 in (0..headdim).step_by(ROWS) {
                    // The state comes from memory once per token: ask for the rows two
                    // blocks ahead (they may be the next head's) while this block computes.
                    let ahead = head_start + (p0 + 2 * ROWS) * n;
                    let ahead_end = (ahead + ROWS * n).min(self.state.len());
                    if ahead < ahead_end {
                        simd::prefetch(&self.state[ahead..ahead_end]);
                    }
                    let head_state = &mut self.state[head_start..head_start + head_len];
                    let rows = ROWS.min(headdim - p0);
                    let first_row = bh * headdim + p0;
                    let mut dt_x = [T::ZERO; ROWS];
                    for (r, v) in dt_x[..rows].iter_mut().enumerate() {
                        *v = dt * inputs.x[first_row + r];
                    }
                    let mut ys = [T::ZERO; ROWS];
                    let block = &mut head_state[p0 * n..(p0 + rows) * n];
                    update_rows_uniform::<T, A>(block, b_vec, c_vec, &dt_x[..rows], decay, &mut ys);
                    for (r, &y) in ys[..rows].iter().enumerate() {
                        let (p, row) = (p0 + r, first_row + r);
                        let y = finish::<T, A>(&self.dims, &inputs, head, p, row, y);
                        self.out[i * headdim + p] = y;
                    }
                }
                continue;
            }
            for p in 0..headdim {
                let dt = head_dt.unwrap_or_else(|| self.step_size::<A>(bh, head, p));
                let row = bh * headdim + p;
                let x = inputs.x[row];
                let h = &mut self.state[i * head_len + p * n..][..n];
                let y = match self.dims.a_form {
                    DecayForm::PerHead => {
                        let decay = (dt * inputs.a[head]).exp_on::<A>();
                        update_row::<T, A>(h, b_vec, c_vec, dt * x, Decay::Uniform(decay))
                    }
                    DecayForm::Full => {
                        let a = &inputs.a[(head * headdim + p) * n..][..n];
                        update_row::<T, A>(h, b_vec, c_vec, dt * x, Decay::PerState(dt, a))
                    }
                };
                self.out[i * headdim + p] = finish::<T, A>(&self.dims, &inputs, head, p, row, y);
            }
        }
    }
}

impl<T: Real> HeadsJob<'_, '_, T> {
    /// The Mamba-1 form (one channel per head, A per channel and state index): the step sizes
    /// and gates of a block of [`CHANNELS`] channels first, in loops that vectorise across
    /// channels, then each channel's row of the state as one vector (decays included).
    #[inline(always)]
    fn channels<A: Arch>(self) {
        let (heads, n, groups) = (self.dims.heads, self.dims.dstate, self.dims.groups);
        let inputs = self.inputs;
        let count = self.out.len();
        for c0 in (0..count).step_by(CHANNELS) {
            let m = CHANNELS.min(count - c0);
            let first = self.first + c0;
            let mut dts = [T::ZERO; CHANNELS];
            for (j, dt) in dts[..m].iter_mut().enumerate() {
                *dt = self.step_size::<A>(first + j, (first + j) % heads, 0);
            }
            let mut gates = [T::ONE; CHANNELS];
            if let Some(z) = inputs.z {
                for (g, &z) in gates[..m].iter_mut().zip(&z[first..first + m]) {
                    *g = z.silu_on::<A>();
                }
            }
            for j in 0..m {
                let bh = first + j;
                let (b, head) = (bh / heads, bh % heads);
                let bc = (b * groups + head / (heads / groups)) * n;
                let (b_vec, c_vec) = (&inputs.b[bc..bc + n], &inputs.c[bc..bc + n]);
                let (dt, x, a) = (dts[j], inputs.x[bh], &inputs.a[head * n..(head + 1) * n]);
                let h = &mut self.state[(c0 + j) * n..(c0 + j + 1) * n];
                let mut y = update_row::<T, A>(h, b_vec, c_vec, dt * x, Decay::PerState(dt, a));
                if let Some(d) = inputs.d {
                    y += d[head] * x;
                }
                self.out[c0 + j] = y * gates[j];
            }
        }
    }

    /// dt' = softplus(dt + dt_bias) for row (bh, p).
    #[inline(always)]
    fn step_size<A: Arch>(&self, bh: usize, head: usize, p: usize) -> T {
        let (dims, inputs) = (&self.dims, &self.inputs);
        let mut dt = inputs.dt[granular_index(dims.dt_form, bh, p, dims.headdim)];
        if let Some(bias) = inputs.dt_bias {
            dt += bias[granular_index(dims.bias_form, head, p, dims.headdim)];
        }
        if inputs.dt_softplus {
            dt = dt.softplus_on::<A>();
        }
        dt
    }
}

/// `(y + D x) * silu(z)` for row `row` (head `head`, channel `p` of the head).
#[inline(always)]
fn finish<T: Real, A: Arch>(
    dims: &UpdateDims,
    inputs: &UpdateInputs<'_, T>,
    head: usize,
    p: usize,
    row: usize,
    y: T,
) -> T {
    let mut y = y;
    if let Some(d) = inputs.d {
        y += d[granular_index(dims.d_form, head, p, dims.headdim)] * inputs.x[row];
    }
    if let Some(z) = inputs.z {
        y *= z[row].silu_on::<A>();
    }
    y
}

/// Channels per block of the Mamba-1 form's step sizes and gates.
const CHANNELS: usize = 64;

/// State rows updated together when a head has one step size and decay (independent rows
/// interleaved hide the latency of each row's chain of sums).
const ROWS: usize = 4;

/// [`update_row`] for `dt_x.len()` consecutive rows of `block` (each of B's length) with one
/// decay (Mamba-2's scalar A per head), writing each row's sum into `ys`. For f32 on AVX-512,
/// explicit 16-lane vectors do the same operations in the same order (a lane is one of the ACC
/// partial sums, reduced by [`tree_sum`]'s tree), so the AVX2 and AVX-512 paths give the same bits.
#[inline(always)]
fn update_rows_uniform<T: Real, A: Arch>(
    block: &mut [T],
    b: &[T],
    c: &[T],
    dt_x: &[T],
    decay: T,
    ys: &mut [T; ROWS],
) {
    let n = b.len();
    #[cfg(target_arch = "x86_64")]
    if A::AVX512 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked just above), so the slices have f32's layout.
        let cast =
            |x: &[T]| unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) };
        let (b32, c32) = (cast(b), cast(&c[..n]));
        // SAFETY: as above.
        let block32 = unsafe {
            std::slice::from_raw_parts_mut(block.as_mut_ptr().cast::<f32>(), block.len())
        };
        let mut dt_x32 = [0.0f32; ROWS];
        for (d, &v) in dt_x32.iter_mut().zip(dt_x) {
            *d = v.to_f64() as f32;
        }
        let mut ys32 = [0.0f32; ROWS];
        let n = b.len();
        let decay = decay.to_f64() as f32;
        // SAFETY: A::AVX512 says the dispatch enabled (and checked) AVX-512 F; the block
        // holds dt_x.len() rows of n values.
        unsafe {
            if dt_x.len() == ROWS {
                update_rows_f32_avx512::<ROWS>(block32, b32, c32, &dt_x32, decay, &mut ys32);
            } else {
                for (r, h) in block32.chunks_exact_mut(n).enumerate() {
                    let (dt_x, y) = (&dt_x32[r..r + 1], &mut ys32[r..r + 1]);
                    let (dt_x, y) = (dt_x.try_into().expect("1"), y.try_into().expect("1"));
                    update_rows_f32_avx512::<1>(h, b32, c32, dt_x, decay, y);
                }
            }
        };
        for (y, v) in ys.iter_mut().zip(ys32) {
            *y = T::from_f64(f64::from(v));
        }
        return;
    }
    for (r, (h, &dt_x)) in block.chunks_exact_mut(n).zip(dt_x).enumerate() {
        ys[r] = update_row::<T, A>(h, b, c, dt_x, Decay::Uniform(decay));
    }
}

/// The f32 AVX-512 body of [`update_rows_uniform`]: the rows' blocks of 16 interleaved.
///
/// # Safety
/// The CPU must have AVX-512 F; `block` holds `dt_x.len()` rows of `b.len()` values and `c`
/// is as long as `b`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn update_rows_f32_avx512<const R: usize>(
    block: &mut [f32],
    b: &[f32],
    c: &[f32],
    dt_x: &[f32; R],
    decay: f32,
    ys: &mut [f32; R],
) {
    use std::arch::x86_64::*;
    let n = b.len();
    let blocks = n / ACC;
    let decays = _mm512_set1_ps(decay);
    let scaled: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(dt_x[r]));
    let mut acc = [_mm512_setzero_ps(); R];
    let (hp, bp, cp) = (block.as_mut_ptr(), b.as_ptr(), c.as_ptr());
    for j in 0..blocks {
        let at = j * ACC;
        let (bv, cv) = (_mm512_loadu_ps(bp.add(at)), _mm512_loadu_ps(cp.add(at)));
        for r in 0..R {
            let h = hp.add(r * n + at);
            let input = _mm512_mul_ps(scaled[r], bv);
            let state = _mm512_fmadd_ps(decays, _mm512_loadu_ps(h), input);
            _mm512_storeu_ps(h, state);
            acc[r] = _mm512_fmadd_ps(cv, state, acc[r]);
        }
    }
    for r in 0..R {
        let mut lanes = [0.0f32; ACC];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r]);
        let h = &mut block[r * n..(r + 1) * n];
        for k in blocks * ACC..n {
            h[k] = decay.mul_add(h[k], dt_x[r] * b[k]);
            lanes[k % ACC] = c[k].mul_add(h[k], lanes[k % ACC]);
        }
        ys[r] = tree_sum(lanes);
    }
}

/// The sum of the ACC partial sums as a tree (halves added lane-wise): four dependent adds
/// instead of fifteen, in an order every path shares.
#[inline(always)]
fn tree_sum<T: Real>(mut lanes: [T; ACC]) -> T {
    let mut width = ACC;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            let upper = lanes[i + width];
            lanes[i] += upper;
        }
    }
    lanes[0]
}

/// The decay of a state row: one value, or exp(dt A[k]) per state index k.
#[derive(Clone, Copy)]
enum Decay<'a, T> {
    Uniform(T),
    PerState(T, &'a [T]),
}

impl<T: Real> Decay<'_, T> {
    /// The decay of index k.
    #[inline(always)]
    fn at<A: Arch>(&self, k: usize) -> T {
        match *self {
            Decay::Uniform(d) => d,
            Decay::PerState(dt, a) => (dt * a[k]).exp_on::<A>(),
        }
    }

    /// The decays of indices base..base + ACC, from a copy of A's block so that the
    /// exponentials vectorise.
    #[inline(always)]
    fn block<A: Arch>(&self, base: usize) -> [T; ACC] {
        match *self {
            Decay::Uniform(d) => [d; ACC],
            Decay::PerState(dt, a) => {
                let a: [T; ACC] = a[base..base + ACC].try_into().expect("ACC elements");
                let mut d = [T::ZERO; ACC];
                for i in 0..ACC {
                    d[i] = (dt * a[i]).exp_on::<A>();
                }
                d
            }
        }
    }
}

/// `h[k] = decay(k) h[k] + dt_x B[k]`; returns `sum_k C[k] h[k]`, accumulated in ACC
/// partial sums (k mod ACC) over fixed-size blocks so that the loop vectorises.
#[inline(always)]
fn update_row<T: Real, A: Arch>(h: &mut [T], b: &[T], c: &[T], dt_x: T, decay: Decay<'_, T>) -> T {
    let n = h.len();
    let (b, c) = (&b[..n], &c[..n]);
    let mut acc = [T::ZERO; ACC];
    let blocks = n / ACC;
    for j in 0..blocks {
        let base = j * ACC;
        // Work on copies of the block: LLVM keeps them in vector registers (writing through
        // the slice while reading it back made it fall back to scalar code).
        let slot: &mut [T; ACC] = (&mut h[base..base + ACC]).try_into().expect("ACC elements");
        let mut hs = *slot;
        let bs: [T; ACC] = b[base..base + ACC].try_into().expect("ACC elements");
        let cs: [T; ACC] = c[base..base + ACC].try_into().expect("ACC elements");
        let decays = decay.block::<A>(base);
        for i in 0..ACC {
            hs[i] = T::fma::<A>(decays[i], hs[i], dt_x * bs[i]);
            acc[i] = T::fma::<A>(cs[i], hs[i], acc[i]);
        }
        *slot = hs;
    }
    for k in blocks * ACC..n {
        h[k] = T::fma::<A>(decay.at::<A>(k), h[k], dt_x * b[k]);
        acc[k % ACC] = T::fma::<A>(c[k], h[k], acc[k % ACC]);
    }
    tree_sum(acc)
}
