//! The causal depthwise conv1d on channel-last inputs: x stored as `(batch, L, dim)`, the
//! layout a model's projection writes and the Mamba-2 SSD scan reads (causal-conv1d's
//! channel-last layout).
//!
//! The same filter as [`super::conv1d`], one time step at a time over all channels:
//!
//! ```text
//! out[t, c] = act(bias[c] + sum_{k < width} w[c, k] x[t - width + 1 + k, c]),
//!     x[s < 0, c] = state[c, width - 1 + s]
//! ```
//!
//! accumulated in the same order (bias, then taps k = 0, 1, ... with one fused multiply-add
//! each), so each output equals the channel-major kernel's on the same ISA. The states keep
//! the channel-major layout `(batch, dim, width - 1)` of the public API. Tasks are blocks of
//! time steps of one batch row; every output is computed in a fixed order, so the result does
//! not depend on the thread count.

use super::conv1d::{ConvDims, ConvInputs};
use crate::error::{check_len, KernelError};
use crate::simd::{self, Arch, Kernel, Real};
use rayon::prelude::*;

/// Least multiply-adds per task.
const TASK_WORK: usize = 1 << 16;

/// Runs the convolution over whole sequences of channel-last `x` `(batch, L, dim)`; `out` is
/// `(batch, L, dim)` and `final_states` `(batch, dim, width - 1)`, both overwritten.
pub fn causal_conv1d_channels_last<T: Real>(
    dims: ConvDims,
    inputs: ConvInputs<'_, T>,
    out: &mut [T],
    final_states: &mut [T],
) -> Result<(), KernelError> {
    let (batch, dim, len, width) = (dims.batch, dims.dim, dims.len, dims.width);
    if width == 0 {
        return Err(KernelError::value("weight", "expected width >= 1"));
    }
    let context = width - 1;
    check_len("x", inputs.x, &[batch, len, dim])?;
    check_len("weight", inputs.weight, &[dim, width])?;
    if let Some(bias) = inputs.bias {
        check_len("bias", bias, &[dim])?;
    }
    if let Some(h0) = inputs.initial_states {
        check_len("initial_states", h0, &[batch, dim, context])?;
    }
    check_len("out", out, &[batch, len, dim])?;
    check_len("final_states", final_states, &[batch, dim, context])?;
    if batch * dim == 0 {
        return Ok(());
    }
    // Taps transposed to (width, dim) so that the loop over channels reads them contiguously.
    let taps: Vec<T> = (0..width * dim)
        .map(|i| inputs.weight[(i % dim) * width + i / dim])
        .collect();
    let heads: Vec<T> = (0..batch * context * dim)
        .map(|i| head_value(inputs.initial_states, dims, i))
        .collect();
    let isa = simd::isa();
    if len > 0 {
        let rows_per_task = (TASK_WORK / (dim * width)).clamp(1, len);
        let blocks_per_row = len.div_ceil(rows_per_task);
        let tasks: Vec<(usize, usize)> = (0..batch)
            .flat_map(|b| (0..blocks_per_row).map(move |k| (b, k * rows_per_task)))
            .collect();
        let chunks = split_rows(out, dim, len, rows_per_task);
        chunks
            .into_par_iter()
            .zip(tasks)
            .for_each(|(out, (b, first))| {
                let job = StepsJob {
                    dims,
                    x: &inputs.x[b * len * dim..(b + 1) * len * dim],
                    head: &heads[b * context * dim..(b + 1) * context * dim],
                    taps: &taps,
                    bias: inputs.bias,
                    first,
                    out,
                };
                simd::dispatch_on(isa, job);
            });
    }
    write_final_states(dims, inputs.x, &heads, final_states);
    Ok(())
}

/// The time-major head (context, dim) of batch row b, element `i` of all rows' heads: the
/// initial state's value, or zero.
fn head_value<T: Real>(initial: Option<&[T]>, dims: ConvDims, i: usize) -> T {
    let (dim, context) = (dims.dim, dims.width - 1);
    let (b, s, c) = (i / (context * dim), (i / dim) % context, i % dim);
    initial.map_or(T::ZERO, |h0| h0[(b * dim + c) * context + s])
}

/// `out` cut into blocks of `rows` time steps that never cross a batch row.
fn split_rows<T>(out: &mut [T], dim: usize, len: usize, rows: usize) -> Vec<&mut [T]> {
    out.chunks_mut(len * dim)
        .flat_map(|batch_row| batch_row.chunks_mut(rows * dim))
        .collect()
}

