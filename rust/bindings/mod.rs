//! The PyO3 layer: the only code that knows Python. Each family has a file that converts
//! arguments, borrows NumPy memory without copying, runs the pure kernel with the GIL released
//! on the shared rayon pool, and turns errors into `ValueError`.
//!
//! The Python wrappers in `python/seqkern/` check shapes and dtypes first and pass contiguous
//! arrays of one float dtype; the checks here are the second line, so that no input reaches a
//! panic.

mod attention;
mod mamba;
mod mamba2;
mod rwkv;
mod ternary;

use crate::error::KernelError;
use crate::{parallel, simd};
use numpy::ndarray::{s, Array1, ArrayD, IxDyn};
use numpy::{Element, IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn, PyReadwriteArrayDyn};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::mem::MaybeUninit;

impl From<KernelError> for PyErr {
    fn from(err: KernelError) -> PyErr {
        PyValueError::new_err(err.to_string())
    }
}

/// Registers every function of `seqkern._native`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_path, m)?)?;
    m.add_function(wrap_pyfunction!(get_simd_path, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_in_kernel, m)?)?;
    mamba::register(m)?;
    mamba2::register(m)?;
    attention::register(m)?;
    rwkv::register(m)?;
    ternary::register(m)?;
    Ok(())
}

/// Sets the number of kernel threads (0: all cores).
#[pyfunction]
fn set_num_threads(threads: usize) {
    parallel::set_num_threads(threads);
}

/// The number of kernel threads.
#[pyfunction]
fn get_num_threads() -> usize {
    parallel::num_threads()
}

/// Chooses the SIMD path ("scalar", "avx2", "avx512" or "auto"); returns the one now in use.
#[pyfunction]
fn set_simd_path(name: &str) -> PyResult<&'static str> {
    let wanted = if name == "auto" {
        None
    } else {
        Some(simd::Isa::from_name(name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "name: expected 'auto', 'scalar', 'avx2' or 'avx512', got {name:?}"
            ))
        })?)
    };
    Ok(simd::force_isa(wanted).name())
}

/// The SIMD path asked for ("scalar", "avx2", "avx512", by `SEQKERN_SIMD` or
/// `set_simd_path`) or "auto"; passing it to `set_simd_path` restores the choice exactly.
#[pyfunction]
fn get_simd_path() -> &'static str {
    simd::requested_isa().map_or("auto", simd::Isa::name)
}

/// Panics inside a kernel call (on the pool, with the GIL released) when `confirm` is
/// "panic", to show that an internal error reaches Python as `RuntimeError`; any other value
/// does nothing. Not part of the API: the tests call it.
#[pyfunction]
fn _panic_in_kernel(py: Python<'_>, confirm: &str) -> PyResult<()> {
    use rayon::prelude::*;
    let armed = confirm == "panic";
    run_detached(py, || {
        // In one of several parallel tasks, as a kernel bug would.
        (0..4).into_par_iter().for_each(|task| {
            if armed && task == 3 {
                panic!("requested by _panic_in_kernel");
            }
        });
        Ok(())
    })
}

/// Version, build profile, SIMD path (chosen and best available) and thread count.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = PyDict::new(py);
    info.set_item("version", env!("CARGO_PKG_VERSION"))?;
    info.set_item(
        "profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    info.set_item("simd", simd::isa().name())?;
    info.set_item("simd_available", simd::detected_isa().name())?;
    info.set_item("threads", parallel::num_threads())?;
    info.set_item("target_arch", std::env::consts::ARCH)?;
    Ok(info)
}

/// The `N` axis lengths of `shape`, or a `ValueError` naming `name` and the expected `form`
/// (e.g. `"(batch, dim, L)"`).
pub(crate) fn dims_of<const N: usize>(
    name: &str,
    shape: &[usize],
    form: &str,
) -> PyResult<[usize; N]> {
    shape
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("{name}: expected {form}, got shape {shape:?}")))
}

/// The contiguous data of `array`, or a `ValueError` naming `name`.
pub(crate) fn as_slice<'a, T: Element>(
    name: &str,
    array: &'a PyReadonlyArrayDyn<'_, T>,
) -> PyResult<&'a [T]> {
    array
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name}: expected a C-contiguous array")))
}

