//! The causal depthwise 1-D convolution of Mamba blocks (`causal_conv1d_fn` and
//! `causal_conv1d_update` of Dao-AILab's causal-conv1d).
//!
//! Every channel d of every batch row is filtered on its own with `width` taps; the left
//! context of the sequence is the `width - 1` previous inputs (zeros, or the given state):
//!
//! ```text
//! out[t] = act(bias + sum_{k < width} w[k] x[t - width + 1 + k]),   x[s < 0] = state[width - 1 + s]
//! ```
//!
//! so `w[width - 1]` multiplies the current input (a cross-correlation, as `F.conv1d`), and
//! `act` is the identity or silu. The final state is the last `width - 1` inputs of
//! `[state, x]`. Rows (batch, channel) run in parallel in blocks of channels; each output
//! is computed in a fixed order, so the result does not depend on the thread count.

use crate::error::{check_len, KernelError};
use crate::simd::{self, Arch, Kernel, Real};
use rayon::prelude::*;

/// Outputs computed side by side in the short vectorised loop (one 512-bit register of f32).
const LANES: usize = 16;
/// Channels per task.
const ROWS_PER_TASK: usize = 64;
/// Least work (multiply-adds plus copies) per task of a decode step.
const UPDATE_TASK_WORK: usize = 1 << 15;

/// Sizes of one convolution call.
#[derive(Clone, Copy, Debug)]
pub struct ConvDims {
    /// Batch size.
    pub batch: usize,
    /// Channels.
    pub dim: usize,
    /// Sequence length L.
    pub len: usize,
    /// Taps per channel (>= 1).
    pub width: usize,
    /// Apply silu after the bias.
    pub silu: bool,
}

/// Inputs of [`causal_conv1d`] (C-contiguous).
#[derive(Clone, Copy, Debug)]
pub struct ConvInputs<'a, T> {
    /// `(batch, dim, L)`.
    pub x: &'a [T],
    /// `(dim, width)`.
    pub weight: &'a [T],
    /// `(dim,)`.
    pub bias: Option<&'a [T]>,
    /// `(batch, dim, width - 1)`: the inputs before x; zeros when `None`.
    pub initial_states: Option<&'a [T]>,
}

fn check_common<T>(dims: &ConvDims, weight: &[T], bias: Option<&[T]>) -> Result<(), KernelError> {
    if dims.width == 0 {
        return Err(KernelError::value("weight", "expected width >= 1"));
    }
    check_len("weight", weight, &[dims.dim, dims.width])?;
    if let Some(bias) = bias {
        check_len("bias", bias, &[dims.dim])?;
    }
    Ok(())
}

/// Runs the convolution over whole sequences. `out` is `(batch, dim, L)`, `final_states` is
/// `(batch, dim, width - 1)`; both are overwritten.
pub fn causal_conv1d<T: Real>(
    dims: ConvDims,
    inputs: ConvInputs<'_, T>,
    out: &mut [T],
    final_states: &mut [T],
) -> Result<(), KernelError> {
    check_common(&dims, inputs.weight, inputs.bias)?;
    let (batch, dim, len, context) = (dims.batch, dims.dim, dims.len, dims.width - 1);
    check_len("x", inputs.x, &[batch, dim, len])?;
    if let Some(h0) = inputs.initial_states {
        check_len("initial_states", h0, &[batch, dim, context])?;
    }
    check_len("out", out, &[batch, dim, len])?;
    check_len("final_states", final_states, &[batch, dim, context])?;
    if batch * dim == 0 {
        return Ok(());
    }
    let isa = simd::isa();
    // Rows are (batch, channel) pairs; `.max(1)` keeps the chunk sizes positive when L or the
    // context is 0 (those slices are then empty and the zip stops at the row count).
    let rows = batch * dim;
    let out_rows = out.par_chunks_mut(ROWS_PER_TASK * len.max(1));
    let state_rows = final_states.par_chunks_mut(ROWS_PER_TASK * context.max(1));
    let tasks: Vec<usize> = (0..rows.div_ceil(ROWS_PER_TASK)).collect();
    if len == 0 {
        // Only the states move: the new context is the old one.
        state_rows.enumerate().for_each(|(task, states)| {
            for (r, state) in states.chunks_exact_mut(context).enumerate() {
                let row = task * ROWS_PER_TASK + r;
                copy_context(inputs.initial_states, row, context, state);
            }
        });
        return Ok(());
    }
    if context == 0 {
        out_rows.zip(tasks).for_each(|(out, task)| {
            simd::dispatch_on(isa, RowsJob::new(dims, inputs, task, out, &mut []));
        });
        return Ok(());
    }
    out_rows
        .zip(state_rows)
        .zip(tasks)
        .for_each(|((out, states), task)| {
            simd::dispatch_on(isa, RowsJob::new(dims, inputs, task, out, states));
        });
    Ok(())
}

