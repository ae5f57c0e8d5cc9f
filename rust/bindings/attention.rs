//! Bindings of causal attention. Keys and values may be strided views (a preallocated cache
//! sliced along L): they are read in place, through their strides.

use super::{as_slice, dims_of, run_detached, to_numpy};
use crate::attention::{causal_attention, AttentionDims, KvView};
use crate::error::checked_product;
use crate::simd::Real;
use numpy::{Element, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(causal_attention_f32, m)?)?;
    m.add_function(wrap_pyfunction!(causal_attention_f64, m)?)?;
    Ok(())
}

/// `array` (4-D, non-negative strides, unit stride along its last axis) as a [`KvView`] over
/// the memory it spans, without copying.
fn kv_view<'a, T: Element>(
    name: &str,
    array: &'a PyReadonlyArrayDyn<'_, T>,
) -> PyResult<KvView<'a, T>> {
    let view = array.as_array();
    let shape = view.shape();
    let strides = view.strides();
    let bad = |why: &str| {
        PyValueError::new_err(format!(
            "{name}: {why}, got shape {shape:?} with element strides {strides:?}"
        ))
    };
    if shape.contains(&0) {
        return Ok(KvView {
            data: &[],
            batch_stride: 0,
            head_stride: 0,
            row_stride: 0,
        });
    }
    if strides.iter().any(|&s| s < 0) {
        return Err(bad("expected non-negative strides"));
    }
    if shape[3] > 1 && strides[3] != 1 {
        return Err(bad("expected a unit stride along the last axis"));
    }
    let [batch_stride, head_stride, row_stride] = [0, 1, 2].map(|a| strides[a] as usize);
    let span = (0..3)
        .try_fold(shape[3], |acc, a| {
            (shape[a] - 1)
                .checked_mul(strides[a] as usize)
                .and_then(|x| x.checked_add(acc))
        })
        .ok_or_else(|| bad("strides overflow"))?;
    // SAFETY: NumPy guarantees that every element the shape and (non-negative) strides reach
    // lies in the array's buffer; the span runs from the first element to the last one, so it
    // lies in the buffer too. The readonly borrow keeps it alive for 'a.
    let data = unsafe { std::slice::from_raw_parts(view.as_ptr(), span) };
    Ok(KvView {
        data,
        batch_stride,
        head_stride,
        row_stride,
    })
}

fn attention_generic<'py, T: Real + Element>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, T>,
    k: PyReadonlyArrayDyn<'py, T>,
    v: PyReadonlyArrayDyn<'py, T>,
    scale: f64,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let form = "(batch, heads, L, D)";
    let [batch, heads, len_q, dim_qk] = dims_of::<4>("q", q.shape(), form)?;
    let [kb, kv_heads, len_k, kd] = dims_of::<4>("k", k.shape(), form)?;
    let [vb, vh, vl, dim_v] = dims_of::<4>("v", v.shape(), form)?;
    if (kb, kd) != (batch, dim_qk) || (vb, vh, vl) != (batch, kv_heads, len_k) {
        return Err(PyValueError::new_err(format!(
            "k, v: expected shapes ({batch}, Hkv, Lk, {dim_qk}) and ({batch}, Hkv, Lk, Dv), \
             got {:?} and {:?}",
            k.shape(),
            v.shape()
        )));
    }
    let dims = AttentionDims {
        batch,
        heads,
        kv_heads,
        len_q,
        len_k,
        dim_qk,
        dim_v,
    };
    let q = as_slice("q", &q)?;
    let (k, v) = (kv_view("k", &k)?, kv_view("v", &v)?);
    let out_len = checked_product("v", &[batch, heads, len_q, dim_v])?;
    let out = run_detached(py, || {
        let mut out = vec![T::ZERO; out_len];
        causal_attention(dims, q, k, v, T::from_f64(scale), &mut out)?;
        Ok(out)
    })?;
    to_numpy(py, &[batch, heads, len_q, dim_v], out)
}

macro_rules! typed_entry_point {
    ($t:ty, $name:ident) => {
        /// Causal attention for one dtype (the checks live in `seqkern.attention`): `q`
        /// C-contiguous, `k` and `v` read in place through their strides.
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