/// Like [`as_slice`] for an optional argument.
pub(crate) fn as_opt_slice<'a, T: Element>(
    name: &str,
    array: &'a Option<PyReadonlyArrayDyn<'_, T>>,
) -> PyResult<Option<&'a [T]>> {
    array.as_ref().map(|a| as_slice(name, a)).transpose()
}

/// The contiguous, writable data of `array`, or a `ValueError` naming `name`.
pub(crate) fn as_mut_slice<'a, T: Element>(
    name: &str,
    array: &'a mut PyReadwriteArrayDyn<'_, T>,
) -> PyResult<&'a mut [T]> {
    array
        .as_slice_mut()
        .map_err(|_| PyValueError::new_err(format!("{name}: expected a C-contiguous array")))
}

/// Runs `kernel` with the GIL released, on the shared pool. A panic (a bug: inputs are checked
/// before) becomes a `RuntimeError` instead of crossing into Python.
pub(crate) fn run_detached<R, F>(py: Python<'_>, kernel: F) -> PyResult<R>
where
    R: Send,
    F: FnOnce() -> Result<R, KernelError> + Send,
{
    let outcome = py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parallel::install(kernel)))
    });
    match outcome {
        Ok(result) => Ok(result?),
        Err(panic) => Err(internal_error(panic)),
    }
}

/// Like [`run_detached`], but runs `kernel` on the calling thread; the kernel enters the pool
/// itself when its work is large enough to pay for it (see `parallel::for_each_init`).
pub(crate) fn run_detached_on_caller<R, F>(py: Python<'_>, kernel: F) -> PyResult<R>
where
    R: Send,
    F: FnOnce() -> Result<R, KernelError> + Send,
{
    let outcome = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(kernel)));
    match outcome {
        Ok(result) => Ok(result?),
        Err(panic) => Err(internal_error(panic)),
    }
}

fn internal_error(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    PyRuntimeError::new_err(format!("seqkern internal error: {message}"))
}

/// Moves `data` into a new NumPy array of `shape` without copying.
pub(crate) fn to_numpy<'py, T: Element>(
    py: Python<'py>,
    shape: &[usize],
    data: Vec<T>,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let array = ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| PyRuntimeError::new_err(format!("seqkern internal error: {e}")))?;
    Ok(array.into_pyarray(py))
}

/// An output buffer of `len` elements that starts on a 64-byte line (so that kernels may
/// write it with aligned non-temporal stores), handed to NumPy without copying.
pub(crate) struct AlignedOutput<T> {
    buffer: Vec<T>,
    offset: usize,
    len: usize,
}

impl<T: Element + Copy + Default> AlignedOutput<T> {
    /// Allocates the buffer, with up to a line of padding and without initialising the
    /// output elements.
    pub(crate) fn new(len: usize) -> Self {
        let pad = 64 / std::mem::size_of::<T>().max(1);
        let mut buffer = Vec::<T>::with_capacity(len + pad);
        let offset = buffer.as_ptr().align_offset(64).min(pad);
        // The padding is initialised now, the output by the kernel (see `finish`).
        let (head, rest) = buffer.spare_capacity_mut().split_at_mut(offset);
        for x in head.iter_mut().chain(&mut rest[len..]) {
            x.write(T::default());
        }
        AlignedOutput {
            buffer,
            offset,
            len,
        }
    }

    /// The output elements, to be written.
    pub(crate) fn uninit_mut(&mut self) -> &mut [MaybeUninit<T>] {
        &mut self.buffer.spare_capacity_mut()[self.offset..self.offset + self.len]
    }

    /// The NumPy array of `shape` over the output elements.
    ///
    /// # Safety
    /// Every element of [`AlignedOutput::uninit_mut`] must have been written.
    pub(crate) unsafe fn finish<'py>(
        mut self,
        py: Python<'py>,
        shape: &[usize],
    ) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
        let total = self.len + 64 / std::mem::size_of::<T>().max(1);
        // SAFETY: the padding was initialised in `new`, the rest by the caller's contract.
        unsafe { self.buffer.set_len(total) };
        let mut array = Array1::from_vec(self.buffer);
        array.slice_collapse(s![self.offset..self.offset + self.len]);
        let array = array
            .into_shape_with_order(IxDyn(shape))
            .map_err(|e| PyRuntimeError::new_err(format!("seqkern internal error: {e}")))?;
        Ok(array.into_pyarray(py))
    }
}