/// Copies the initial state of `row` (or zeros) to `dest`.
fn copy_context<T: Real>(initial: Option<&[T]>, row: usize, context: usize, dest: &mut [T]) {
    match initial {
        Some(h0) => dest.copy_from_slice(&h0[row * context..(row + 1) * context]),
        None => dest.fill(T::ZERO),
    }
}

/// A block of rows of one task.
struct RowsJob<'a, 'o, T> {
    dims: ConvDims,
    inputs: ConvInputs<'a, T>,
    first_row: usize,
    out: &'o mut [T],
    states: &'o mut [T],
}

impl<'a, 'o, T> RowsJob<'a, 'o, T> {
    fn new(
        dims: ConvDims,
        inputs: ConvInputs<'a, T>,
        task: usize,
        out: &'o mut [T],
        states: &'o mut [T],
    ) -> Self {
        RowsJob {
            dims,
            inputs,
            first_row: task * ROWS_PER_TASK,
            out,
            states,
        }
    }
}

impl<T: Real> Kernel for RowsJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let (len, width, dim) = (self.dims.len, self.dims.width, self.dims.dim);
        let context = width - 1;
        let mut head = vec![T::ZERO; context];
        let mut padded = vec![T::ZERO; context + LANES];
        for (r, out) in self.out.chunks_exact_mut(len).enumerate() {
            let row = self.first_row + r;
            let channel = row % dim;
            let x = &self.inputs.x[row * len..(row + 1) * len];
            copy_context(self.inputs.initial_states, row, context, &mut head);
            let filter = Filter {
                weight: &self.inputs.weight[channel * width..(channel + 1) * width],
                bias: self.inputs.bias.map_or(T::ZERO, |b| b[channel]),
                silu: self.dims.silu,
            };
            filter.apply::<A>(&head, x, out, &mut padded);
            if context > 0 {
                let state = &mut self.states[r * context..(r + 1) * context];
                last_inputs(&head, x, state);
            }
        }
    }
}

/// The last `state.len()` elements of `[head, x]`.
#[inline(always)]
fn last_inputs<T: Copy>(head: &[T], x: &[T], state: &mut [T]) {
    let keep = state.len();
    if x.len() >= keep {
        state.copy_from_slice(&x[x.len() - keep..]);
    } else {
        let from_head = keep - x.len();
        state[..from_head].copy_from_slice(&head[head.len() - from_head..]);
        state[from_head..].copy_from_slice(x);
    }
}

/// One channel's taps, bias and activation.
struct Filter<'w, T> {
    weight: &'w [T],
    bias: T,
    silu: bool,
}