/// The last `width - 1` inputs of `[head, x]` per channel, channel-major.
fn write_final_states<T: Real>(dims: ConvDims, x: &[T], heads: &[T], states: &mut [T]) {
    let (dim, len, context) = (dims.dim, dims.len, dims.width - 1);
    if context == 0 {
        return;
    }
    for (b, batch_states) in states.chunks_exact_mut(dim * context).enumerate() {
        for j in 0..context {
            // Joined index len + j of [head (context steps), x (len steps)].
            let s = len + j;
            let row = if s < context {
                &heads[(b * context + s) * dim..][..dim]
            } else {
                &x[(b * len + s - context) * dim..][..dim]
            };
            for (c, &v) in row.iter().enumerate() {
                batch_states[c * context + j] = v;
            }
        }
    }
}

/// Time steps `first..first + out.len() / dim` of one batch row.
struct StepsJob<'a, 'o, T> {
    dims: ConvDims,
    x: &'a [T],
    head: &'a [T],
    taps: &'a [T],
    bias: Option<&'a [T]>,
    first: usize,
    out: &'o mut [T],
}

impl<T: Real> Kernel for StepsJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let (dim, width) = (self.dims.dim, self.dims.width);
        let context = width - 1;
        for (i, out) in self.out.chunks_exact_mut(dim).enumerate() {
            let t = self.first + i;
            match self.bias {
                Some(bias) => out.copy_from_slice(bias),
                None => out.fill(T::ZERO),
            }
            for (k, w) in self.taps.chunks_exact(dim).enumerate() {
                // Input step t - context + k: in the head while negative.
                let s = t + k;
                let input = if s < context {
                    &self.head[s * dim..(s + 1) * dim]
                } else {
                    &self.x[(s - context) * dim..(s - context + 1) * dim]
                };
                for ((o, &w), &v) in out.iter_mut().zip(w).zip(input) {
                    *o = T::fma::<A>(w, v, *o);
                }
            }
            if self.dims.silu {
                for o in out.iter_mut() {
                    *o = o.silu();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mamba::conv1d::causal_conv1d;

    fn channel_major_to_last(x: &[f64], batch: usize, dim: usize, len: usize) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for b in 0..batch {
            for c in 0..dim {
                for t in 0..len {
                    out[(b * len + t) * dim + c] = x[(b * dim + c) * len + t];
                }
            }
        }
        out
    }

    #[test]
    fn equals_the_channel_major_kernel() {
        for &(batch, dim, len, width, silu) in &[
            (2, 37, 19, 4, true),
            (1, 5, 1, 4, false),
            (3, 16, 2, 3, true),
            (1, 8, 40, 1, false),
            (1, 300, 700, 4, true),
        ] {
            let context = width - 1;
            let value = |i: usize| ((i * 7919 % 1000) as f64 / 500.0) - 1.0;
            let x: Vec<f64> = (0..batch * dim * len).map(value).collect();
            let weight: Vec<f64> = (0..dim * width).map(|i| value(i + 3)).collect();
            let bias: Vec<f64> = (0..dim).map(|i| value(i + 11)).collect();
            let h0: Vec<f64> = (0..batch * dim * context).map(|i| value(i + 5)).collect();
            let dims = ConvDims {
                batch,
                dim,
                len,
                width,
                silu,
            };
            let major = ConvInputs {
                x: &x,
                weight: &weight,
                bias: Some(&bias),
                initial_states: Some(&h0),
            };
            let mut out = vec![0.0; x.len()];
            let mut states = vec![0.0; h0.len()];
            causal_conv1d(dims, major, &mut out, &mut states).unwrap();
            let x_last = channel_major_to_last(&x, batch, dim, len);
            let last = ConvInputs {
                x: &x_last,
                ..major
            };
            let mut out_last = vec![0.0; x.len()];
            let mut states_last = vec![0.0; h0.len()];
            causal_conv1d_channels_last(dims, last, &mut out_last, &mut states_last).unwrap();
            let expected = channel_major_to_last(&out, batch, dim, len);
            for (i, (e, a)) in expected.iter().zip(&out_last).enumerate() {
                assert_eq!(
                    e.to_bits(),
                    a.to_bits(),
                    "case {dims:?} output {i}: {e} vs {a}"
                );
            }
            assert_eq!(states, states_last, "case {dims:?}");
        }
    }
}
