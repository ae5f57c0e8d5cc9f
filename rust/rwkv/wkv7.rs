//! RWKV-7 WKV, the generalized delta rule.
//!
//! Per head, with vectors as rows, S = S_{t-1} of shape (K, V) and d_t = exp(w_t):
//!
//! ```text
//! S_t = (diag(d_t) + b_t^T a_t) S + k_t^T v_t      S_ij = d_i S_ij + b_i sa_j + k_i v_j,  sa = a_t S
//! y_t = (scale r_t) S_t                            y_j = scale sum_i r_i S_ij
//! ```
//!
//! RWKV-7 passes a = -kk, b = kk * alpha. Each task owns a tile of value columns of a group of
//! heads (see the parent module). One pass over the tile per step updates each state row and,
//! from the updated row, accumulates both y_t and the next step's sa_{t+1} = a_{t+1} S_t, so the
//! state is read and written once per step; sa_1 = a_1 S_0 is computed before the first step
//! with the same accumulation, so splitting a sequence across calls changes no bit.

use super::{
    column_tiles, load_state_tile, load_tile, prefetch, store_state_tile, store_tile, ColumnTile,
    DisjointOutput, HeadDims, Lanes, StateRow, LANES, PARALLEL_MIN_STATE_STEPS, PREFETCH_AHEAD,
};
use crate::error::{check_len, KernelError};
use crate::parallel;
use crate::simd::{self, Arch, Kernel, Real};

/// Inputs of one call, all `(B, T, H, N)` and C-contiguous.
#[derive(Clone, Copy, Debug)]
pub struct Wkv7Inputs<'a, T> {
    /// Receptance.
    pub r: &'a [T],
    /// Log-decay (<= 0).
    pub w: &'a [T],
    /// Keys.
    pub k: &'a [T],
    /// Values.
    pub v: &'a [T],
    /// The in-context learning rate's "removal" vector (RWKV-7: -kk).
    pub a: &'a [T],
    /// The "replacement" vector (RWKV-7: kk * alpha).
    pub b: &'a [T],
    /// Initial state `(B, H, N, N)`; zeros when `None`.
    pub state: Option<&'a [T]>,
    /// Multiplies r.
    pub scale: T,
}

