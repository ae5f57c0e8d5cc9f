//! Bindings of the Mamba-2 SSD scan and of the causal depthwise conv1d.

use super::{
    as_mut_slice, as_opt_slice, as_slice, dims_of, run_detached, run_detached_on_caller, to_numpy,
};
use crate::error::checked_product;
use crate::mamba::conv1d::{self, ConvDims, ConvInputs};
use crate::mamba::conv1d_channels_last::causal_conv1d_channels_last;
use crate::mamba::mamba2_step::{grouped_rms_norm, mamba2_step, Mamba2StepDims, Mamba2StepInputs};
use crate::mamba::ssd::{ssd_scan, ssd_scan_sequential, SsdDims, SsdInputs};
use crate::mamba::state_update::Granularity;
use crate::simd::Real;
use numpy::{Element, PyArrayDyn, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ssd_scan_f32, m)?)?;
    m.add_function(wrap_pyfunction!(ssd_scan_f64, m)?)?;
    m.add_function(wrap_pyfunction!(causal_conv1d_f32, m)?)?;
    m.add_function(wrap_pyfunction!(causal_conv1d_f64, m)?)?;
    m.add_function(wrap_pyfunction!(causal_conv1d_update_f32, m)?)?;
    m.add_function(wrap_pyfunction!(causal_conv1d_update_f64, m)?)?;
    m.add_function(wrap_pyfunction!(mamba2_step_f32, m)?)?;
    m.add_function(wrap_pyfunction!(mamba2_step_f64, m)?)?;
    m.add_function(wrap_pyfunction!(grouped_rms_norm_f32, m)?)?;
    m.add_function(wrap_pyfunction!(grouped_rms_norm_f64, m)?)?;
    Ok(())
}

type Pair<'py, T> = (Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>);

/// Options of one SSD call that are not arrays.
#[derive(Clone, Copy)]
struct SsdOptions<T> {
    chunk_size: usize,
    dt_softplus: bool,
    dt_limit: (T, T),
    sequential: bool,
}

#[allow(clippy::too_many_arguments)]
fn ssd_generic<'py, T: Real + Element>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, T>,
    dt: PyReadonlyArrayDyn<'py, T>,
    a: PyReadonlyArrayDyn<'py, T>,
    b: PyReadonlyArrayDyn<'py, T>,
    c: PyReadonlyArrayDyn<'py, T>,
    d: Option<PyReadonlyArrayDyn<'py, T>>,
    z: Option<PyReadonlyArrayDyn<'py, T>>,
    dt_bias: Option<PyReadonlyArrayDyn<'py, T>>,
    initial_states: Option<PyReadonlyArrayDyn<'py, T>>,
    options: SsdOptions<T>,
) -> PyResult<Pair<'py, T>> {
    let [batch, len, heads, headdim] = dims_of::<4>("x", x.shape(), "(b, L, h, p)")?;
    let [_, _, groups, dstate] = dims_of::<4>("B", b.shape(), "(b, L, g, n)")?;
    let dims = SsdDims {
        batch,
        len,
        heads,
        headdim,
        dstate,
        groups,
        chunk_size: options.chunk_size,
        d_form: match d.as_ref().map(|d| d.ndim()) {
            Some(2) => Granularity::PerHeadDim,
            _ => Granularity::PerHead,
        },
    };
    let inputs = SsdInputs {
        x: as_slice("x", &x)?,
        dt: as_slice("dt", &dt)?,
        a: as_slice("A", &a)?,
        b: as_slice("B", &b)?,
        c: as_slice("C", &c)?,
        d: as_opt_slice("D", &d)?,
        z: as_opt_slice("z", &z)?,
        dt_bias: as_opt_slice("dt_bias", &dt_bias)?,
        dt_softplus: options.dt_softplus,
        dt_limit: options.dt_limit,
        initial_states: as_opt_slice("initial_states", &initial_states)?,
    };
    let out_shape = [batch, len, heads, headdim];
    let state_shape = [batch, heads, headdim, dstate];
    let out_len = checked_product("x", &out_shape)?;
    let state_len = checked_product("initial_states", &state_shape)?;
    // Allocated on the calling thread: pages first touched by several pool threads at once
    // measured slower (page-fault contention), most of a millisecond on a 6 MB output.
    let mut out = vec![T::ZERO; out_len];
    let mut last = vec![T::ZERO; state_len];
    run_detached(py, || {
        if options.sequential {
            ssd_scan_sequential(dims, inputs, &mut out, &mut last)
        } else {
            ssd_scan(dims, inputs, &mut out, &mut last)
        }
    })?;
    Ok((
        to_numpy(py, &out_shape, out)?,
        to_numpy(py, &state_shape, last)?,
    ))
}

