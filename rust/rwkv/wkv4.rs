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
//! exp(0) = 1 and the other exp(-|difference|), so these formulas cost two exps per step
//! (`two_exp_step`). The output's weights are the update's times a per-channel constant,
//! so `one_exp_step` computes the same y and state from one exp; it runs whenever
//! |u + w| is small enough for that constant to stay in range, which holds for every trained
//! model we know of (else a block of 64 channels falls back to the two-exp form).
//!
//! Channels are independent: a block of channels runs side by side, one SIMD lane per
//! channel (no horizontal reduction). A task advances several blocks of one batch row step by
//! step, reading contiguous spans of the k and v rows, and writes large outputs with
//! non-temporal stores; results depend neither on the thread count nor on how the blocks are
//! grouped into tasks.

use super::{DisjointOutput, PREFETCH_AHEAD};
use crate::error::{check_len, KernelError};
use crate::parallel;
use crate::simd::{self, Arch, Kernel, Real};
use std::mem::MaybeUninit;

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
    // SAFETY: `MaybeUninit<T>` has the layout of `T`, and `wkv4_into` only writes
    // initialised values.
    let y = unsafe { &mut *(y as *mut [T] as *mut [MaybeUninit<T>]) };
    wkv4_into(dims, inputs, y, state_out)
}

/// [`wkv4`] into an output that need not be initialised: on success every element of `y` has
/// been written (so a caller may allocate it without zeroing 4-8 bytes per element).
pub fn wkv4_into<T: Real>(
    dims: Wkv4Dims,
    inputs: Wkv4Inputs<'_, T>,
    y: &mut [MaybeUninit<T>],
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
    let stream = std::mem::size_of_val(y) >= STREAM_MIN_BYTES;
    let y = DisjointOutput::uninit(y);
    let state_out = DisjointOutput::new(state_out);
    let blocks = channels.div_ceil(BLOCK);
    // One span per thread and batch row when there are fewer rows than threads: a span's
    // share of every row is contiguous, so the inputs stream through the caches.
    let spans_per_row = parallel::num_threads()
        .div_ceil(batch.max(1))
        .clamp(1, blocks.max(1));
    let span = blocks.div_ceil(spans_per_row).clamp(1, MAX_SPAN_BLOCKS);
    let tasks: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..blocks).step_by(span).map(move |first| (b, first)))
        .collect();
    // A decode step (T = 1) runs on the calling thread: waking the pool would cost more.
    let work = batch * len * channels;
    parallel::for_each_init(
        tasks,
        work,
        || (),
        |(), (batch_row, first_block)| {
            let job = SpanJob {
                dims,
                inputs,
                batch_row,
                blocks: first_block..blocks.min(first_block + span),
                stream,
                y: &y,
                state_out: &state_out,
            };
            simd::dispatch_on(isa, job);
        },
    );
    Ok(())
}

/// Channels per block, one lane each (four 512-bit registers of f32). Each block picks its
/// form of the step (see `bonus_factors`) on its own, so results do not depend on how
/// blocks are grouped into tasks.
pub const BLOCK: usize = 64;

/// Outputs at least this large are written with non-temporal stores (see
/// `store_streaming`); smaller ones are likely to be read again from cache.
pub const STREAM_MIN_BYTES: usize = 4 << 20;

/// Most blocks per task: the states and parameters of 16 blocks (25 KiB of f32) stay in L1.
pub const MAX_SPAN_BLOCKS: usize = 16;

type Block<T> = [T; BLOCK];

/// A block of the output, written once.
type OutBlock<T> = [MaybeUninit<T>; BLOCK];

