//! One decode step of a Mamba-2 mixer after its input projection, in one call: the conv
//! update over the xBC channels, the state update with the gate, and the grouped RMS norm.
//!
//! For each batch row, with `zxbcdt = in_proj(h) = [z, xBC, dt]` (widths d_inner,
//! conv_dim = d_inner + 2 G N, H):
//!
//! ```text
//! xBC[c] = silu(bias[c] + sum_k w[c, k] joined_c[k])      joined_c = [conv_state[c], xBC_in[c]]
//! conv_state[c] = joined_c[1..]
//! (x, B, C) = split(xBC, [d_inner, G N, G N])
//! dt[h] = clamp(softplus(dt_in[h] + dt_bias[h]), dt_min, dt_max)
//! state[h, p, :] = exp(dt[h] A[h]) state[h, p, :] + dt[h] x[h, p] B[g(h), :]
//! y[h, p] = (sum_n C[g(h), n] state[h, p, n] + D[h] x[h, p]) silu(z[h, p])
//! out = y / sqrt(mean_group(y^2) + eps) * norm_weight      mean over groups of d_inner / G
//! ```
//!
//! The same formulas as `causal_conv1d_update`, `selective_state_update` and the model's gated
//! norm called one after the other (which the NumPy backend does); fusing them saves two
//! kernel calls, several NumPy operations and their temporaries per layer and token.

use super::conv1d;
use super::state_update::{
    selective_state_update, DecayForm, Granularity, UpdateDims, UpdateInputs,
};
use crate::error::{check_len, KernelError};
use crate::parallel;
use crate::simd::Real;

/// Sizes of one step.
#[derive(Clone, Copy, Debug)]
pub struct Mamba2StepDims {
    /// Batch rows.
    pub batch: usize,
    /// Heads H.
    pub heads: usize,
    /// Channels per head P (d_inner = H P).
    pub headdim: usize,
    /// State size N.
    pub dstate: usize,
    /// Groups G of B and C; they divide H (and the norm's groups are d_inner / G channels).
    pub groups: usize,
    /// Conv width k (the conv state keeps k - 1 inputs per channel).
    pub width: usize,
}

impl Mamba2StepDims {
    fn d_inner(&self) -> usize {
        self.heads * self.headdim
    }

    fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.groups * self.dstate
    }

    fn zxbcdt_width(&self) -> usize {
        self.d_inner() + self.conv_dim() + self.heads
    }
}

/// The layer's parameters and the step's input (C-contiguous).
#[derive(Clone, Copy, Debug)]
pub struct Mamba2StepInputs<'a, T> {
    /// `(batch, d_inner + conv_dim + H)`: the input projection's output `[z, xBC, dt]`.
    pub zxbcdt: &'a [T],
    /// `(conv_dim, width)`.
    pub conv_weight: &'a [T],
    /// `(conv_dim,)`.
    pub conv_bias: Option<&'a [T]>,
    /// `(H,)`.
    pub dt_bias: &'a [T],
    /// `(H,)`: A = -exp(A_log).
    pub a: &'a [T],
    /// `(H,)`.
    pub d: &'a [T],
    /// `(d_inner,)`: the gated norm's weight.
    pub norm_weight: &'a [T],
    /// The norm's epsilon.
    pub eps: T,
    /// Clamp of the step size after the softplus.
    pub dt_limit: (T, T),
}

/// Runs the step: updates `conv_state` `(batch, conv_dim, width - 1)` and `ssm_state`
/// `(batch, H, P, N)` in place and writes `out` `(batch, d_inner)`.
pub fn mamba2_step<T: Real>(
    dims: Mamba2StepDims,
    inputs: Mamba2StepInputs<'_, T>,
    conv_state: &mut [T],
    ssm_state: &mut [T],
    out: &mut [T],
) -> Result<(), KernelError> {
    check_dims(&dims, &inputs, conv_state, ssm_state, out)?;
    let (di, cd, heads) = (dims.d_inner(), dims.conv_dim(), dims.heads);
    let row_state = heads * dims.headdim * dims.dstate;
    let context = dims.width - 1;
    let mut xbc = vec![T::ZERO; cd];
    let mut dt = vec![T::ZERO; heads];
    for b in 0..dims.batch {
        let zxbcdt = &inputs.zxbcdt[b * dims.zxbcdt_width()..][..dims.zxbcdt_width()];
        let (z, rest) = zxbcdt.split_at(di);
        let (xbc_in, dt_in) = rest.split_at(cd);
        let state = &mut conv_state[b * cd * context..][..cd * context];
        conv_update(&dims, &inputs, xbc_in, state, &mut xbc)?;
        step_sizes(&inputs, dt_in, &mut dt);
        let gn = dims.groups * dims.dstate;
        let update_dims = UpdateDims {
            batch: 1,
            heads,
            headdim: dims.headdim,
            dstate: dims.dstate,
            groups: dims.groups,
            dt_form: Granularity::PerHead,
            d_form: Granularity::PerHead,
            bias_form: Granularity::PerHead,
            a_form: DecayForm::PerHead,
        };
        let update_inputs = UpdateInputs {
            x: &xbc[..di],
            dt: &dt,
            a: inputs.a,
            b: &xbc[di..di + gn],
            c: &xbc[di + gn..],
            d: Some(inputs.d),
            z: Some(z),
            dt_bias: None,
            dt_softplus: false,
        };
        let y = &mut out[b * di..(b + 1) * di];
        let state = &mut ssm_state[b * row_state..(b + 1) * row_state];
        selective_state_update(update_dims, update_inputs, state, y)?;
        group_norm(y, inputs.norm_weight, dims.groups, inputs.eps);
    }
    Ok(())
}