impl<T: Real> Filter<'_, T> {
    /// `out[t] = act(bias + sum_k w[k] [head, x][t + k])` for every t of x; `head` holds the
    /// `width - 1` inputs before x.
    #[inline(always)]
    /// `padded` is scratch of `width - 1 + LANES` elements.
    fn apply<A: Arch>(&self, head: &[T], x: &[T], out: &mut [T], padded: &mut [T]) {
        let width = self.weight.len();
        let context = width - 1;
        let len = x.len();
        // Outputs whose window lies inside x: t >= context, in blocks of 4 LANES (independent
        // accumulators hide the FMA latency), then of LANES.
        let mut t = context.min(len);
        while t + 4 * LANES <= len {
            self.block::<A, 4>(x, t, &mut out[t..t + 4 * LANES]);
            t += 4 * LANES;
        }
        while t + LANES <= len {
            self.block::<A, 1>(x, t, &mut out[t..t + LANES]);
            t += LANES;
        }
        // The rest: the first `context` outputs (which read the head) and the tail of x.
        self.edge::<A>(head, x, (0, context.min(len)), out, padded);
        self.edge::<A>(head, x, (t, len), out, padded);
    }

    /// Outputs `from..to` in blocks of LANES computed on a zero-padded copy of their inputs
    /// (`[head, x]` from `from` on).
    #[inline(always)]
    fn edge<A: Arch>(
        &self,
        head: &[T],
        x: &[T],
        (from, to): (usize, usize),
        out: &mut [T],
        padded: &mut [T],
    ) {
        let context = head.len();
        let input = |s: usize| {
            if s < context {
                head[s]
            } else {
                x.get(s - context).copied().unwrap_or(T::ZERO)
            }
        };
        for start in (from..to).step_by(LANES) {
            for (i, v) in padded.iter_mut().enumerate() {
                *v = input(start + i);
            }
            let [acc] = self.window_sums::<A, 1>(padded, 0);
            let count = LANES.min(to - start);
            for (o, &a) in out[start..start + count].iter_mut().zip(&acc) {
                *o = self.activate(a);
            }
        }
    }

    #[inline(always)]
    fn activate(&self, v: T) -> T {
        if self.silu {
            v.silu()
        } else {
            v
        }
    }

    /// Outputs `t..t + G * LANES` (G <= 4), all of whose inputs lie in x (t >= width - 1).
    #[inline(always)]
    fn block<A: Arch, const G: usize>(&self, x: &[T], t: usize, out: &mut [T]) {
        let acc = self.window_sums::<A, G>(x, t + 1 - self.weight.len());
        for (out, acc) in out.chunks_exact_mut(LANES).zip(&acc) {
            if self.silu {
                for (o, &a) in out.iter_mut().zip(acc) {
                    *o = a.silu();
                }
            } else {
                out.copy_from_slice(acc);
            }
        }
    }

    /// `bias + sum_k w[k] x[start + k + i]` for i < G * LANES, in G independent registers.
    ///
    /// The G rows of LANES are written out one by one (constant-folded `get_mut(g)`): one
    /// long loop over G * LANES accumulators is too long to unroll, and the vectoriser then
    /// keeps the accumulators in memory.
    #[inline(always)]
    fn window_sums<A: Arch, const G: usize>(&self, x: &[T], start: usize) -> [[T; LANES]; G] {
        const { assert!(G <= 4) };
        let mut acc = [[self.bias; LANES]; G];
        for (k, &w) in self.weight.iter().enumerate() {
            // One bounds check per tap; the rows' windows are then provably inside.
            let taps = &x[start + k..start + k + G * LANES];
            macro_rules! rows {
                ($($g:literal),*) => {$(
                    if let Some(row) = acc.get_mut($g) {
                        let window: &[T; LANES] = taps[$g * LANES..($g + 1) * LANES]
                            .try_into()
                            .expect("LANES inputs");
                        for (a, &v) in row.iter_mut().zip(window) {
                            *a = T::fma::<A>(w, v, *a);
                        }
                    }
                )*};
            }
            rows!(0, 1, 2, 3);
        }
        acc
    }
}

/// Sizes of one decode call.
#[derive(Clone, Copy, Debug)]
pub struct UpdateDims {
    /// Batch size.
    pub batch: usize,
    /// Channels.
    pub dim: usize,
    /// New inputs per channel.
    pub len: usize,
    /// Taps per channel (>= 1).
    pub width: usize,
    /// Length S of the state, >= width - 1.
    pub state_len: usize,
    /// Apply silu after the bias.
    pub silu: bool,
}

