//! Bindings of the ternary (BitNet b1.58) kernels. Packed weights travel as a uint8 array of
//! shape `(N, row_bytes)` plus `k` and the format name; `seqkern.ternary.TernaryWeight` keeps
//! them together.

use super::{as_opt_slice, as_slice, dims_of, run_detached, to_numpy};
use crate::error::checked_product;
use crate::ternary::int8::{self, Int8Float};
use crate::ternary::kernels::KernelPath;
use crate::ternary::matmul;
use crate::ternary::pack::{self, Format, Layout, PackedMatrix};
use crate::ternary::quantize::{self, QuantFloat};
use numpy::{Element, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ternary_row_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_kernel_path, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_pack, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_unpack, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_validate, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_matmul_int, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_quantize_weights_f32, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_quantize_weights_f64, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_quantize_activations_f32, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_quantize_activations_f64, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_bitlinear_f32, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_bitlinear_f64, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_bitlinear_many_f32, m)?)?;
    m.add_function(wrap_pyfunction!(ternary_bitlinear_many_f64, m)?)?;
    m.add_function(wrap_pyfunction!(int8_quantize_rows_f32, m)?)?;
    m.add_function(wrap_pyfunction!(int8_quantize_rows_f64, m)?)?;
    m.add_function(wrap_pyfunction!(int8_matmul_f32, m)?)?;
    m.add_function(wrap_pyfunction!(int8_matmul_f64, m)?)?;
    m.add_function(wrap_pyfunction!(int8_matmul_quantized_f32, m)?)?;
    m.add_function(wrap_pyfunction!(int8_matmul_quantized_f64, m)?)?;
    Ok(())
}

/// The packed matrix of `packed` (`(N, row_bytes)`) with rows of `k` weights.
fn packed_matrix<'a>(
    packed: &'a PyReadonlyArrayDyn<'_, u8>,
    k: usize,
    format: &str,
) -> PyResult<PackedMatrix<'a>> {
    let [n, _] = dims_of::<2>("packed", packed.shape(), "2 dimensions")?;
    Ok(PackedMatrix::new(
        as_slice("packed", packed)?,
        n,
        k,
        Format::from_name(format)?,
    )?)
}

/// Bytes of one packed row of `k` weights in `format`.
#[pyfunction]
fn ternary_row_bytes(k: usize, format: &str) -> PyResult<usize> {
    Ok(Layout::new(Format::from_name(format)?, k).row_bytes())
}

/// The kernel the current SIMD setting runs: "avx512_vnni", "avx2", "neon_dotprod" or "scalar".
#[pyfunction]
fn ternary_kernel_path() -> &'static str {
    KernelPath::current().name()
}

/// Packs ternary `codes` (int8 `(N, K)`, values in {-1, 0, 1}) into `format`.
#[pyfunction]
fn ternary_pack<'py>(
    py: Python<'py>,
    codes: PyReadonlyArrayDyn<'py, i8>,
    format: &str,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let [n, k] = dims_of::<2>("codes", codes.shape(), "2 dimensions")?;
    let format = Format::from_name(format)?;
    let trits = as_slice("codes", &codes)?;
    let packed = run_detached(py, || pack::pack(trits, n, k, format))?;
    to_numpy(py, &[n, Layout::new(format, k).row_bytes()], packed)
}

/// The ternary values (int8 `(N, K)`) of a packed matrix.
#[pyfunction]
fn ternary_unpack<'py>(
    py: Python<'py>,
    packed: PyReadonlyArrayDyn<'py, u8>,
    k: usize,
    format: &str,
) -> PyResult<Bound<'py, PyArrayDyn<i8>>> {
    let matrix = packed_matrix(&packed, k, format)?;
    let trits = run_detached(py, || Ok(pack::unpack(&matrix)))?;
    to_numpy(py, &[matrix.n, k], trits)
}

/// Raises `ValueError` unless every byte of `packed` is a valid encoding.
#[pyfunction]
fn ternary_validate(
    py: Python<'_>,
    packed: PyReadonlyArrayDyn<'_, u8>,
    k: usize,
    format: &str,
) -> PyResult<()> {
    let matrix = packed_matrix(&packed, k, format)?;
    run_detached(py, || pack::validate(&matrix))
}

