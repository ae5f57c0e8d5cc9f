//! Bindings of the RWKV WKV kernels.

use super::{as_opt_slice, as_slice, dims_of, run_detached_on_caller, to_numpy, AlignedOutput};
use crate::error::checked_product;
use crate::rwkv::rwkv7_output::{rwkv7_output, Rwkv7OutputInputs};
use crate::rwkv::wkv4::{wkv4_into, Wkv4Dims, Wkv4Inputs};
use crate::rwkv::wkv6::{wkv6, LogDecay, Wkv6Inputs};
use crate::rwkv::wkv7::{wkv7, Wkv7Inputs};
use crate::rwkv::HeadDims;
use crate::simd::Real;
use numpy::{Element, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(wkv4_f32, m)?)?;
    m.add_function(wrap_pyfunction!(wkv4_f64, m)?)?;
    m.add_function(wrap_pyfunction!(wkv5_f32, m)?)?;
    m.add_function(wrap_pyfunction!(wkv5_f64, m)?)?;
    m.add_function(wrap_pyfunction!(wkv6_f32, m)?)?;
    m.add_function(wrap_pyfunction!(wkv6_f64, m)?)?;
    m.add_function(wrap_pyfunction!(wkv7_f32, m)?)?;
    m.add_function(wrap_pyfunction!(wkv7_f64, m)?)?;
    m.add_function(wrap_pyfunction!(rwkv7_output_f32, m)?)?;
    m.add_function(wrap_pyfunction!(rwkv7_output_f64, m)?)?;
    Ok(())
}

type Array<'py, T> = PyReadonlyArrayDyn<'py, T>;
type Output<'py, T> = (Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>);

/// `(B, T, H, N)` from the shape of r.
fn head_dims(r: &Array<'_, impl Element>) -> PyResult<HeadDims> {
    let [batch, len, heads, head_size] = dims_of::<4>("r", r.shape(), "(B, T, H, N)")?;
    Ok(HeadDims {
        batch,
        len,
        heads,
        head_size,
    })
}

/// Allocates y and the state, runs `kernel` on them with the GIL released and returns both as
/// NumPy arrays of `y_shape` and `state_shape`.
fn run_with_outputs<'py, T, F>(
    py: Python<'py>,
    y_shape: &[usize],
    state_shape: &[usize],
    kernel: F,
) -> PyResult<Output<'py, T>>
where
    T: Real + Element,
    F: FnOnce(&mut [T], &mut [T]) -> Result<(), crate::KernelError> + Send,
{
    let y_len = checked_product("y", y_shape)?;
    let state_len = checked_product("state", state_shape)?;
    // On the calling thread: the kernels enter the pool themselves when the call is large.
    let (y, state) = run_detached_on_caller(py, || {
        let mut y = vec![T::ZERO; y_len];
        let mut state = vec![T::ZERO; state_len];
        kernel(&mut y, &mut state)?;
        Ok((y, state))
    })?;
    Ok((to_numpy(py, y_shape, y)?, to_numpy(py, state_shape, state)?))
}

