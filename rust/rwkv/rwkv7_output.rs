//! The RWKV-7 time mix's output after wkv7, in one pass per head: the per-head group norm
//! (ln_x), the r_k bonus term and the output gate.
//!
//! For each token and head, with y, r, k, v the head's N values and w, b, g its ln_x weight,
//! bias and gate:
//!
//! ```text
//! mu = sum_n y_n / N;   var = sum_n (y_n - mu)^2 / N
//! out_n = ((y_n - mu) / sqrt(var + eps) w_n + b_n + (sum_m r_m k_m r_k[m]) v_n) g_n
//! ```
//!
//! The model's NumPy backend computes the same expressions in about fifteen array operations.

use crate::error::{check_len, KernelError};
use crate::parallel;
use crate::simd::Real;

/// Inputs of one call: `y`, `r`, `k`, `v` are `(B, T, H, N)`, `g` is `(B, T, H N)` (the
/// same layout); `r_k` is `(H, N)`, `ln_w`, `ln_b` are `(H N,)`.
#[derive(Clone, Copy, Debug)]
pub struct Rwkv7OutputInputs<'a, T> {
    /// wkv7's output.
    pub y: &'a [T],
    /// Receptance.
    pub r: &'a [T],
    /// Keys (as passed to wkv7).
    pub k: &'a [T],
    /// Values (as passed to wkv7).
    pub v: &'a [T],
    /// Output gate.
    pub g: &'a [T],
    /// The bonus weights r_k.
    pub r_k: &'a [T],
    /// ln_x weight.
    pub ln_w: &'a [T],
    /// ln_x bias.
    pub ln_b: &'a [T],
    /// The group norm's epsilon.
    pub eps: T,
}

/// Head rows (tokens x heads) per task of a long call.
const ROWS_PER_TASK: usize = 256;

/// Writes `out` (`rows * heads * head_size` values, `rows` = B T) from the inputs.
pub fn rwkv7_output<T: Real>(
    heads: usize,
    head_size: usize,
    inputs: Rwkv7OutputInputs<'_, T>,
    out: &mut [T],
) -> Result<(), KernelError> {
    let width = heads * head_size;
    if width == 0 {
        return check_len("out", out, &[0]);
    }
    let tokens = inputs.y.len() / width;
    for (name, data) in [
        ("y", inputs.y),
        ("r", inputs.r),
        ("k", inputs.k),
        ("v", inputs.v),
        ("g", inputs.g),
    ] {
        check_len(name, data, &[tokens, heads, head_size])?;
    }
    check_len("r_k", inputs.r_k, &[heads, head_size])?;
    check_len("ln_x weight", inputs.ln_w, &[width])?;
    check_len("ln_x bias", inputs.ln_b, &[width])?;
    check_len("out", out, &[tokens, heads, head_size])?;
    let chunk = ROWS_PER_TASK * head_size;
    let tasks: Vec<_> = out.chunks_mut(chunk).enumerate().collect();
    let work = tokens * width;
    parallel::for_each_init(
        tasks,
        work,
        || (),
        |_, (task, out)| {
            for (i, row) in out.chunks_exact_mut(head_size).enumerate() {
                let flat = task * ROWS_PER_TASK + i;
                head_row(flat % heads, flat * head_size, &inputs, row);
            }
        },
    );
    Ok(())
}

/// One head of one token: `at` is the offset of its N values in every (B, T, H, N) input.
#[inline(always)]
fn head_row<T: Real>(head: usize, at: usize, x: &Rwkv7OutputInputs<'_, T>, out: &mut [T]) {
    let n = out.len();
    let inv_n = T::ONE / T::from_f64(n as f64);
    let channels = head * n..(head + 1) * n;
    let y = &x.y[at..at + n];
    let mean = y.iter().fold(T::ZERO, |s, &v| s + v) * inv_n;
    let var = y.iter().fold(T::ZERO, |s, &v| s + (v - mean) * (v - mean)) * inv_n;
    let inv_scale = T::ONE / T::from_f64((var + x.eps).to_f64().sqrt());
    let (r, k, r_k) = (&x.r[at..at + n], &x.k[at..at + n], &x.r_k[channels.clone()]);
    let bonus = (0..n).fold(T::ZERO, |s, m| s + r[m] * k[m] * r_k[m]);
    let (v, g) = (&x.v[at..at + n], &x.g[at..at + n]);
    let (w, b) = (&x.ln_w[channels.clone()], &x.ln_b[channels]);
    for i in 0..n {
        out[i] = ((y[i] - mean) * inv_scale * w[i] + b[i] + bonus * v[i]) * g[i];
    }
}
