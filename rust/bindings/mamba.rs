//! Bindings of the Mamba kernels.

use super::{as_mut_slice, as_opt_slice, as_slice, dims_of, run_detached_on_caller, to_numpy};
use crate::mamba::selective_scan::{selective_scan, BcForm, ScanDims, ScanInputs};
use crate::mamba::state_update::{
    selective_state_update, DecayForm, Granularity, UpdateDims, UpdateInputs,
};
use crate::simd::Real;
use numpy::{Element, PyArrayDyn, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(selective_scan_f32, m)?)?;
    m.add_function(wrap_pyfunction!(selective_scan_f64, m)?)?;
    m.add_function(wrap_pyfunction!(selective_state_update_f32, m)?)?;
    m.add_function(wrap_pyfunction!(selective_state_update_f64, m)?)?;
    Ok(())
}

/// The form of B or C from its shape: 2-D fixed, 3-D one group, 4-D grouped.
fn bc_form(name: &str, shape: &[usize]) -> PyResult<BcForm> {
    match shape.len() {
        2 => Ok(BcForm::Fixed),
        3 => Ok(BcForm::Variable { groups: 1 }),
        4 => Ok(BcForm::Variable { groups: shape[1] }),
        _ => Err(PyValueError::new_err(format!(
            "{name}: expected (dim, dstate), (batch, dstate, L) or (batch, groups, dstate, L), \
             got shape {shape:?}"
        ))),
    }
}

type ScanResult<'py, T> = (Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>);