fn wkv4_generic<'py, T: Real + Element>(
    py: Python<'py>,
    w: Array<'py, T>,
    u: Array<'py, T>,
    k: Array<'py, T>,
    v: Array<'py, T>,
    state: Option<Array<'py, T>>,
) -> PyResult<Output<'py, T>> {
    let [batch, len, channels] = dims_of::<3>("k", k.shape(), "(B, T, C)")?;
    let dims = Wkv4Dims {
        batch,
        len,
        channels,
    };
    let inputs = Wkv4Inputs {
        w: as_slice("w", &w)?,
        u: as_slice("u", &u)?,
        k: as_slice("k", &k)?,
        v: as_slice("v", &v)?,
        state: as_opt_slice("state", &state)?,
    };
    let y_len = checked_product("y", k.shape())?;
    let state_len = checked_product("state", &[batch, 3, channels])?;
    // On the calling thread: wkv4_into enters the pool itself when the call is large.
    let (y, state) = run_detached_on_caller(py, || {
        // Not zeroed: wkv4_into writes every element of y before it returns Ok.
        let mut y = AlignedOutput::new(y_len);
        let mut state = vec![T::ZERO; state_len];
        wkv4_into(dims, inputs, y.uninit_mut(), &mut state)?;
        Ok((y, state))
    })?;
    Ok((
        // SAFETY: wkv4_into returned Ok, so it wrote all of y.
        unsafe { y.finish(py, k.shape()) }?,
        to_numpy(py, &[batch, 3, channels], state)?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn wkv6_generic<'py, T: Real + Element>(
    py: Python<'py>,
    r: Array<'py, T>,
    k: Array<'py, T>,
    v: Array<'py, T>,
    w: Array<'py, T>,
    u: Array<'py, T>,
    state: Option<Array<'py, T>>,
    scale: f64,
    per_token_decay: bool,
) -> PyResult<Output<'py, T>> {
    let dims = head_dims(&r)?;
    let w = as_slice("w", &w)?;
    let inputs = Wkv6Inputs {
        r: as_slice("r", &r)?,
        k: as_slice("k", &k)?,
        v: as_slice("v", &v)?,
        w: if per_token_decay {
            LogDecay::PerToken(w)
        } else {
            LogDecay::PerHead(w)
        },
        u: as_slice("u", &u)?,
        state: as_opt_slice("state", &state)?,
        scale: T::from_f64(scale),
    };
    run_with_outputs(py, &dims.tokens(), &dims.state(), |y, s| {
        wkv6(dims, inputs, y, s)
    })
}

#[allow(clippy::too_many_arguments)]
fn wkv7_generic<'py, T: Real + Element>(
    py: Python<'py>,
    r: Array<'py, T>,
    w: Array<'py, T>,
    k: Array<'py, T>,
    v: Array<'py, T>,
    a: Array<'py, T>,
    b: Array<'py, T>,
    state: Option<Array<'py, T>>,
    scale: f64,
) -> PyResult<Output<'py, T>> {
    let dims = head_dims(&r)?;
    let inputs = Wkv7Inputs {
        r: as_slice("r", &r)?,
        w: as_slice("w", &w)?,
        k: as_slice("k", &k)?,
        v: as_slice("v", &v)?,
        a: as_slice("a", &a)?,
        b: as_slice("b", &b)?,
        state: as_opt_slice("state", &state)?,
        scale: T::from_f64(scale),
    };
    run_with_outputs(py, &dims.tokens(), &dims.state(), |y, s| {
        wkv7(dims, inputs, y, s)
    })
}

macro_rules! typed_entry_points {
    ($t:ty, $wkv4:ident, $wkv5:ident, $wkv6:ident, $wkv7:ident) => {
        /// RWKV-4 WKV for one dtype (the checks live in `seqkern.rwkv`).
        #[pyfunction]
        #[pyo3(signature = (w, u, k, v, state))]
        fn $wkv4<'py>(
            py: Python<'py>,
            w: Array<'py, $t>,
            u: Array<'py, $t>,
            k: Array<'py, $t>,
            v: Array<'py, $t>,
            state: Option<Array<'py, $t>>,
        ) -> PyResult<Output<'py, $t>> {
            wkv4_generic(py, w, u, k, v, state)
        }

        /// RWKV-5 WKV (log-decay w of shape (H, N)) for one dtype.
        #[pyfunction]
        #[pyo3(signature = (r, k, v, w, u, state, scale))]
        #[allow(clippy::too_many_arguments)]
        fn $wkv5<'py>(
            py: Python<'py>,
            r: Array<'py, $t>,
            k: Array<'py, $t>,
            v: Array<'py, $t>,
            w: Array<'py, $t>,
            u: Array<'py, $t>,
            state: Option<Array<'py, $t>>,
            scale: f64,
        ) -> PyResult<Output<'py, $t>> {
            wkv6_generic(py, r, k, v, w, u, state, scale, false)
        }

        /// RWKV-6 WKV (log-decay w of shape (B, T, H, N)) for one dtype.
        #[pyfunction]
        #[pyo3(signature = (r, k, v, w, u, state, scale))]
        #[allow(clippy::too_many_arguments)]
        fn $wkv6<'py>(
            py: Python<'py>,
            r: Array<'py, $t>,
            k: Array<'py, $t>,
            v: Array<'py, $t>,
            w: Array<'py, $t>,
            u: Array<'py, $t>,
            state: Option<Array<'py, $t>>,
            scale: f64,
        ) -> PyResult<Output<'py, $t>> {
            wkv6_generic(py, r, k, v, w, u, state, scale, true)
        }

        /// RWKV-7 WKV for one dtype.
        #[pyfunction]
        #[pyo3(signature = (r, w, k, v, a, b, state, scale))]
        #[allow(clippy::too_many_arguments)]
        fn $wkv7<'py>(
            py: Python<'py>,
            r: Array<'py, $t>,
            w: Array<'py, $t>,
            k: Array<'py, $t>,
            v: Array<'py, $t>,
            a: Array<'py, $t>,
            b: Array<'py, $t>,
            state: Option<Array<'py, $t>>,
            scale: f64,
        ) -> PyResult<Output<'py, $t>> {
            wkv7_generic(py, r, w, k, v, a, b, state, scale)
        }
    };
}