/// The exact int32 product `q @ t.T` of int8 `q` (`(M, K)`) and a packed matrix.
#[pyfunction]
fn ternary_matmul_int<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, i8>,
    packed: PyReadonlyArrayDyn<'py, u8>,
    k: usize,
    format: &str,
) -> PyResult<Bound<'py, PyArrayDyn<i32>>> {
    let [m, _] = dims_of::<2>("q", q.shape(), "2 dimensions")?;
    let matrix = packed_matrix(&packed, k, format)?;
    let q = as_slice("q", &q)?;
    let len = checked_product("q", &[m, matrix.n])?;
    let out = run_detached(py, || {
        let mut out = vec![0i32; len];
        matmul::ternary_matmul_int(q, m, &matrix, &mut out)?;
        Ok(out)
    })?;
    to_numpy(py, &[m, matrix.n], out)
}

fn quantize_weights_generic<'py, T: QuantFloat + Element>(
    py: Python<'py>,
    w: PyReadonlyArrayDyn<'py, T>,
    eps: f64,
    format: &str,
) -> PyResult<(Bound<'py, PyArrayDyn<u8>>, f64)> {
    let [n, k] = dims_of::<2>("W", w.shape(), "2 dimensions")?;
    let format = Format::from_name(format)?;
    let w = as_slice("W", &w)?;
    let (packed, gamma) = run_detached(py, || {
        let (trits, gamma) = quantize::quantize_weights(w, n, k, T::from_f64(eps))?;
        Ok((pack::pack(&trits, n, k, format)?, gamma))
    })?;
    let packed = to_numpy(py, &[n, Layout::new(format, k).row_bytes()], packed)?;
    Ok((packed, gamma.to_f64()))
}

type Quantized<'py, T> = (Bound<'py, PyArrayDyn<i8>>, Bound<'py, PyArrayDyn<T>>);

fn quantize_activations_generic<'py, T: QuantFloat + Element>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, T>,
    eps: f64,
) -> PyResult<Quantized<'py, T>> {
    let [m, k] = dims_of::<2>("x", x.shape(), "2 dimensions")?;
    let x = as_slice("x", &x)?;
    let len = checked_product("x", &[m, k])?;
    let (q, scales) = run_detached(py, || {
        let mut q = vec![0i8; len];
        let mut scales = vec![T::ZERO; m];
        quantize::quantize_activations(x, m, k, T::from_f64(eps), &mut q, &mut scales)?;
        Ok((q, scales))
    })?;
    Ok((to_numpy(py, &[m, k], q)?, to_numpy(py, &[m], scales)?))
}

fn bitlinear_generic<'py, T: QuantFloat + Element>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, T>,
    packed: PyReadonlyArrayDyn<'py, u8>,
    k: usize,
    format: &str,
    gamma: f64,
    bias: Option<PyReadonlyArrayDyn<'py, T>>,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let [m, _] = dims_of::<2>("x", x.shape(), "2 dimensions")?;
    let matrix = packed_matrix(&packed, k, format)?;
    let x = as_slice("x", &x)?;
    let bias = as_opt_slice("bias", &bias)?;
    let len = checked_product("x", &[m, matrix.n])?;
    let out = run_detached(py, || {
        let mut out = vec![T::ZERO; len];
        matmul::bitlinear(x, m, &matrix, gamma, bias, &mut out)?;
        Ok(out)
    })?;
    to_numpy(py, &[m, matrix.n], out)
}

type Arrays<'py, T> = Vec<Bound<'py, PyArrayDyn<T>>>;