fn conv_generic<'py, T: Real + Element>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, T>,
    weight: PyReadonlyArrayDyn<'py, T>,
    bias: Option<PyReadonlyArrayDyn<'py, T>>,
    silu: bool,
    initial_states: Option<PyReadonlyArrayDyn<'py, T>>,
    channels_last: bool,
) -> PyResult<Pair<'py, T>> {
    let [batch, dim, len] = if channels_last {
        let [batch, len, dim] = dims_of::<3>("x", x.shape(), "(batch, L, dim)")?;
        [batch, dim, len]
    } else {
        dims_of::<3>("x", x.shape(), "(batch, dim, L)")?
    };
    let [_, width] = dims_of::<2>("weight", weight.shape(), "(dim, width)")?;
    if width == 0 {
        return Err(PyValueError::new_err("weight: expected width >= 1, got 0"));
    }
    let dims = ConvDims {
        batch,
        dim,
        len,
        width,
        silu,
    };
    let inputs = ConvInputs {
        x: as_slice("x", &x)?,
        weight: as_slice("weight", &weight)?,
        bias: as_opt_slice("bias", &bias)?,
        initial_states: as_opt_slice("initial_states", &initial_states)?,
    };
    let out_shape = if channels_last {
        [batch, len, dim]
    } else {
        [batch, dim, len]
    };
    let state_shape = [batch, dim, width - 1];
    let out_len = checked_product("x", &out_shape)?;
    let state_len = checked_product("initial_states", &state_shape)?;
    // Allocated on the calling thread (see ssd_generic).
    let mut out = vec![T::ZERO; out_len];
    let mut last = vec![T::ZERO; state_len];
    run_detached(py, || {
        if channels_last {
            causal_conv1d_channels_last(dims, inputs, &mut out, &mut last)
        } else {
            conv1d::causal_conv1d(dims, inputs, &mut out, &mut last)
        }
    })?;
    Ok((
        to_numpy(py, &out_shape, out)?,
        to_numpy(py, &state_shape, last)?,
    ))
}

fn conv_update_generic<'py, T: Real + Element>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, T>,
    mut conv_state: PyReadwriteArrayDyn<'py, T>,
    weight: PyReadonlyArrayDyn<'py, T>,
    bias: Option<PyReadonlyArrayDyn<'py, T>>,
    silu: bool,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let [batch, dim, len] = dims_of::<3>("x", x.shape(), "(batch, dim, L)")?;
    let [_, _, state_len] = dims_of::<3>("conv_state", conv_state.shape(), "(batch, dim, S)")?;
    let [_, width] = dims_of::<2>("weight", weight.shape(), "(dim, width)")?;
    let dims = conv1d::UpdateDims {
        batch,
        dim,
        len,
        width,
        state_len,
        silu,
    };
    let x = as_slice("x", &x)?;
    let weight = as_slice("weight", &weight)?;
    let bias = as_opt_slice("bias", &bias)?;
    let out_shape = [batch, dim, len];
    let out_len = checked_product("x", &out_shape)?;
    let state = as_mut_slice("conv_state", &mut conv_state)?;
    let kernel = || {
        let mut out = vec![T::ZERO; out_len];
        conv1d::causal_conv1d_update(dims, x, weight, bias, state, &mut out)?;
        Ok(out)
    };
    let out = if conv1d::update_is_single_task(&dims) {
        run_detached_on_caller(py, kernel)?
    } else {
        run_detached(py, kernel)?
    };
    to_numpy(py, &out_shape, out)
}