#[allow(clippy::too_many_arguments)]
fn scan_generic<'py, T: Real + Element>(
    py: Python<'py>,
    u: PyReadonlyArrayDyn<'py, T>,
    delta: PyReadonlyArrayDyn<'py, T>,
    a: PyReadonlyArrayDyn<'py, T>,
    b: PyReadonlyArrayDyn<'py, T>,
    c: PyReadonlyArrayDyn<'py, T>,
    d: Option<PyReadonlyArrayDyn<'py, T>>,
    z: Option<PyReadonlyArrayDyn<'py, T>>,
    delta_bias: Option<PyReadonlyArrayDyn<'py, T>>,
    delta_softplus: bool,
    initial_state: Option<PyReadonlyArrayDyn<'py, T>>,
) -> PyResult<ScanResult<'py, T>> {
    let [batch, dim, len] = dims_of::<3>("u", u.shape(), "(batch, dim, L)")?;
    let [_, dstate] = dims_of::<2>("A", a.shape(), "(dim, dstate)")?;
    let dims = ScanDims {
        batch,
        dim,
        dstate,
        len,
        b_form: bc_form("B", b.shape())?,
        c_form: bc_form("C", c.shape())?,
    };
    let inputs = ScanInputs {
        u: as_slice("u", &u)?,
        delta: as_slice("delta", &delta)?,
        a: as_slice("A", &a)?,
        b: as_slice("B", &b)?,
        c: as_slice("C", &c)?,
        d: as_opt_slice("D", &d)?,
        z: as_opt_slice("z", &z)?,
        delta_bias: as_opt_slice("delta_bias", &delta_bias)?,
        delta_softplus,
        initial_state: as_opt_slice("initial_state", &initial_state)?,
    };
    let out_len = crate::error::checked_product("u", &[batch, dim, len])?;
    let state_len = crate::error::checked_product("A", &[batch, dim, dstate])?;
    let (out, last) = run_detached_on_caller(py, || {
        let mut out = vec![T::ZERO; out_len];
        let mut last = vec![T::ZERO; state_len];
        selective_scan(dims, inputs, &mut out, &mut last)?;
        Ok((out, last))
    })?;
    Ok((
        to_numpy(py, &[batch, dim, len], out)?,
        to_numpy(py, &[batch, dim, dstate], last)?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn update_generic<'py, T: Real + Element>(
    py: Python<'py>,
    mut state: PyReadwriteArrayDyn<'py, T>,
    x: PyReadonlyArrayDyn<'py, T>,
    dt: PyReadonlyArrayDyn<'py, T>,
    a: PyReadonlyArrayDyn<'py, T>,
    b: PyReadonlyArrayDyn<'py, T>,
    c: PyReadonlyArrayDyn<'py, T>,
    d: Option<PyReadonlyArrayDyn<'py, T>>,
    z: Option<PyReadonlyArrayDyn<'py, T>>,
    dt_bias: Option<PyReadonlyArrayDyn<'py, T>>,
    dt_softplus: bool,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let [batch, heads, headdim, dstate] =
        dims_of::<4>("state", state.shape(), "(batch, nheads, headdim, dstate)")?;
    let [_, groups, _] = dims_of::<3>("B", b.shape(), "(batch, groups, dstate)")?;
    let granularity = |ndim: usize, per_head: usize| {
        if ndim == per_head {
            Granularity::PerHead
        } else {
            Granularity::PerHeadDim
        }
    };
    let dims = UpdateDims {
        batch,
        heads,
        headdim,
        dstate,
        groups,
        dt_form: granularity(dt.ndim(), 2),
        d_form: granularity(d.as_ref().map_or(1, |d| d.ndim()), 1),
        bias_form: granularity(dt_bias.as_ref().map_or(1, |d| d.ndim()), 1),
        a_form: if a.ndim() == 1 {
            DecayForm::PerHead
        } else {
            DecayForm::Full
        },
    };
    let inputs = UpdateInputs {
        x: as_slice("x", &x)?,
        dt: as_slice("dt", &dt)?,
        a: as_slice("A", &a)?,
        b: as_slice("B", &b)?,
        c: as_slice("C", &c)?,
        d: as_opt_slice("D", &d)?,
        z: as_opt_slice("z", &z)?,
        dt_bias: as_opt_slice("dt_bias", &dt_bias)?,
        dt_softplus,
    };
    let out_len = crate::error::checked_product("x", &[batch, heads, headdim])?;
    let state = as_mut_slice("state", &mut state)?;
    let out = run_detached_on_caller(py, || {
        let mut out = vec![T::ZERO; out_len];
        selective_state_update(dims, inputs, state, &mut out)?;
        Ok(out)
    })?;
    to_numpy(py, &[batch, heads, headdim], out)
}

macro_rules! typed_entry_points {
    ($t:ty, $scan:ident, $update:ident) => {
        /// Selective scan for one dtype (the checks live in `seqkern.mamba`).
        #[pyfunction]
        #[pyo3(signature = (u, delta, a, b, c, d, z, delta_bias, delta_softplus, initial_state))]
        #[allow(clippy::too_many_arguments)]
        fn $scan<'py>(
            py: Python<'py>,
            u: PyReadonlyArrayDyn<'py, $t>,
            delta: PyReadonlyArrayDyn<'py, $t>,
            a: PyReadonlyArrayDyn<'py, $t>,
            b: PyReadonlyArrayDyn<'py, $t>,
            c: PyReadonlyArrayDyn<'py, $t>,
            d: Option<PyReadonlyArrayDyn<'py, $t>>,
            z: Option<PyReadonlyArrayDyn<'py, $t>>,
            delta_bias: Option<PyReadonlyArrayDyn<'py, $t>>,
            delta_softplus: bool,
            initial_state: Option<PyReadonlyArrayDyn<'py, $t>>,
        ) -> PyResult<ScanResult<'py, $t>> {
            scan_generic(
                py,
                u,
                delta,
                a,
                b,
                c,
                d,
                z,
                delta_bias,
                delta_softplus,
                initial_state,
            )
        }

        /// One decode step for one dtype; `state` is (batch, heads, headdim, dstate).
        #[pyfunction]
        #[pyo3(signature = (state, x, dt, a, b, c, d, z, dt_bias, dt_softplus))]
        #[allow(clippy::too_many_arguments)]
        fn $update<'py>(
            py: Python<'py>,
            state: PyReadwriteArrayDyn<'py, $t>,
            x: PyReadonlyArrayDyn<'py, $t>,
            dt: PyReadonlyArrayDyn<'py, $t>,
            a: PyReadonlyArrayDyn<'py, $t>,
            b: PyReadonlyArrayDyn<'py, $t>,
            c: PyReadonlyArrayDyn<'py, $t>,
            d: Option<PyReadonlyArrayDyn<'py, $t>>,
            z: Option<PyReadonlyArrayDyn<'py, $t>>,
            dt_bias: Option<PyReadonlyArrayDyn<'py, $t>>,
            dt_softplus: bool,
        ) -> PyResult<Bound<'py, PyArrayDyn<$t>>> {
            update_generic(py, state, x, dt, a, b, c, d, z, dt_bias, dt_softplus)
        }
    };
}

typed_entry_points!(f32, selective_scan_f32, selective_state_update_f32);
typed_entry_points!(f64, selective_scan_f64, selective_state_update_f64);