/// Runs the recurrence. `y` is `(B, T, H, N)` and `state_out` `(B, H, N, N)`; both are
/// overwritten.
pub fn wkv7<T: Real>(
    dims: HeadDims,
    inputs: Wkv7Inputs<'_, T>,
    y: &mut [T],
    state_out: &mut [T],
) -> Result<(), KernelError> {
    let x = &inputs;
    for (name, data) in [
        ("r", x.r),
        ("w", x.w),
        ("k", x.k),
        ("v", x.v),
        ("a", x.a),
        ("b", x.b),
    ] {
        check_len(name, data, &dims.tokens())?;
    }
    if let Some(state) = x.state {
        check_len("state", state, &dims.state())?;
    }
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

/// One column tile of one head, compiled per ISA.
struct TileJob<'a, 'o, T> {
    dims: HeadDims,
    inputs: Wkv7Inputs<'a, T>,
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
    /// d_t = exp(w_t).
    decay: &'s [T],
    b: &'s [T],
    k: &'s [T],
    r: &'s [T],
    /// a_{t+1} (zeros at the last step, whose sa_{t+1} is not used).
    a_next: &'s [T],
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
        // sa = a_t S_{t-1} per head, starting with a_1 S_0.
        let mut sa = vec![[[T::ZERO; LANES]; TB]; tile.heads];
        if dims.len > 0 {
            let first = dims.token_offset(tile.batch, 0, tile.head);
            for (g, (state, sa)) in states.iter().zip(&mut sa).enumerate() {
                let a = &x.a[first + g * n..first + (g + 1) * n];
                // Summed in a local (kept in registers), not through the reference.
                let mut acc = [[T::ZERO; LANES]; TB];
                for (s_row, &a_i) in state.iter().zip(a) {
                    accumulate::<T, A, TB>(&mut acc, a_i, &s_row.0);
                }
                *sa = acc;
            }
        }
        let mut decay = vec![T::ZERO; tile.heads * n];
        let zeros = vec![T::ZERO; n];
        for t in 0..dims.len {
            // The group's rows of step t are contiguous in every (B, T, H, N) input.
            let base = dims.token_offset(tile.batch, t, tile.head);
            if t + PREFETCH_AHEAD < dims.len {
                let ahead = dims.token_offset(tile.batch, t + PREFETCH_AHEAD, tile.head);
                for input in [x.w, x.b, x.k, x.r, x.a, x.v] {
                    prefetch(&input[ahead..ahead + tile.heads * n]);
                }
            }
            for (d, &w) in decay.iter_mut().zip(&x.w[base..base + tile.heads * n]) {
                *d = w.exp_on::<A>();
            }
            for (g, (state, sa)) in states.iter_mut().zip(&mut sa).enumerate() {
                let token = base + g * n..base + (g + 1) * n;
                let a_next = if t + 1 < dims.len {
                    &x.a[token.start + dims.heads * n..token.end + dims.heads * n]
                } else {
                    &zeros
                };
                let vectors = StepVectors {
                    decay: &decay[g * n..(g + 1) * n],
                    b: &x.b[token.clone()],
                    k: &x.k[token.clone()],
                    r: &x.r[token.clone()],
                    a_next,
                };
                let columns = token.start + tile.start..token.start + tile.start + tile.width;
                let v = load_tile::<T, TB>(&x.v[columns.clone()]);
                let mut y = step::<T, A, TB>(state, &vectors, sa, &v);
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

/// One step on a tile, in one pass over the state rows: S_ij = d_i S_ij + b_i sa_j + k_i v_j,
/// then returns y_j / scale = sum_i r_i S_ij and replaces `sa` by a_{t+1} S_t.
#[inline(always)]
fn step<T: Real, A: Arch, const TB: usize>(
    state: &mut [StateRow<T, TB>],
    x: &StepVectors<'_, T>,
    sa: &mut [Lanes<T>; TB],
    v: &[Lanes<T>; TB],
) -> [Lanes<T>; TB] {
    // 2 TB independent accumulator chains per lane, kept in registers.
    let mut y = [[T::ZERO; LANES]; TB];
    let mut sa_next = [[T::ZERO; LANES]; TB];
    let coefficients = x
        .decay
        .iter()
        .zip(x.b)
        .zip(x.k.iter().zip(x.r))
        .zip(x.a_next);
    for (s_row, (((&d_i, &b_i), (&k_i, &r_i)), &a_next_i)) in state.iter_mut().zip(coefficients) {
        let accumulators = y.iter_mut().zip(sa_next.iter_mut());
        for ((s_block, (sa, v)), (y, sa_next)) in
            s_row.0.iter_mut().zip(sa.iter().zip(v)).zip(accumulators)
        {
            let mut s = *s_block;
            for l in 0..LANES {
                s[l] = T::fma::<A>(d_i, s[l], T::fma::<A>(b_i, sa[l], k_i * v[l]));
                y[l] = T::fma::<A>(r_i, s[l], y[l]);
                sa_next[l] = T::fma::<A>(a_next_i, s[l], sa_next[l]);
            }
            *s_block = s;
        }
    }
    *sa = sa_next;
    y
}

/// acc_j += c S_ij for one state row: how sa_1 = a_1 S_0 is summed before the first step, the
/// same operation, in the same order, as the fused pass uses for sa_{t+1}.
#[inline(always)]
fn accumulate<T: Real, A: Arch, const TB: usize>(
    acc: &mut [Lanes<T>; TB],
    c: T,
    s_row: &[Lanes<T>; TB],
) {
    for (acc, s) in acc.iter_mut().zip(s_row) {
        for l in 0..LANES {
            acc[l] = T::fma::<A>(c, s[l], acc[l]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_rule_writes_v_at_kk() {
        // With d = 1, a = -kk, b = kk (unit kk) and k = kk, one step from any S gives
        // S' = S - kk^T (kk S) + kk^T v, so kk S' = v; and y = r S' with r = kk is v too.
        let n = 4;
        let dims = HeadDims {
            batch: 1,
            len: 1,
            heads: 1,
            head_size: n,
        };
        let kk = [0.5, -0.5, 0.5, 0.5];
        let neg: Vec<f64> = kk.iter().map(|x| -x).collect();
        let v = [1.0, -2.0, 3.0, 0.25];
        let s0: Vec<f64> = (0..n * n).map(|i| (i as f64 * 0.7).sin()).collect();
        let zeros = [0.0; 4];
        let inputs = Wkv7Inputs {
            r: &kk,
            w: &zeros,
            k: &kk,
            v: &v,
            a: &neg,
            b: &kk,
            state: Some(&s0),
            scale: 1.0,
        };
        let (mut y, mut s) = (vec![0.0; n], vec![0.0; n * n]);
        wkv7(dims, inputs, &mut y, &mut s).unwrap();
        for j in 0..n {
            let kk_s: f64 = (0..n).map(|i| kk[i] * s[i * n + j]).sum();
            assert!(
                (kk_s - v[j]).abs() < 1e-14,
                "column {j}: {kk_s} vs {}",
                v[j]
            );
            assert!((y[j] - v[j]).abs() < 1e-14);
        }
    }
}
