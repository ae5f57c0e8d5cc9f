//! RWKV-4 WKV in the numerically stable form of RWKV-LM's kernel.
//!
//! Per channel, with `w = -exp(time_decay)`, `u = time_first` and the state (aa, bb, pp)
//! standing for the sums a = aa e^pp, b = bb e^pp:
//!
//! ```text
//! q = max(pp, u + k_t);   e1 = exp(pp - q);   e2 = exp(u + k_t - q)
//! y_t = (e1 aa + e2 v_t) / (e1 bb + e2)
//! q = max(pp + w, k_t);   e1 = exp(pp + w - q);   e2 = exp(k_t - q)
//! aa = e1 aa + e2 v_t;   bb = e1 bb + e2;   pp = q
//! ```
//!
//! Every exponent is <= 0, so nothing overflows however large k is. One of e1, e2 is always
//! exp(0) = 1 and the other exp(-|difference|), so each step costs two exps, not four.
//!
//! Channels are independent: a block of channels of one batch row runs side by side, one SIMD
//! lane per channel (no horizontal reduction), and blocks run in parallel, so the result does
//! not depend on the thread count.

use super::{prefetch, DisjointOutput, PREFETCH_AHEAD};
use crate::error::{check_len, KernelError};
use crate::simd::{self, Arch, Kernel, Real};
use rayon::prelude::*;

/// Sizes of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wkv4Dims {
    /// Batch size B.
    pub batch: usize,
    /// Sequence length T.
    pub len: usize,
    /// Channels C.
    pub channels: usize,
}

/// Inputs of one call, C-contiguous.
#[derive(Clone, Copy, Debug)]
pub struct Wkv4Inputs<'a, T> {
    /// `(C,)`: the log-decay `-exp(time_decay)`.
    pub w: &'a [T],
    /// `(C,)`: the bonus of the current token, `time_first`.
    pub u: &'a [T],
    /// `(B, T, C)`.
    pub k: &'a [T],
    /// `(B, T, C)`.
    pub v: &'a [T],
    /// `(B, 3, C)`: [aa, bb, pp]; `None` means aa = bb = 0, pp = -inf.
    pub state: Option<&'a [T]>,
}

/// Runs the recurrence. `y` is `(B, T, C)` and `state_out` `(B, 3, C)`; both are overwritten.
pub fn wkv4<T: Real>(
    dims: Wkv4Dims,
    inputs: Wkv4Inputs<'_, T>,
    y: &mut [T],
    state_out: &mut [T],
) -> Result<(), KernelError> {
    let (batch, len, channels) = (dims.batch, dims.len, dims.channels);
    check_len("w", inputs.w, &[channels])?;
    check_len("u", inputs.u, &[channels])?;
    check_len("k", inputs.k, &[batch, len, channels])?;
    check_len("v", inputs.v, &[batch, len, channels])?;
    if let Some(state) = inputs.state {
        check_len("state", state, &[batch, 3, channels])?;
    }
    check_len("y", y, &[batch, len, channels])?;
    check_len("state_out", state_out, &[batch, 3, channels])?;
    let isa = simd::isa();
    let y = DisjointOutput::new(y);
    let state_out = DisjointOutput::new(state_out);
    let blocks: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..channels).step_by(BLOCK).map(move |c| (b, c)))
        .collect();
    blocks.into_par_iter().for_each(|(batch_row, start)| {
        let job = BlockJob {
            dims,
            inputs,
            batch_row,
            start,
            width: BLOCK.min(channels - start),
            y: &y,
            state_out: &state_out,
        };
        simd::dispatch_on(isa, job);
    });
    Ok(())
}

/// Channels per task, one lane each (four 512-bit registers of f32).
pub const BLOCK: usize = 64;

type Block<T> = [T; BLOCK];