/// Appends `x` `(batch, dim, L)` to `conv_state` `(batch, dim, S)` (the S most recent inputs,
/// updated in place to the S most recent after x) and writes the convolution of the new
/// inputs to `out` `(batch, dim, L)`:
/// `out[t] = act(bias + sum_k w[k] [state, x][S + t - width + 1 + k])`.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d_update<T: Real>(
    dims: UpdateDims,
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    conv_state: &mut [T],
    out: &mut [T],
) -> Result<(), KernelError> {
    let conv = ConvDims {
        batch: dims.batch,
        dim: dims.dim,
        len: dims.len,
        width: dims.width,
        silu: dims.silu,
    };
    check_common(&conv, weight, bias)?;
    if dims.state_len + 1 < dims.width {
        return Err(KernelError::value(
            "conv_state",
            format!(
                "expected a state length >= width - 1 = {}, got {}",
                dims.width - 1,
                dims.state_len
            ),
        ));
    }
    let (rows, len, s) = (dims.batch * dims.dim, dims.len, dims.state_len);
    check_len("x", x, &[dims.batch, dims.dim, len])?;
    check_len("conv_state", conv_state, &[dims.batch, dims.dim, s])?;
    check_len("out", out, &[dims.batch, dims.dim, len])?;
    if rows == 0 || len == 0 {
        return Ok(());
    }
    let inputs = ConvInputs {
        x,
        weight,
        bias,
        initial_states: None,
    };
    if s == 0 {
        // width 1: no context to keep.
        return causal_conv1d(conv, inputs, out, &mut []);
    }
    let isa = simd::isa();
    // A decode step is little work per row: give each task at least UPDATE_TASK_WORK taps.
    let rows_per_task = update_rows_per_task(&dims);
    let job = |task: usize, out: &mut [T], states: &mut [T]| {
        let job = UpdateJob {
            dims: conv,
            state_len: s,
            inputs,
            first_row: task * rows_per_task,
            out,
            states,
        };
        simd::dispatch_on(isa, job);
    };
    if rows <= rows_per_task {
        // One task: no thread hand-off (a decode step is a few microseconds of work).
        job(0, out, conv_state);
        return Ok(());
    }
    out.par_chunks_mut(rows_per_task * len)
        .zip(conv_state.par_chunks_mut(rows_per_task * s))
        .enumerate()
        .for_each(|(task, (out, states))| job(task, out, states));
    Ok(())
}

/// Rows per task of a decode step: at least [`UPDATE_TASK_WORK`] taps and copies each.
fn update_rows_per_task(dims: &UpdateDims) -> usize {
    (UPDATE_TASK_WORK / ((dims.state_len + dims.len) * dims.width).max(1)).max(1)
}

/// Whether [`causal_conv1d_update`] runs as a single task on the calling thread (so that the
/// caller can skip the thread pool).
pub fn update_is_single_task(dims: &UpdateDims) -> bool {
    dims.batch * dims.dim <= update_rows_per_task(dims)
}

/// A block of rows of one decode task.
struct UpdateJob<'a, 'o, T> {
    dims: ConvDims,
    state_len: usize,
    inputs: ConvInputs<'a, T>,
    first_row: usize,
    out: &'o mut [T],
    states: &'o mut [T],
}

impl<T: Real> Kernel for UpdateJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let (len, width, dim, s) = (
            self.dims.len,
            self.dims.width,
            self.dims.dim,
            self.state_len,
        );
        let context = width - 1;
        let rows = self.out.len() / len;
        if len == 1 && s == context {
            self.one_token::<A>(rows);
            return;
        }
        for r in 0..rows {
            let row = self.first_row + r;
            let channel = row % dim;
            let state = &mut self.states[r * s..(r + 1) * s];
            let x = &self.inputs.x[row * len..(row + 1) * len];
            let weight = &self.inputs.weight[channel * width..(channel + 1) * width];
            let bias = self.inputs.bias.map_or(T::ZERO, |b| b[channel]);
            // joined = [state, x]; output t reads joined[s - context + t ..][..width].
            let joined = |i: usize| if i < s { state[i] } else { x[i - s] };
            for (t, o) in self.out[r * len..(r + 1) * len].iter_mut().enumerate() {
                let first = s - context + t;
                let mut acc = bias;
                for (k, &w) in weight.iter().enumerate() {
                    acc = T::fma::<A>(w, joined(first + k), acc);
                }
                *o = acc;
            }
            // state = joined[len..]
            if len >= s {
                state.copy_from_slice(&x[len - s..]);
            } else {
                state.copy_within(len.., 0);
                state[s - len..].copy_from_slice(x);
            }
        }
        if self.dims.silu {
            // One vectorised pass over the task's outputs.
            for o in self.out.iter_mut() {
                *o = o.silu();
            }
        }
    }
}

