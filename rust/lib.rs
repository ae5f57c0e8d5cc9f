//! seqkern: sequence-model kernels (Mamba, RWKV, BitNet b1.58, causal attention).
//!
//! The kernels are plain Rust over slices and dimensions and never see a Python type; the
//! `bindings` module (behind the `python` feature) is the only place that knows PyO3.

pub mod attention;
pub mod error;
pub mod mamba;
pub mod parallel;
pub mod rwkv;
pub mod simd;
pub mod ternary;

#[cfg(feature = "python")]
mod bindings;

pub use error::KernelError;

/// The Python extension module `seqkern._native`.
#[cfg(feature = "python")]
#[pyo3::pymodule]
fn _native(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    bindings::register(m)
}