/// The layer parameters of one Mamba-2 decode step (see `mamba2_step`).
struct StepParams<'py, T: Element> {
    conv_weight: PyReadonlyArrayDyn<'py, T>,
    conv_bias: Option<PyReadonlyArrayDyn<'py, T>>,
    dt_bias: PyReadonlyArrayDyn<'py, T>,
    a: PyReadonlyArrayDyn<'py, T>,
    d: PyReadonlyArrayDyn<'py, T>,
    norm_weight: PyReadonlyArrayDyn<'py, T>,
}

#[allow(clippy::too_many_arguments)]
fn step_generic<'py, T: Real + Element>(
    py: Python<'py>,
    zxbcdt: PyReadonlyArrayDyn<'py, T>,
    mut conv_state: PyReadwriteArrayDyn<'py, T>,
    mut ssm_state: PyReadwriteArrayDyn<'py, T>,
    params: StepParams<'py, T>,
    groups: usize,
    eps: T,
    dt_limit: (T, T),
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let [batch, heads, headdim, dstate] = dims_of::<4>(
        "ssm_state",
        ssm_state.shape(),
        "(batch, nheads, headdim, dstate)",
    )?;
    let [_, width] = dims_of::<2>("conv_weight", params.conv_weight.shape(), "(dim, width)")?;
    let dims = Mamba2StepDims {
        batch,
        heads,
        headdim,
        dstate,
        groups,
        width,
    };
    let inputs = Mamba2StepInputs {
        zxbcdt: as_slice("zxbcdt", &zxbcdt)?,
        conv_weight: as_slice("conv_weight", &params.conv_weight)?,
        conv_bias: as_opt_slice("conv_bias", &params.conv_bias)?,
        dt_bias: as_slice("dt_bias", &params.dt_bias)?,
        a: as_slice("A", &params.a)?,
        d: as_slice("D", &params.d)?,
        norm_weight: as_slice("norm_weight", &params.norm_weight)?,
        eps,
        dt_limit,
    };
    let out_shape = [batch, heads * headdim];
    let out_len = checked_product("out", &out_shape)?;
    let conv_state = as_mut_slice("conv_state", &mut conv_state)?;
    let ssm_state = as_mut_slice("ssm_state", &mut ssm_state)?;
    let out = run_detached_on_caller(py, || {
        let mut out = vec![T::ZERO; out_len];
        mamba2_step(dims, inputs, conv_state, ssm_state, &mut out)?;
        Ok(out)
    })?;
    to_numpy(py, &out_shape, out)
}

macro_rules! step_entry_point {
    ($t:ty, $step:ident) => {
        /// Mamba-2's decode step after the input projection for one dtype: conv update,
        /// state update with the gate, grouped RMS norm; both states are updated in place.
        #[pyfunction]
        #[pyo3(signature = (
            zxbcdt, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, a, d, norm_weight,
            groups, eps, dt_min, dt_max
        ))]
        #[allow(clippy::too_many_arguments)]
        fn $step<'py>(
            py: Python<'py>,
            zxbcdt: PyReadonlyArrayDyn<'py, $t>,
            conv_state: PyReadwriteArrayDyn<'py, $t>,
            ssm_state: PyReadwriteArrayDyn<'py, $t>,
            conv_weight: PyReadonlyArrayDyn<'py, $t>,
            conv_bias: Option<PyReadonlyArrayDyn<'py, $t>>,
            dt_bias: PyReadonlyArrayDyn<'py, $t>,
            a: PyReadonlyArrayDyn<'py, $t>,
            d: PyReadonlyArrayDyn<'py, $t>,
            norm_weight: PyReadonlyArrayDyn<'py, $t>,
            groups: usize,
            eps: $t,
            dt_min: $t,
            dt_max: $t,
        ) -> PyResult<Bound<'py, PyArrayDyn<$t>>> {
            let params = StepParams {
                conv_weight,
                conv_bias,
                dt_bias,
                a,
                d,
                norm_weight,
            };
            step_generic(py, zxbcdt, conv_state, ssm_state, params, groups, eps, (dt_min, dt_max))
        }
    };
}