impl<T: Real> UpdateJob<'_, '_, T> {
    /// The decode step proper (one token, a state of exactly width - 1 inputs), without the
    /// general path's per-row closures and copies: the same sums in the same order.
    #[inline(always)]
    fn one_token<A: Arch>(self, rows: usize) {
        let (width, dim) = (self.dims.width, self.dims.dim);
        let context = width - 1;
        for r in 0..rows {
            let row = self.first_row + r;
            let channel = row % dim;
            let state = &mut self.states[r * context..(r + 1) * context];
            let weight = &self.inputs.weight[channel * width..(channel + 1) * width];
            let x = self.inputs.x[row];
            // out = bias + sum_k w[k] joined[k], joined = [state, x].
            let mut acc = self.inputs.bias.map_or(T::ZERO, |b| b[channel]);
            for (&w, &v) in weight.iter().zip(state.iter()) {
                acc = T::fma::<A>(w, v, acc);
            }
            self.out[r] = T::fma::<A>(weight[context], x, acc);
            // state = joined[1..]
            for k in 1..context {
                state[k - 1] = state[k];
            }
            state[context - 1] = x;
        }
        if self.dims.silu {
            for o in self.out.iter_mut() {
                *o = o.silu();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f64> {
        (0..len)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0 - 1.0)
            .collect()
    }

    /// The formula of the module docs over `[state, x]`.
    fn naive(x: &[f64], head: &[f64], w: &[f64], bias: f64, silu: bool) -> Vec<f64> {
        let joined: Vec<f64> = head.iter().chain(x).copied().collect();
        (0..x.len())
            .map(|t| {
                let v = bias + (0..w.len()).map(|k| w[k] * joined[t + k]).sum::<f64>();
                if silu {
                    v / (1.0 + (-v).exp())
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn matches_the_formula_with_states_and_short_sequences() {
        for width in [1, 2, 4, 9] {
            for len in [0, 1, 3, 8, 40] {
                let (batch, dim, context) = (2, 3, width - 1);
                let x = values(batch * dim * len, 1);
                let w = values(dim * width, 2);
                let bias = values(dim, 3);
                let h0 = values(batch * dim * context, 4);
                let dims = ConvDims {
                    batch,
                    dim,
                    len,
                    width,
                    silu: true,
                };
                let inputs = ConvInputs {
                    x: &x,
                    weight: &w,
                    bias: Some(&bias),
                    initial_states: Some(&h0),
                };
                let mut out = vec![f64::NAN; x.len()];
                let mut last = vec![f64::NAN; h0.len()];
                causal_conv1d(dims, inputs, &mut out, &mut last).unwrap();
                for row in 0..batch * dim {
                    let c = row % dim;
                    let xr = &x[row * len..(row + 1) * len];
                    let head = &h0[row * context..(row + 1) * context];
                    let want = naive(xr, head, &w[c * width..(c + 1) * width], bias[c], true);
                    for (g, w) in out[row * len..(row + 1) * len].iter().zip(&want) {
                        assert!((g - w).abs() < 1e-13, "width {width} len {len}");
                    }
                    let joined: Vec<f64> = head.iter().chain(xr).copied().collect();
                    let tail = &joined[joined.len() - context..];
                    assert_eq!(&last[row * context..(row + 1) * context], tail);
                }
            }
        }
    }

    #[test]
    fn update_with_a_long_state_equals_the_full_convolution() {
        let (batch, dim, width, s, len) = (1, 2, 3, 5, 4);
        let w = values(dim * width, 5);
        let mut state = values(batch * dim * s, 6);
        let x = values(batch * dim * len, 7);
        let before = state.clone();
        let mut out = vec![0.0; x.len()];
        let dims = UpdateDims {
            batch,
            dim,
            len,
            width,
            state_len: s,
            silu: false,
        };
        causal_conv1d_update(dims, &x, &w, None, &mut state, &mut out).unwrap();
        for c in 0..dim {
            let xr = &x[c * len..(c + 1) * len];
            let head = &before[c * s + s - (width - 1)..(c + 1) * s];
            let want = naive(xr, head, &w[c * width..(c + 1) * width], 0.0, false);
            for (g, w) in out[c * len..(c + 1) * len].iter().zip(&want) {
                assert!((g - w).abs() < 1e-13);
            }
            let joined: Vec<f64> = before[c * s..(c + 1) * s]
                .iter()
                .chain(xr)
                .copied()
                .collect();
            assert_eq!(&state[c * s..(c + 1) * s], &joined[len..]);
        }
    }
}