fn check_dims<T: Real>(
    dims: &Mamba2StepDims,
    inputs: &Mamba2StepInputs<'_, T>,
    conv_state: &[T],
    ssm_state: &[T],
    out: &[T],
) -> Result<(), KernelError> {
    let Mamba2StepDims {
        batch,
        heads,
        headdim,
        dstate,
        groups,
        width,
    } = *dims;
    if groups == 0 || heads % groups != 0 {
        return Err(KernelError::value(
            "groups",
            format!("{groups} groups must divide {heads} heads"),
        ));
    }
    if width == 0 {
        return Err(KernelError::value(
            "conv_weight",
            "width must be at least 1",
        ));
    }
    let cd = dims.conv_dim();
    check_len("zxbcdt", inputs.zxbcdt, &[batch, dims.zxbcdt_width()])?;
    check_len("conv_weight", inputs.conv_weight, &[cd, width])?;
    if let Some(bias) = inputs.conv_bias {
        check_len("conv_bias", bias, &[cd])?;
    }
    for (name, v) in [
        ("dt_bias", inputs.dt_bias),
        ("A", inputs.a),
        ("D", inputs.d),
    ] {
        check_len(name, v, &[heads])?;
    }
    check_len("norm_weight", inputs.norm_weight, &[dims.d_inner()])?;
    check_len("conv_state", conv_state, &[batch, cd, width - 1])?;
    check_len("ssm_state", ssm_state, &[batch, heads, headdim, dstate])?;
    check_len("out", out, &[batch, dims.d_inner()])
}

/// dt[h] = clamp(softplus(dt_in[h] + dt_bias[h]), dt_min, dt_max).
fn step_sizes<T: Real>(inputs: &Mamba2StepInputs<'_, T>, dt_in: &[T], dt: &mut [T]) {
    let (low, high) = inputs.dt_limit;
    for ((dt, &raw), &bias) in dt.iter_mut().zip(dt_in).zip(inputs.dt_bias) {
        let v = (raw + bias).softplus();
        *dt = if v < low {
            low
        } else if v > high {
            high
        } else {
            v
        };
    }
}

/// Rows of [`grouped_rms_norm`] per task.
const NORM_ROWS_PER_TASK: usize = 64;

/// The gated norm of a prompt: every row of `y` (`rows x weight.len()`) normalised in place as
/// [`mamba2_step`] does for one token (rows in parallel when there are many).
pub fn grouped_rms_norm<T: Real>(
    y: &mut [T],
    weight: &[T],
    groups: usize,
    eps: T,
) -> Result<(), KernelError> {
    let width = weight.len();
    if groups == 0 || !width.is_multiple_of(groups) {
        return Err(KernelError::value(
            "groups",
            format!("{groups} groups must divide the width {width}"),
        ));
    }
    if width == 0 {
        return Ok(());
    }
    check_len("y", y, &[y.len() / width, width])?;
    let work = y.len();
    let tasks: Vec<_> = y.chunks_mut(NORM_ROWS_PER_TASK * width).collect();
    crate::parallel::for_each_init(
        tasks,
        work,
        || (),
        |_, rows| {
            for row in rows.chunks_exact_mut(width) {
                group_norm(row, weight, groups, eps);
            }
        },
    );
    Ok(())
}

/// y <- y / sqrt(mean(y^2) + eps) * weight over each group of `y.len() / groups` channels.
fn group_norm<T: Real>(y: &mut [T], weight: &[T], groups: usize, eps: T) {
    let size = y.len() / groups;
    for (group, weight) in y.chunks_exact_mut(size).zip(weight.chunks_exact(size)) {
        let sum = group.iter().fold(T::ZERO, |s, &v| s + v * v);
        let mean = sum / T::from_f64(size as f64);
        let inv = T::ONE / T::from_f64((mean + eps).to_f64().sqrt());
        for (v, &w) in group.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}

/// The conv update (with silu) of one batch row's xBC channels: `causal_conv1d_update` with
/// one token, on the pool when it splits the channels into several tasks.
fn conv_update<T: Real>(
    dims: &Mamba2StepDims,
    inputs: &Mamba2StepInputs<'_, T>,
    x: &[T],
    state: &mut [T],
    out: &mut [T],
) -> Result<(), KernelError> {
    let conv_dims = conv1d::UpdateDims {
        batch: 1,
        dim: dims.conv_dim(),
        len: 1,
        width: dims.width,
        state_len: dims.width - 1,
        silu: true,
    };
    let (weight, bias) = (inputs.conv_weight, inputs.conv_bias);
    if conv1d::update_is_single_task(&conv_dims) {
        conv1d::causal_conv1d_update(conv_dims, x, weight, bias, state, out)
    } else {
        parallel::install(|| conv1d::causal_conv1d_update(conv_dims, x, weight, bias, state, out))
    }
}
