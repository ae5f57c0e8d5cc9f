//! The one error type of the pure kernels.

use thiserror::Error;

/// What a kernel reports instead of panicking. The bindings turn `Shape` and `Value` into
/// `ValueError`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// An argument's length or shape does not match the dimensions of the call.
    #[error("{name}: expected {expected}, got {actual}")]
    Shape {
        /// The argument's name as the Python caller knows it.
        name: &'static str,
        /// What the call needed, e.g. `"(2, 3, 5) = 30 elements"`.
        expected: String,
        /// What it received.
        actual: String,
    },
    /// An argument has an unusable value (a zero group count, an overflowing size, ...).
    #[error("{name}: {message}")]
    Value {
        /// The argument's name as the Python caller knows it.
        name: &'static str,
        /// Why the value cannot be used.
        message: String,
    },
}

impl KernelError {
    /// A `Value` error for argument `name`.
    pub fn value(name: &'static str, message: impl Into<String>) -> Self {
        KernelError::Value {
            name,
            message: message.into(),
        }
    }
}

/// Checks that `slice` holds exactly `expected` elements (the product of `dims`).
pub fn check_len<T>(name: &'static str, slice: &[T], dims: &[usize]) -> Result<(), KernelError> {
    let expected = checked_product(name, dims)?;
    if slice.len() == expected {
        Ok(())
    } else {
        Err(KernelError::Shape {
            name,
            expected: format!("{dims:?} = {expected} elements"),
            actual: format!("{} elements", slice.len()),
        })
    }
}

/// The product of `dims`, or a `Value` error naming `name` when it overflows `usize`.
pub fn checked_product(name: &'static str, dims: &[usize]) -> Result<usize, KernelError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| KernelError::value(name, format!("size {dims:?} overflows")))
}