macro_rules! norm_entry_point {
    ($t:ty, $norm:ident) => {
        /// Mamba-2's gated norm of a prompt for one dtype, in place: each row of `y`
        /// (..., width) scaled by 1 / sqrt(mean(y^2) + eps) per group of width / groups
        /// channels, times `weight`.
        #[pyfunction]
        #[pyo3(signature = (y, weight, groups, eps))]
        fn $norm<'py>(
            py: Python<'py>,
            mut y: PyReadwriteArrayDyn<'py, $t>,
            weight: PyReadonlyArrayDyn<'py, $t>,
            groups: usize,
            eps: $t,
        ) -> PyResult<()> {
            let weight = as_slice("weight", &weight)?;
            let y = as_mut_slice("y", &mut y)?;
            run_detached_on_caller(py, || grouped_rms_norm(y, weight, groups, eps))
        }
    };
}

norm_entry_point!(f32, grouped_rms_norm_f32);
norm_entry_point!(f64, grouped_rms_norm_f64);

step_entry_point!(f32, mamba2_step_f32);
step_entry_point!(f64, mamba2_step_f64);

macro_rules! typed_entry_points {
    ($t:ty, $ssd:ident, $conv:ident, $update:ident) => {
        /// SSD scan for one dtype (the checks live in `seqkern.mamba`); `sequential` runs the
        /// step-by-step recurrence instead of the chunked algorithm.
        #[pyfunction]
        #[pyo3(signature = (
                    x, dt, a, b, c, chunk_size, d, z, dt_bias, initial_states, dt_softplus, dt_min,
                    dt_max, sequential
                ))]
        #[allow(clippy::too_many_arguments)]
        fn $ssd<'py>(
            py: Python<'py>,
            x: PyReadonlyArrayDyn<'py, $t>,
            dt: PyReadonlyArrayDyn<'py, $t>,
            a: PyReadonlyArrayDyn<'py, $t>,
            b: PyReadonlyArrayDyn<'py, $t>,
            c: PyReadonlyArrayDyn<'py, $t>,
            chunk_size: usize,
            d: Option<PyReadonlyArrayDyn<'py, $t>>,
            z: Option<PyReadonlyArrayDyn<'py, $t>>,
            dt_bias: Option<PyReadonlyArrayDyn<'py, $t>>,
            initial_states: Option<PyReadonlyArrayDyn<'py, $t>>,
            dt_softplus: bool,
            dt_min: $t,
            dt_max: $t,
            sequential: bool,
        ) -> PyResult<Pair<'py, $t>> {
            let options = SsdOptions {
                chunk_size,
                dt_softplus,
                dt_limit: (dt_min, dt_max),
                sequential,
            };
            ssd_generic(py, x, dt, a, b, c, d, z, dt_bias, initial_states, options)
        }

        /// Causal depthwise conv1d for one dtype; x is (batch, dim, L), or (batch, L, dim)
        /// with `channels_last` (the output then has x's layout too).
        #[pyfunction]
        #[pyo3(signature = (x, weight, bias, silu, initial_states, channels_last = false))]
        fn $conv<'py>(
            py: Python<'py>,
            x: PyReadonlyArrayDyn<'py, $t>,
            weight: PyReadonlyArrayDyn<'py, $t>,
            bias: Option<PyReadonlyArrayDyn<'py, $t>>,
            silu: bool,
            initial_states: Option<PyReadonlyArrayDyn<'py, $t>>,
            channels_last: bool,
        ) -> PyResult<Pair<'py, $t>> {
            conv_generic(py, x, weight, bias, silu, initial_states, channels_last)
        }

        /// Conv1d decode step for one dtype; x is (batch, dim, L), conv_state is updated in
        /// place.
        #[pyfunction]
        #[pyo3(signature = (x, conv_state, weight, bias, silu))]
        fn $update<'py>(
            py: Python<'py>,
            x: PyReadonlyArrayDyn<'py, $t>,
            conv_state: PyReadwriteArrayDyn<'py, $t>,
            weight: PyReadonlyArrayDyn<'py, $t>,
            bias: Option<PyReadonlyArrayDyn<'py, $t>>,
            silu: bool,
        ) -> PyResult<Bound<'py, PyArrayDyn<$t>>> {
            conv_update_generic(py, x, conv_state, weight, bias, silu)
        }
    };
}

typed_entry_points!(
    f32,
    ssd_scan_f32,
    causal_conv1d_f32,
    causal_conv1d_update_f32
);
typed_entry_points!(
    f64,
    ssd_scan_f64,
    causal_conv1d_f64,
    causal_conv1d_update_f64
);