/// Channels `start..start + width` of one batch row; the lanes past `width` pad.
struct BlockJob<'a, 'o, T> {
    dims: Wkv4Dims,
    inputs: Wkv4Inputs<'a, T>,
    batch_row: usize,
    start: usize,
    width: usize,
    y: &'o DisjointOutput<'o, T>,
    state_out: &'o DisjointOutput<'o, T>,
}

/// The running state of a block: aa, bb, pp per lane.
struct State<T> {
    aa: Block<T>,
    bb: Block<T>,
    pp: Block<T>,
}

impl<T: Real> Kernel for BlockJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let range = self.start..self.start + self.width;
        let w = load_block(&self.inputs.w[range.clone()]);
        let u = load_block(&self.inputs.u[range]);
        let mut state = self.load_state();
        let (len, channels) = (self.dims.len, self.dims.channels);
        for t in 0..len {
            let base = (self.batch_row * len + t) * channels + self.start;
            if t + PREFETCH_AHEAD < len {
                let ahead = base + PREFETCH_AHEAD * channels;
                prefetch(&self.inputs.k[ahead..ahead + self.width]);
                prefetch(&self.inputs.v[ahead..ahead + self.width]);
            }
            let k = load_block(&self.inputs.k[base..base + self.width]);
            let v = load_block(&self.inputs.v[base..base + self.width]);
            let mut y = [T::ZERO; BLOCK];
            for l in 0..BLOCK {
                // The formulas of the module docs, with q = max(x, z) folded into the weights.
                let (aa, bb, pp) = (state.aa[l], state.bb[l], state.pp[l]);
                let (e1, e2) = split_weights::<T, A>(pp - (u[l] + k[l]));
                y[l] = T::fma::<A>(e1, aa, e2 * v[l]) / T::fma::<A>(e1, bb, e2);
                let decayed = pp + w[l];
                let (e1, e2) = split_weights::<T, A>(decayed - k[l]);
                state.aa[l] = T::fma::<A>(e1, aa, e2 * v[l]);
                state.bb[l] = T::fma::<A>(e1, bb, e2);
                state.pp[l] = decayed.max_nan(k[l]);
            }
            // SAFETY: this task is the only one writing channels start..start + width of
            // batch row `batch_row` (the tasks are distinct (row, block) pairs).
            unsafe { store_block(self.y, base, self.width, &y) };
        }
        let base = self.batch_row * 3 * channels + self.start;
        for (row, values) in [&state.aa, &state.bb, &state.pp].into_iter().enumerate() {
            // SAFETY: as above, for the three state rows of this block.
            unsafe { store_block(self.state_out, base + row * channels, self.width, values) };
        }
    }
}

impl<T: Real> BlockJob<'_, '_, T> {
    /// The block's initial (aa, bb, pp); padding lanes start empty (0, 0, -inf).
    #[inline(always)]
    fn load_state(&self) -> State<T> {
        let mut state = State {
            aa: [T::ZERO; BLOCK],
            bb: [T::ZERO; BLOCK],
            pp: [T::NEG_INFINITY; BLOCK],
        };
        if let Some(initial) = self.inputs.state {
            let channels = self.dims.channels;
            let base = self.batch_row * 3 * channels + self.start;
            let row = |r: usize| &initial[base + r * channels..base + r * channels + self.width];
            state.aa[..self.width].copy_from_slice(row(0));
            state.bb[..self.width].copy_from_slice(row(1));
            state.pp[..self.width].copy_from_slice(row(2));
        }
        state
    }
}

/// `(exp(x - q), exp(z - q))` with `q = max(x, z)`, from `gap = x - z`: one of the two is
/// exp(0) = 1 and the other exp(min - max) = exp(-|gap|), so one exp suffices, with the same
/// values as two (the exp gives exactly 1 at 0, and min - max = min(gap, -gap) exactly).
/// The exp is taken as 2^(-|gap| log2 e): its argument reduction is exact, so it costs fewer
/// operations than `exp_on`, for one extra rounding of the scaled exponent.
#[inline(always)]
fn split_weights<T: Real, A: Arch>(gap: T) -> (T, T) {
    let weight = (gap.min_nan(-gap) * T::LOG2E).exp2_on::<A>();
    if gap < T::ZERO {
        (weight, T::ONE)
    } else {
        (T::ONE, weight)
    }
}