#[allow(clippy::too_many_arguments)]
fn bitlinear_many_generic<'py, T: QuantFloat + Element>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, T>,
    packed: Vec<PyReadonlyArrayDyn<'py, u8>>,
    k: usize,
    format: &str,
    gammas: Vec<f64>,
    biases: Vec<Option<PyReadonlyArrayDyn<'py, T>>>,
    norm: Option<PyReadonlyArrayDyn<'py, T>>,
    eps: f64,
) -> PyResult<Arrays<'py, T>> {
    let [m, _] = dims_of::<2>("x", x.shape(), "2 dimensions")?;
    let norm = as_opt_slice("norm", &norm)?.map(|weight| matmul::RmsNorm { weight, eps });
    if gammas.len() != packed.len() || biases.len() != packed.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "packed, gammas, biases: expected lists of one length, got {}, {}, {}",
            packed.len(),
            gammas.len(),
            biases.len()
        )));
    }
    let matrices = packed
        .iter()
        .map(|p| packed_matrix(p, k, format))
        .collect::<PyResult<Vec<_>>>()?;
    let bias_slices = biases
        .iter()
        .map(|b| as_opt_slice("bias", b))
        .collect::<PyResult<Vec<_>>>()?;
    let x = as_slice("x", &x)?;
    let lens = matrices
        .iter()
        .map(|w| checked_product("x", &[m, w.n]))
        .collect::<Result<Vec<_>, _>>()?;
    let outs = run_detached(py, || {
        let layers: Vec<matmul::Linear<'_, '_, T>> = matrices
            .iter()
            .zip(&gammas)
            .zip(&bias_slices)
            .map(|((weight, &gamma), &bias)| matmul::Linear {
                weight,
                gamma,
                bias,
            })
            .collect();
        let mut outs: Vec<Vec<T>> = lens.iter().map(|&len| vec![T::ZERO; len]).collect();
        let mut slices: Vec<&mut [T]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        matmul::bitlinear_many(x, m, norm.as_ref(), &layers, &mut slices)?;
        Ok(outs)
    })?;
    outs.into_iter()
        .zip(&matrices)
        .map(|(out, w)| to_numpy(py, &[m, w.n], out))
        .collect()
}

macro_rules! many_entry_point {
    ($t:ty, $name:ident) => {
        /// BitLinear forward of one x (`(M, K)`), RMS-normed with `norm` (`(K,)`) and `eps`
        /// first if given, through several packed weights of the same K and format (x
        /// quantized once): a list of `(M, N_i)`.
        #[pyfunction]
        #[pyo3(signature = (x, packed, k, format, gammas, biases, norm, eps))]
        #[allow(clippy::too_many_arguments)]
        fn $name<'py>(
            py: Python<'py>,
            x: PyReadonlyArrayDyn<'py, $t>,
            packed: Vec<PyReadonlyArrayDyn<'py, u8>>,
            k: usize,
            format: &str,
            gammas: Vec<f64>,
            biases: Vec<Option<PyReadonlyArrayDyn<'py, $t>>>,
            norm: Option<PyReadonlyArrayDyn<'py, $t>>,
            eps: f64,
        ) -> PyResult<Arrays<'py, $t>> {
            bitlinear_many_generic(py, x, packed, k, format, gammas, biases, norm, eps)
        }
    };
}

many_entry_point!(f32, ternary_bitlinear_many_f32);
many_entry_point!(f64, ternary_bitlinear_many_f64);

macro_rules! typed_entry_points {
    ($t:ty, $weights:ident, $activations:ident, $bitlinear:ident) => {
        /// Quantizes W (`(N, K)`) and packs it: returns `(packed, gamma)`.
        #[pyfunction]
        fn $weights<'py>(
            py: Python<'py>,
            w: PyReadonlyArrayDyn<'py, $t>,
            eps: f64,
            format: &str,
        ) -> PyResult<(Bound<'py, PyArrayDyn<u8>>, f64)> {
            quantize_weights_generic(py, w, eps, format)
        }

        /// Quantizes x (`(M, K)`) per row: returns `(q, scale)` with scale `(M,)`.
        #[pyfunction]
        fn $activations<'py>(
            py: Python<'py>,
            x: PyReadonlyArrayDyn<'py, $t>,
            eps: f64,
        ) -> PyResult<Quantized<'py, $t>> {
            quantize_activations_generic(py, x, eps)
        }

        /// BitLinear forward of x (`(M, K)`) with packed weights: `(M, N)`.
        #[pyfunction]
        #[pyo3(signature = (x, packed, k, format, gamma, bias))]
        fn $bitlinear<'py>(
            py: Python<'py>,
            x: PyReadonlyArrayDyn<'py, $t>,
            packed: PyReadonlyArrayDyn<'py, u8>,
            k: usize,
            format: &str,
            gamma: f64,
            bias: Option<PyReadonlyArrayDyn<'py, $t>>,
        ) -> PyResult<Bound<'py, PyArrayDyn<$t>>> {
            bitlinear_generic(py, x, packed, k, format, gamma, bias)
        }
    };
}