typed_entry_points!(f32, wkv4_f32, wkv5_f32, wkv6_f32, wkv7_f32);
typed_entry_points!(f64, wkv4_f64, wkv5_f64, wkv6_f64, wkv7_f64);

#[allow(clippy::too_many_arguments)]
fn rwkv7_output_generic<'py, T: Real + Element>(
    py: Python<'py>,
    y: Array<'py, T>,
    r: Array<'py, T>,
    k: Array<'py, T>,
    v: Array<'py, T>,
    g: Array<'py, T>,
    r_k: Array<'py, T>,
    ln_w: Array<'py, T>,
    ln_b: Array<'py, T>,
    eps: f64,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let dims = head_dims(&y)?;
    let inputs = Rwkv7OutputInputs {
        y: as_slice("y", &y)?,
        r: as_slice("r", &r)?,
        k: as_slice("k", &k)?,
        v: as_slice("v", &v)?,
        g: as_slice("g", &g)?,
        r_k: as_slice("r_k", &r_k)?,
        ln_w: as_slice("ln_x weight", &ln_w)?,
        ln_b: as_slice("ln_x bias", &ln_b)?,
        eps: T::from_f64(eps),
    };
    let shape = [dims.batch, dims.len, dims.heads * dims.head_size];
    let len = checked_product("out", &shape)?;
    let out = run_detached_on_caller(py, || {
        let mut out = vec![T::ZERO; len];
        rwkv7_output(dims.heads, dims.head_size, inputs, &mut out)?;
        Ok(out)
    })?;
    to_numpy(py, &shape, out)
}

macro_rules! output_entry_point {
    ($t:ty, $name:ident) => {
        /// RWKV-7's time-mix output after wkv7 for one dtype: ln_x group norm, r_k bonus,
        /// gate; y, r, k, v are (B, T, H, N), g is (B, T, H N); returns (B, T, H N).
        #[pyfunction]
        #[pyo3(signature = (y, r, k, v, g, r_k, ln_w, ln_b, eps))]
        #[allow(clippy::too_many_arguments)]
        fn $name<'py>(
            py: Python<'py>,
            y: Array<'py, $t>,
            r: Array<'py, $t>,
            k: Array<'py, $t>,
            v: Array<'py, $t>,
            g: Array<'py, $t>,
            r_k: Array<'py, $t>,
            ln_w: Array<'py, $t>,
            ln_b: Array<'py, $t>,
            eps: f64,
        ) -> PyResult<Bound<'py, PyArrayDyn<$t>>> {
            rwkv7_output_generic(py, y, r, k, v, g, r_k, ln_w, ln_b, eps)
        }
    };
}

output_entry_point!(f32, rwkv7_output_f32);
output_entry_point!(f64, rwkv7_output_f64);
