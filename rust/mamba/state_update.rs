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
use crate::simd::{self, Arch, Kernel, Real};
use rayon::prelude::*;

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
    if dstate == 0 {
        out.iter_mut()
            .zip(inputs.x)
            .enumerate()
            .for_each(|(row, (o, &x))| {
                *o = finish_row(&dims, &inputs, row, T::ZERO, x);
            });
        return Ok(());
    }
    let isa = simd::isa();
    // Rows of one (batch, head) share dt and B/C; a task takes a few heads' worth of rows.
    let rows_per_task = (16384 / (headdim * dstate).max(1)).max(1) * headdim;
    state
        .par_chunks_mut(rows_per_task * dstate)
        .zip(out.par_chunks_mut(rows_per_task))
        .enumerate()
        .for_each(|(task, (state, out))| {
            let first_row = task * rows_per_task;
            simd::dispatch_on(
                isa,
                RowsJob {
                    dims,
                    inputs,
                    first_row,
                    state,
                    out,
                },
            );
        });
    Ok(())
}

/// `y + D x`, gated by `silu(z)`, for the flat row index `row` of `(batch, heads, headdim)`.
#[inline(always)]
fn finish_row<T: Real>(
    dims: &UpdateDims,
    inputs: &UpdateInputs<'_, T>,
    row: usize,
    y: T,
    x: T,
) -> T {
    let head = (row / dims.headdim) % dims.heads;
    let p = row % dims.headdim;
    let mut y = y;
    if let Some(d) = inputs.d {
        y += d[granular_index(dims.d_form, head, p, dims.headdim)] * x;
    }
    if let Some(z) = inputs.z {
        y *= z[row].silu();
    }
    y
}

struct RowsJob<'a, 'o, T> {
    dims: UpdateDims,
    inputs: UpdateInputs<'a, T>,
    first_row: usize,
    state: &'o mut [T],
    out: &'o mut [T],
}

/// Partial sums kept per lane so that the reduction over the state vectorises.
const ACC: usize = 8;

impl<T: Real> Kernel for RowsJob<'_, '_, T> {
    type Output = ();

    #[inline(always)]
    fn run<A: Arch>(self) {
        let dims = self.dims;
        let inputs = self.inputs;
        let n = dims.dstate;
        for (i, (h, o)) in self
            .state
            .chunks_mut(n)
            .zip(self.out.iter_mut())
            .enumerate()
        {
            let row = self.first_row + i;
            let p = row % dims.headdim;
            let head = (row / dims.headdim) % dims.heads;
            let b = row / (dims.headdim * dims.heads);
            let bh = b * dims.heads + head;
            let dt_index = match dims.dt_form {
                Granularity::PerHead => bh,
                Granularity::PerHeadDim => bh * dims.headdim + p,
            };
            let mut dt = inputs.dt[dt_index];
            if let Some(bias) = inputs.dt_bias {
                dt += bias[granular_index(dims.bias_form, head, p, dims.headdim)];
            }
            if inputs.dt_softplus {
                dt = dt.softplus();
            }
            let x = inputs.x[row];
            let group = head / (dims.heads / dims.groups);
            let bc = (b * dims.groups + group) * n;
            let (b_vec, c_vec) = (&inputs.b[bc..bc + n], &inputs.c[bc..bc + n]);
            let y = match dims.a_form {
                DecayForm::PerHead => {
                    let decay = (dt * inputs.a[head]).exp();
                    update_row::<T, A>(h, b_vec, c_vec, dt * x, |_| decay)
                }
                DecayForm::Full => {
                    let a = &inputs.a[(head * dims.headdim + p) * n..][..n];
                    update_row::<T, A>(h, b_vec, c_vec, dt * x, |k| (dt * a[k]).exp())
                }
            };
            *o = finish_row(&dims, &inputs, row, y, x);
        }
    }
}

/// `h[k] = decay(k) h[k] + dt_x B[k]`; returns `sum_k C[k] h[k]`.
#[inline(always)]
fn update_row<T: Real, A: Arch>(
    h: &mut [T],
    b: &[T],
    c: &[T],
    dt_x: T,
    decay: impl Fn(usize) -> T,
) -> T {
    let mut acc = [T::ZERO; ACC];
    for (k, hk) in h.iter_mut().enumerate() {
        *hk = T::fma::<A>(decay(k), *hk, dt_x * b[k]);
        acc[k % ACC] = T::fma::<A>(c[k], *hk, acc[k % ACC]);
    }
    acc.iter().fold(T::ZERO, |s, &v| s + v)
}
