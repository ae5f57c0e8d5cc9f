//! RWKV-5 and RWKV-6 WKV (matrix state with the bonus u).
//!
//! Per head, with vectors as rows, S = S_{t-1} of shape (K, V) and d_t = exp(w_t):
//!
//! ```text
//! y_t = (scale r_t) (S + diag(u) k_t^T v_t)          y_j = scale (sum_i r_i S_ij + (r . (u k)) v_j)
//! S_t = diag(d_t) S + k_t^T v_t                     S_ij = d_i S_ij + k_i v_j
//! ```
//!
//! RWKV-5 has one log-decay per head channel, `(H, N)`; RWKV-6 one per token, `(B, T, H, N)`.
//! Each task owns a tile of value columns of a group of heads (see the parent module) and
//! keeps those tiles of the state in cache; the loop over the key index i broadcasts r_i, k_i,
//! d_i and updates a state row with whole-register operations, accumulating y in registers.

use super::{
    column_tiles, load_state_tile, load_tile, prefetch, store_state_tile, store_tile, ColumnTile,
    DisjointOutput, HeadDims, Lanes, StateRow, LANES, PARALLEL_MIN_STATE_STEPS, PREFETCH_AHEAD,
};
use crate::error::{check_len, KernelError};
use crate::parallel;
use crate::simd::{self, Arch, Kernel, Real};

/// The log-decay w of a call.
#[derive(Clone, Copy, Debug)]
pub enum LogDecay<'a, T> {
    /// `(H, N)`: the same at every step (RWKV-5).
    PerHead(&'a [T]),
    /// `(B, T, H, N)`: one per token (RWKV-6).
    PerToken(&'a [T]),
}

/// Inputs of one call, C-contiguous.
#[derive(Clone, Copy, Debug)]
pub struct Wkv6Inputs<'a, T> {
    /// Receptance, `(B, T, H, N)`.
    pub r: &'a [T],
    /// Keys, `(B, T, H, N)`.
    pub k: &'a [T],
    /// Values, `(B, T, H, N)`.
    pub v: &'a [T],
    /// Log-decay (<= 0).
    pub w: LogDecay<'a, T>,
    /// Bonus of the current token, `(H, N)`.
    pub u: &'a [T],
    /// Initial state `(B, H, N, N)`; zeros when `None`.
    pub state: Option<&'a [T]>,
    /// Multiplies r.
    pub scale: T,
}

/// Runs the recurrence. `y` is `(B, T, H, N)` and `state_out` `(B, H, N, N)`; both are
/// overwritten.
pub fn wkv6<T: Real>(
    dims: HeadDims,
    inputs: Wkv6Inputs<'_, T>,
    y: &mut [T],
    state_out: &mut [T],
) -> Result<(), KernelError> {
    validate(&dims, &inputs)?;
    dims.check_outputs(y, state_out)?;
    let isa = simd::isa();
    let y = DisjointOutput::new(y);
    let state_out = DisjointOutput::new(state_out);
    let tiles = column_tiles::<T>(&dims, parallel::num_threads());
    let work = dims.batch * dims.len * dims.heads * dims.head_size * dims.head_size;
    let run_tile = |_: &mut (), tile: ColumnTile| {
        let job = TileJob {
            dims,
            inputs,
            tile,
            y: &y,
            state_out: &state_out,
        };
        simd::dispatch_on(isa, job);
    };
    parallel::for_each_init_above(PARALLEL_MIN_STATE_STEPS, tiles, work, || (), run_tile);
    Ok(())
}

fn validate<T>(dims: &HeadDims, x: &Wkv6Inputs<'_, T>) -> Result<(), KernelError> {
    for (name, data) in [("r", x.r), ("k", x.k), ("v", x.v)] {
        check_len(name, data, &dims.tokens())?;
    }
    match x.w {
        LogDecay::PerHead(w) => check_len("w", w, &dims.per_head())?,
        LogDecay::PerToken(w) => check_len("w", w, &dims.tokens())?,
    }
    check_len("u", x.u, &dims.per_head())?;
    if let Some(state) = x.state {
        check_len("state", state, &dims.state())?;
    }
    Ok(())
}

/// One column tile of one head, compiled per ISA.
struct TileJob<'a, 'o, T> {
    dims: HeadDims,
    inputs: Wkv6Inputs<'a, T>,
    tile: ColumnTile,
    y: &'o DisjointOutput<'o, T>,
    state_out: &'o DisjointOutput<'o, T>,
}

impl<T: Real> Kernel for TileJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        match self.tile.blocks {
            1 => self.scan::<A, 1>(),
            2 => self.scan::<A, 2>(),
            3 => self.scan::<A, 3>(),
            _ => self.scan::<A, 4>(),
        }
    }
}

/// The key-indexed vectors of one step, each of length N.
struct StepVectors<'s, T> {
    r: &'s [T],
    k: &'s [T],
    /// d_t = exp(w_t).
    decay: &'s [T],
}

