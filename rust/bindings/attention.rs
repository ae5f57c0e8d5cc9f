//! Bindings of causal attention.

use super::{as_slice, dims_of, run_detached, to_numpy};
use crate::attention::{causal_attention, AttentionDims};
use crate::error::checked_product;
use crate::simd::Real;
use numpy::{Element, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(causal_attention_f32, m)?)?;
    m.add_function(wrap_pyfunction!(causal_attention_f64, m)?)?;
    Ok(())
}

fn attention_generic<'py, T: Real + Element>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, T>,
    k: PyReadonlyArrayDyn<'py, T>,
    v: PyReadonlyArrayDyn<'py, T>,
    scale: f64,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let [batch, heads, len, dim_qk] = dims_of::<4>("q", q.shape(), "(batch, heads, L, D)")?;
    let [.., dim_v] = dims_of::<4>("v", v.shape(), "(batch, heads, L, D)")?;
    let dims = AttentionDims {
        batch,
        heads,
        len,
        dim_qk,
        dim_v,
    };
    let (q, k, v) = (as_slice("q", &q)?, as_slice("k", &k)?, as_slice("v", &v)?);
    let out_len = checked_product("v", &[batch, heads, len, dim_v])?;
    let out = run_detached(py, || {
        let mut out = vec![T::ZERO; out_len];
        causal_attention(dims, q, k, v, T::from_f64(scale), &mut out)?;
        Ok(out)
    })?;
    to_numpy(py, &[batch, heads, len, dim_v], out)
}

macro_rules! typed_entry_point {
    ($t:ty, $name:ident) => {
        /// Causal attention for one dtype (the checks live in `seqkern.attention`).
        #[pyfunction]
        #[pyo3(signature = (q, k, v, scale))]
        fn $name<'py>(
            py: Python<'py>,
            q: PyReadonlyArrayDyn<'py, $t>,
            k: PyReadonlyArrayDyn<'py, $t>,
            v: PyReadonlyArrayDyn<'py, $t>,
            scale: f64,
        ) -> PyResult<Bound<'py, PyArrayDyn<$t>>> {
            attention_generic(py, q, k, v, scale)
        }
    };
}

typed_entry_point!(f32, causal_attention_f32);
typed_entry_point!(f64, causal_attention_f64);