typed_entry_points!(
    f32,
    ternary_quantize_weights_f32,
    ternary_quantize_activations_f32,
    ternary_bitlinear_f32
);
typed_entry_points!(
    f64,
    ternary_quantize_weights_f64,
    ternary_quantize_activations_f64,
    ternary_bitlinear_f64
);

type RowQuantized<'py> = (Bound<'py, PyArrayDyn<i8>>, Bound<'py, PyArrayDyn<f32>>);

fn int8_quantize_rows_generic<'py, T: QuantFloat + Element>(
    py: Python<'py>,
    w: PyReadonlyArrayDyn<'py, T>,
) -> PyResult<RowQuantized<'py>> {
    let [n, k] = dims_of::<2>("W", w.shape(), "2 dimensions")?;
    let w = as_slice("W", &w)?;
    let len = checked_product("W", &[n, k])?;
    let (codes, scales) = run_detached(py, || {
        let (mut codes, mut scales) = (vec![0i8; len], vec![0f32; n]);
        int8::quantize_rows(w, n, k, &mut codes, &mut scales)?;
        Ok((codes, scales))
    })?;
    Ok((to_numpy(py, &[n, k], codes)?, to_numpy(py, &[n], scales)?))
}

fn int8_matmul_generic<'py, T: Int8Float + QuantFloat + Element>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, T>,
    codes: PyReadonlyArrayDyn<'py, i8>,
    scales: PyReadonlyArrayDyn<'py, f32>,
    quantized: bool,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let [m, k] = dims_of::<2>("x", x.shape(), "2 dimensions")?;
    let [n, _] = dims_of::<2>("codes", codes.shape(), "2 dimensions")?;
    let (x, codes, scales) = (
        as_slice("x", &x)?,
        as_slice("codes", &codes)?,
        as_slice("scales", &scales)?,
    );
    let len = checked_product("x", &[m, n])?;
    let out = run_detached(py, || {
        let mut out = vec![T::ZERO; len];
        if quantized {
            int8::int8_matmul_quantized(x, m, codes, scales, n, k, &mut out)?;
        } else {
            int8::int8_matmul(x, m, codes, scales, n, k, &mut out)?;
        }
        Ok(out)
    })?;
    to_numpy(py, &[m, n], out)
}

macro_rules! int8_entry_points {
    ($t:ty, $quantize:ident, $matmul:ident, $matmul_quantized:ident) => {
        /// Quantizes W (`(N, K)`) to int8 with one scale per row: returns `(codes, scales)`.
        #[pyfunction]
        fn $quantize<'py>(
            py: Python<'py>,
            w: PyReadonlyArrayDyn<'py, $t>,
        ) -> PyResult<RowQuantized<'py>> {
            int8_quantize_rows_generic(py, w)
        }

        /// `(x @ codes.T) * scales` for x (`(M, K)`): `(M, N)`.
        #[pyfunction]
        fn $matmul<'py>(
            py: Python<'py>,
            x: PyReadonlyArrayDyn<'py, $t>,
            codes: PyReadonlyArrayDyn<'py, i8>,
            scales: PyReadonlyArrayDyn<'py, f32>,
        ) -> PyResult<Bound<'py, PyArrayDyn<$t>>> {
            int8_matmul_generic(py, x, codes, scales, false)
        }

        /// `(q @ codes.T) * scales / a` for x (`(M, K)`) quantized per row to int8 codes q
        /// with scales a (BitNet's activation quantization): `(M, N)`.
        #[pyfunction]
        fn $matmul_quantized<'py>(
            py: Python<'py>,
            x: PyReadonlyArrayDyn<'py, $t>,
            codes: PyReadonlyArrayDyn<'py, i8>,
            scales: PyReadonlyArrayDyn<'py, f32>,
        ) -> PyResult<Bound<'py, PyArrayDyn<$t>>> {
            int8_matmul_generic(py, x, codes, scales, true)
        }
    };
}

int8_entry_points!(
    f32,
    int8_quantize_rows_f32,
    int8_matmul_f32,
    int8_matmul_quantized_f32
);
int8_entry_points!(
    f64,
    int8_quantize_rows_f64,
    int8_matmul_f64,
    int8_matmul_quantized_f64
);