impl<T: Real> TileJob<'_, '_, T> {
    /// Runs every step for a tile of `TB` lane blocks of each head of the group, and stores
    /// the final states.
    #[inline(always)]
    fn scan<A: Arch, const TB: usize>(self) {
        let (dims, tile, x) = (self.dims, self.tile, self.inputs);
        let n = dims.head_size;
        let heads = tile.head..tile.head + tile.heads;
        let mut states: Vec<_> = heads
            .clone()
            .map(|h| load_state_tile::<T, TB>(&dims, &tile, h, x.state))
            .collect();
        // d = exp(w) of the group's heads, `[head][i]`: once for RWKV-5, per step for RWKV-6.
        let mut decay = vec![T::ZERO; tile.heads * n];
        if let LogDecay::PerHead(w) = x.w {
            exp_into::<T, A>(&mut decay, &w[heads.start * n..heads.end * n]);
        }
        for t in 0..dims.len {
            // The group's rows of step t are contiguous in every (B, T, H, N) input.
            let base = dims.token_offset(tile.batch, t, tile.head);
            let group = base..base + tile.heads * n;
            if t + PREFETCH_AHEAD < dims.len {
                let ahead = dims.token_offset(tile.batch, t + PREFETCH_AHEAD, tile.head);
                let ahead = ahead..ahead + tile.heads * n;
                for input in [x.r, x.k, x.v] {
                    prefetch(&input[ahead.clone()]);
                }
                if let LogDecay::PerToken(w) = x.w {
                    prefetch(&w[ahead]);
                }
            }
            if let LogDecay::PerToken(w) = x.w {
                exp_into::<T, A>(&mut decay, &w[group]);
            }
            for (g, state) in states.iter_mut().enumerate() {
                let token = base + g * n..base + (g + 1) * n;
                let (r, k) = (&x.r[token.clone()], &x.k[token.clone()]);
                let u = &x.u[(tile.head + g) * n..][..n];
                let columns = token.start + tile.start..token.start + tile.start + tile.width;
                let v = load_tile::<T, TB>(&x.v[columns.clone()]);
                let vectors = StepVectors {
                    r,
                    k,
                    decay: &decay[g * n..(g + 1) * n],
                };
                let mut y = step::<T, A, TB>(state, &vectors, dot3::<T, A>(r, u, k), &v);
                for lane in y.as_flattened_mut() {
                    *lane *= x.scale;
                }
                // SAFETY: this task is the only one writing these columns of this head of
                // batch row `batch` (the tasks are distinct tiles).
                unsafe { store_tile(self.y, columns.start, tile.width, &y) };
            }
        }
        for (h, state) in heads.zip(&states) {
            // SAFETY: as above, for this tile's columns of the head's state.
            unsafe { store_state_tile(&dims, &tile, h, state, self.state_out) };
        }
    }
}

/// `decay[i] = exp(w[i])`.
#[inline(always)]
fn exp_into<T: Real, A: Arch>(decay: &mut [T], w: &[T]) {
    for (d, &w) in decay.iter_mut().zip(w) {
        *d = w.exp_on::<A>();
    }
}

/// One step on a tile, in one pass over the state rows: returns
/// y_j / scale = (r . (u k)) v_j + sum_i r_i S_ij and updates S_ij = d_i S_ij + k_i v_j;
/// `bonus` is r . (u k).
#[inline(always)]
fn step<T: Real, A: Arch, const TB: usize>(
    state: &mut [StateRow<T, TB>],
    x: &StepVectors<'_, T>,
    bonus: T,
    v: &[Lanes<T>; TB],
) -> [Lanes<T>; TB] {
    // TB independent accumulator chains per lane, kept in registers.
    let mut y = v.map(|v| v.map(|v| bonus * v));
    for (s_row, ((&r_i, &k_i), &d_i)) in state.iter_mut().zip(x.r.iter().zip(x.k).zip(x.decay)) {
        for (s_block, (y, v)) in s_row.0.iter_mut().zip(y.iter_mut().zip(v)) {
            let mut s = *s_block;
            for l in 0..LANES {
                y[l] = T::fma::<A>(r_i, s[l], y[l]);
                s[l] = T::fma::<A>(d_i, s[l], k_i * v[l]);
            }
            *s_block = s;
        }
    }
    y
}

/// sum_i a_i b_i c_i with [`LANES`] partial sums (a fixed order, so it vectorises and stays
/// deterministic).
#[inline(always)]
fn dot3<T: Real, A: Arch>(a: &[T], b: &[T], c: &[T]) -> T {
    let mut partial = [T::ZERO; LANES];
    let chunks = a.chunks(LANES).zip(b.chunks(LANES)).zip(c.chunks(LANES));
    for ((a, b), c) in chunks {
        for (l, ((&a, &b), &c)) in a.iter().zip(b).zip(c).enumerate() {
            partial[l] = T::fma::<A>(a, b * c, partial[l]);
        }
    }
    partial.iter().fold(T::ZERO, |sum, &p| sum + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_step_by_hand() {
        // T = 1 from a zero state: S_1 = k^T v and y_1 = (r . (u k)) v.
        let dims = HeadDims {
            batch: 1,
            len: 1,
            heads: 1,
            head_size: 3,
        };
        let (r, k, v) = ([1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [3.0, 1.0, -2.0]);
        let (w, u) = ([-0.5; 3], [2.0, 1.0, 0.5]);
        let inputs = Wkv6Inputs {
            r: &r,
            k: &k,
            v: &v,
            w: LogDecay::PerHead(&w),
            u: &u,
            state: None,
            scale: 1.0_f64,
        };
        let (mut y, mut s) = (vec![0.0; 3], vec![0.0; 9]);
        wkv6(dims, inputs, &mut y, &mut s).unwrap();
        let bonus = -2.0; // r . (u k) = 1 * 1 + 2 * -1 + -1 * 1
        assert_eq!(y, v.map(|v| bonus * v).to_vec());
        let outer: Vec<f64> = k.iter().flat_map(|&k| v.map(|v| k * v)).collect();
        assert_eq!(s, outer);
    }
}