/// Copies up to [`BLOCK`] values into a zero-padded block.
#[inline(always)]
fn load_block<T: Real>(src: &[T]) -> Block<T> {
    if let Ok(full) = <&Block<T>>::try_from(src) {
        return *full;
    }
    let mut block = [T::ZERO; BLOCK];
    block[..src.len()].copy_from_slice(src);
    block
}

/// Writes the first `width` lanes of `block` to `out` at `start`.
///
/// # Safety
/// As [`DisjointOutput::write`]: no other task touches `start..start + width`.
#[inline(always)]
unsafe fn store_block<T: Real>(
    out: &DisjointOutput<'_, T>,
    start: usize,
    width: usize,
    block: &Block<T>,
) {
    if width == BLOCK {
        // SAFETY: forwarded from the caller.
        unsafe { out.write(start, block) }
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { out.write(start, &block[..width]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The four-exp form of the module docs, in f64, one channel.
    fn naive(w: f64, u: f64, k: &[f64], v: &[f64]) -> Vec<f64> {
        let (mut aa, mut bb, mut pp) = (0.0, 0.0, f64::NEG_INFINITY);
        let mut y = Vec::new();
        for (&k, &v) in k.iter().zip(v) {
            let q = pp.max(u + k);
            let (e1, e2) = ((pp - q).exp(), (u + k - q).exp());
            y.push((e1 * aa + e2 * v) / (e1 * bb + e2));
            let q = (pp + w).max(k);
            let (e1, e2) = ((pp + w - q).exp(), (k - q).exp());
            aa = e1 * aa + e2 * v;
            bb = e1 * bb + e2;
            pp = q;
        }
        y
    }

    #[test]
    fn matches_the_four_exp_form_across_a_partial_block() {
        let (batch, len, channels) = (2, 9, BLOCK + 3);
        let f = |i: usize, s: f64| ((i as f64 * s).sin() * 3.0).round() / 2.0 + (i % 7) as f64;
        let w: Vec<f64> = (0..channels).map(|c| -0.1 - f(c, 0.3).abs()).collect();
        let u: Vec<f64> = (0..channels).map(|c| f(c, 0.7) - 2.0).collect();
        let k: Vec<f64> = (0..batch * len * channels).map(|i| f(i, 1.1)).collect();
        let v: Vec<f64> = (0..batch * len * channels).map(|i| f(i, 0.37)).collect();
        let dims = Wkv4Dims {
            batch,
            len,
            channels,
        };
        let inputs = Wkv4Inputs {
            w: &w,
            u: &u,
            k: &k,
            v: &v,
            state: None,
        };
        let mut y = vec![0.0; k.len()];
        let mut state = vec![0.0; batch * 3 * channels];
        wkv4(dims, inputs, &mut y, &mut state).unwrap();
        for b in 0..batch {
            for c in 0..channels {
                let column = |x: &[f64]| -> Vec<f64> {
                    (0..len).map(|t| x[(b * len + t) * channels + c]).collect()
                };
                let want = naive(w[c], u[c], &column(&k), &column(&v));
                for (got, want) in column(&y).iter().zip(&want) {
                    assert!((got - want).abs() <= 1e-13 * want.abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn rejects_a_short_input() {
        let dims = Wkv4Dims {
            batch: 1,
            len: 2,
            channels: 3,
        };
        let x = vec![0.0_f32; 6];
        let inputs = Wkv4Inputs {
            w: &x[..3],
            u: &x[..2],
            k: &x,
            v: &x,
            state: None,
        };
        let (mut y, mut s) = (vec![0.0; 6], vec![0.0; 9]);
        let err = wkv4(dims, inputs, &mut y, &mut s).unwrap_err();
        assert!(err.to_string().starts_with("u: expected"), "{err}");
    }
}