/// Blocks `blocks` of one batch row, advanced together one step at a time: each step reads
/// one contiguous span of the k and v rows and writes one of y. (A task per block, walking
/// the rows a whole row apart, spent most of its time waiting for memory at C = 2048.)
struct SpanJob<'a, 'o, T> {
    dims: Wkv4Dims,
    inputs: Wkv4Inputs<'a, T>,
    batch_row: usize,
    blocks: std::ops::Range<usize>,
    /// Whether y is written with non-temporal stores.
    stream: bool,
    y: &'o DisjointOutput<'o, T>,
    state_out: &'o DisjointOutput<'o, T>,
}

/// The running state of a block: aa, bb, pp per lane (cache-line aligned, so that no vector
/// load straddles two lines).
#[repr(C, align(64))]
struct State<T> {
    aa: Block<T>,
    bb: Block<T>,
    pp: Block<T>,
}

/// A block's parameters (cache-line aligned like [`State`]).
#[repr(C, align(64))]
struct Params<T> {
    /// The log-decay w.
    w: Block<T>,
    /// u, for [`two_exp_step`].
    u: Block<T>,
    /// e^-(u + w) for [`one_exp_step`], when the block can use it (see [`bonus_factors`]).
    bonus: Block<T>,
    /// Whether the block runs [`one_exp_step`] (else [`two_exp_step`]).
    one_exp: bool,
}

impl<T: Real> Kernel for SpanJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let params: Vec<Params<T>> = self.blocks.clone().map(|b| self.params(b)).collect();
        let mut states: Vec<State<T>> =
            self.blocks.clone().map(|b| self.initial_state(b)).collect();
        let first = self.blocks.start * BLOCK;
        let span = (self.blocks.end * BLOCK).min(self.dims.channels) - first;
        for t in 0..self.dims.len {
            let base = self.offset(first, t);
            let k = self.inputs.k[base..base + span].chunks(BLOCK);
            let v = self.inputs.v[base..base + span].chunks(BLOCK);
            // SAFETY: this task is the only one writing these channels of batch row
            // `batch_row` (the tasks are distinct (row, blocks) pairs).
            let y = unsafe { self.y.slice_uninit(base, span) }.chunks_mut(BLOCK);
            for (j, ((state, params), ((k, v), y))) in states
                .iter_mut()
                .zip(&params)
                .zip(k.zip(v).zip(y))
                .enumerate()
            {
                let ahead = base + j * BLOCK + PREFETCH_AHEAD * self.dims.channels;
                prefetch_block(self.inputs.k, ahead);
                prefetch_block(self.inputs.v, ahead);
                step_block::<T, A>(state, params, k, v, y, self.stream);
            }
        }
        if self.stream {
            finish_streaming();
        }
        for (b, state) in self.blocks.clone().zip(&states) {
            self.store_state(b, state);
        }
    }
}

impl<T: Real> SpanJob<'_, '_, T> {
    /// Channels of block `b`.
    fn channels_of(&self, b: usize) -> std::ops::Range<usize> {
        b * BLOCK..self.dims.channels.min((b + 1) * BLOCK)
    }

    /// Block `b`'s parameters (padding lanes: w = 0, u = 0).
    fn params(&self, b: usize) -> Params<T> {
        let w = load_block(&self.inputs.w[self.channels_of(b)]);
        let u = load_block(&self.inputs.u[self.channels_of(b)]);
        let bonus = bonus_factors(&w, &u);
        Params {
            w,
            u,
            one_exp: bonus.is_some(),
            bonus: bonus.unwrap_or([T::ONE; BLOCK]),
        }
    }

    /// Block `b`'s initial state; padding lanes start empty (0, 0, -inf).
    fn initial_state(&self, b: usize) -> State<T> {
        let mut state = State {
            aa: [T::ZERO; BLOCK],
            bb: [T::ZERO; BLOCK],
            pp: [T::NEG_INFINITY; BLOCK],
        };
        if let Some(initial) = self.inputs.state {
            let lanes = self.channels_of(b);
            let width = lanes.len();
            let channels = self.dims.channels;
            let base = self.batch_row * 3 * channels + lanes.start;
            let row = |r: usize| &initial[base + r * channels..base + r * channels + width];
            state.aa[..width].copy_from_slice(row(0));
            state.bb[..width].copy_from_slice(row(1));
            state.pp[..width].copy_from_slice(row(2));
        }
        state
    }

    /// Writes block `b`'s final (aa, bb, pp).
    fn store_state(&self, b: usize, state: &State<T>) {
        let lanes = self.channels_of(b);
        let channels = self.dims.channels;
        let base = self.batch_row * 3 * channels + lanes.start;
        for (row, values) in [&state.aa, &state.bb, &state.pp].into_iter().enumerate() {
            // SAFETY: this task is the only one writing these channels of the state rows of
            // batch row `batch_row` (the tasks are distinct (row, blocks) pairs).
            unsafe {
                self.state_out
                    .write(base + row * channels, &values[..lanes.len()])
            };
        }
    }

    /// Where channel `channel` of step `t` is in a `(B, T, C)` array.
    #[inline(always)]
    fn offset(&self, channel: usize, t: usize) -> usize {
        (self.batch_row * self.dims.len + t) * self.dims.channels + channel
    }
}

/// Asks for the cache lines of `data[start..start + BLOCK]` (clipped to `data`) to be brought
/// into L1. A hint: it never faults and does not change results. (Not the shared
/// `super::prefetch` over a slice: its loop has a run-time trip count, and routing this
/// fixed-size one through it made wkv4 1.3x slower.)
#[inline(always)]
fn prefetch_block<T>(data: &[T], start: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = BLOCK * std::mem::size_of::<T>();
        let end = data.len().min(start + BLOCK);
        if start < end {
            let first = data[start..end].as_ptr().cast::<i8>();
            for line in (0..bytes).step_by(64) {
                // SAFETY: prefetching is a hint that never faults, whatever the address, and
                // SSE is part of the x86-64 baseline; `wrapping_add` computes the address
                // without dereferencing it.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(line)) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, start);
}

/// Whether `y` starts on a 64-byte line.
#[inline(always)]
fn is_line_aligned<T>(y: &[T]) -> bool {
    y.as_ptr().align_offset(64) == 0
}

/// Writes a line-aligned block of y with non-temporal stores where the ISA has them (AVX-512
/// here), else plainly. The output is too large to stay in cache, and streaming it saves
/// reading every line before it is overwritten: 1.2x for wkv4 at C = 2048.
#[inline(always)]
fn store_streaming<T: Real, A: Arch>(y: &mut OutBlock<T>, out: &OutBlock<T>) {
    #[cfg(target_arch = "x86_64")]
    if A::AVX512 {
        use std::arch::x86_64::{_mm512_loadu_si512, _mm512_stream_si512};
        let bytes = std::mem::size_of_val(y);
        for line in (0..bytes).step_by(64) {
            // SAFETY: `line` is a 64-byte line inside both blocks, y's lines are aligned
            // (the caller checked), and A::AVX512 says that AVX-512 F is enabled and present.
            unsafe {
                let from = out.as_ptr().cast::<u8>().add(line);
                let to = y.as_mut_ptr().cast::<u8>().add(line);
                _mm512_stream_si512(to.cast(), _mm512_loadu_si512(from.cast()));
            }
        }
        return;
    }
    *y = *out;
}

/// Orders this task's non-temporal stores before what follows (they are weakly ordered, and
/// the caller reads y once every task has joined).
#[inline(always)]
fn finish_streaming() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// One step of a block: `k`, `v` and `y` hold its lanes (fewer than [`BLOCK`] in a row's last
/// block, which then runs on zero-padded copies). With `stream`, a full, line-aligned block of
/// y is written with non-temporal stores (see [`store_streaming`]).
#[inline(always)]
fn step_block<T: Real, A: Arch>(
    state: &mut State<T>,
    params: &Params<T>,
    k: &[T],
    v: &[T],
    y: &mut [MaybeUninit<T>],
    stream: bool,
) {
    match (
        <&Block<T>>::try_from(k),
        <&Block<T>>::try_from(v),
        <&mut OutBlock<T>>::try_from(&mut *y),
    ) {
        (Ok(k), Ok(v), Ok(y)) if stream && is_line_aligned(y) => {
            let mut out = [MaybeUninit::uninit(); BLOCK];
            step::<T, A>(state, params, k, v, &mut out);
            store_streaming::<T, A>(y, &out);
        }
        (Ok(k), Ok(v), Ok(y)) => step::<T, A>(state, params, k, v, y),
        _ => {
            let mut padded = [MaybeUninit::uninit(); BLOCK];
            step::<T, A>(state, params, &load_block(k), &load_block(v), &mut padded);
            y.copy_from_slice(&padded[..y.len()]);
        }
    }
}

/// One step of a full block in its form. (A function, not a closure: closures do not
/// inherit the target features of the kernel they sit in, and a closure that is not inlined
/// calls libm for every fused multiply-add.)
#[inline(always)]
fn step<T: Real, A: Arch>(
    state: &mut State<T>,
    params: &Params<T>,
    k: &Block<T>,
    v: &Block<T>,
    y: &mut OutBlock<T>,
) {
    if params.one_exp {
        one_exp_step::<T, A>(state, &params.w, &params.bonus, k, v, y)
    } else {
        two_exp_step::<T, A>(state, &params.w, &params.u, k, v, y)
    }
}

/// One step with one exp per channel. With g = pp + w - k, the update's weights are
///
/// ```text
/// pp' = max(pp + w, k);   e_old = exp(pp + w - pp');   e_new = exp(k - pp')
/// aa' = e_old aa + e_new v;   bb' = e_old bb + e_new
/// ```
///
/// (one of them is 1, the other e^-|g|), and the output reuses them: taking q = u + pp' in
/// the module's y formula, exp(pp - q) = e^-(u + w) e_old and exp(u + k - q) = e_new, so
///
/// ```text
/// y = (b e_old aa + e_new v) / (b e_old bb + e_new),   b = e^-(u + w)   (the `bonus`)
/// ```
///
/// the stable form's y from the same state, for one exp instead of two. Sound while |u + w|
/// is bounded (see [`bonus_limit`]).
#[inline(always)]
fn one_exp_step<T: Real, A: Arch>(
    state: &mut State<T>,
    w: &Block<T>,
    bonus: &Block<T>,
    k: &Block<T>,
    v: &Block<T>,
    y: &mut OutBlock<T>,
) {
    let mut out = [T::ZERO; BLOCK];
    for l in 0..BLOCK {
        let (aa, bb) = (state.aa[l], state.bb[l]);
        let decayed = state.pp[l] + w[l];
        let (e_old, e_new) = split_weights::<T, A>(decayed - k[l]);
        let new_v = e_new * v[l];
        let scaled_old = bonus[l] * e_old;
        out[l] = T::fma::<A>(scaled_old, aa, new_v) / T::fma::<A>(scaled_old, bb, e_new);
        state.aa[l] = T::fma::<A>(e_old, aa, new_v);
        state.bb[l] = T::fma::<A>(e_old, bb, e_new);
        state.pp[l] = decayed.max_nan(k[l]);
    }
    *y = out.map(MaybeUninit::new);
}

/// The largest |u + w| for which [`one_exp_step`] is exact to working precision: its factor
/// e^-(u + w) times the smallest weight the exp returns (e^-87 for f32, e^-708 for f64) must
/// stay below 2^-30 of a weight of 1, so the mass it drops is negligible.
fn bonus_limit<T: Real>() -> f64 {
    if std::mem::size_of::<T>() == 4 {
        60.0
    } else {
        600.0
    }
}

/// `e^-(u + w)` per lane, or `None` when some |u + w| exceeds [`bonus_limit`] (the block then
/// runs [`two_exp_step`]). Padding lanes get 1.
#[inline(always)]
fn bonus_factors<T: Real>(w: &Block<T>, u: &Block<T>) -> Option<Block<T>> {
    let limit = T::from_f64(bonus_limit::<T>());
    let mut bonus = [T::ONE; BLOCK];
    for l in 0..BLOCK {
        let sum = u[l] + w[l];
        // Written so that NaN fails the test.
        if !(sum <= limit && -sum <= limit) {
            return None;
        }
        // The portable exp: the same factor on every instruction set.
        bonus[l] = (-sum).exp();
    }
    Some(bonus)
}

/// One step of the module's formulas with two exps per channel, for any u and w.
#[inline(always)]
fn two_exp_step<T: Real, A: Arch>(
    state: &mut State<T>,
    w: &Block<T>,
    u: &Block<T>,
    k: &Block<T>,
    v: &Block<T>,
    y: &mut OutBlock<T>,
) {
    let mut out = [T::ZERO; BLOCK];
    for l in 0..BLOCK {
        // The formulas of the module docs, with q = max(x, z) folded into the weights.
        let (aa, bb, pp) = (state.aa[l], state.bb[l], state.pp[l]);
        let (e1, e2) = split_weights::<T, A>(pp - (u[l] + k[l]));
        out[l] = T::fma::<A>(e1, aa, e2 * v[l]) / T::fma::<A>(e1, bb, e2);
        let decayed = pp + w[l];
        let (e1, e2) = split_weights::<T, A>(decayed - k[l]);
        state.aa[l] = T::fma::<A>(e1, aa, e2 * v[l]);
        state.bb[l] = T::fma::<A>(e1, bb, e2);
        state.pp[l] = decayed.max_nan(k[l]);
    }
    *y = out.map(MaybeUninit::new);
}

/// `(exp(x - q), exp(z - q))` with `q = max(x, z)`, from `gap = x - z`: one of the two is
/// exp(0) = 1 and the other exp(min - max) = exp(-|gap|), so one exp suffices, with the same
/// values as two (the exp gives exactly 1 at 0, and min - max = -|gap| exactly).
/// The exp is taken as 2^(-|gap| log2 e): its argument reduction is exact, so it costs fewer
/// operations than `exp_on`, for one extra rounding of the scaled exponent.
#[inline(always)]
fn split_weights<T: Real, A: Arch>(gap: T) -> (T, T) {
    let weight = (gap.magnitude() * -T::LOG2E).exp2_nonpositive_on::<A>();
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

    /// wkv4 on `channels` channels (w from `decay`) against the four-exp form, per channel.
    fn check_against_four_exp_form(channels: usize, decay: impl Fn(usize) -> f64) {
        let (batch, len) = (2, 9);
        let f = |i: usize, s: f64| ((i as f64 * s).sin() * 3.0).round() / 2.0 + (i % 7) as f64;
        let w: Vec<f64> = (0..channels).map(decay).collect();
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
                    assert!(
                        (got - want).abs() <= 1e-13 * want.abs().max(1.0),
                        "channel {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_exp_form_matches_the_four_exp_form_across_a_partial_block() {
        let f = |i: usize| ((i as f64 * 0.3).sin() * 3.0).round() / 2.0 + (i % 7) as f64;
        check_against_four_exp_form(BLOCK + 3, |c| -0.1 - f(c).abs());
    }

    #[test]
    fn blocks_beyond_the_bonus_limit_run_the_two_exp_form() {
        // The second block's |u + w| ~ 900 > 600: e^-(u + w) would overflow, so that block
        // must take the two-exp form while its neighbours keep the one-exp form.
        let decay = |c: usize| {
            if (BLOCK..2 * BLOCK).contains(&c) {
                -900.0
            } else {
                -0.5
            }
        };
        check_against_four_exp_form(2 * BLOCK + 5, decay);
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
