//! BitNet b1.58 ternary weights: exact quantizers, packed storage, int8 x ternary matmul.
//!
//! Weights follow `nn.Linear`: W is `(N, K)` = (out_features, in_features), `y = x W^T`.
//!
//! - [`quantize`]: BitNet's `weight_quant` (per-tensor absmean to {-1, 0, 1}) and
//!   `activation_quant` (per-token absmax to int8), bit for bit.
//! - [`pack`]: the `"i2"` (2 bits per weight) and `"t1"` (base 3, 1.6 bits per weight) formats.
//! - [`matmul`]: the exact int32 product and the BitLinear forward; [`kernels`] holds the
//!   AVX-512 VNNI, AVX2, NEON and portable dot products it runs on.
//! - [`int8`]: int8 weights with a scale per row and their matmul (activations in float, or
//!   quantized per row to int8 and multiplied exactly by [`int8_dot`]'s kernels), for the
//!   large float layers beside the ternary ones (a model's output head).

pub mod int8;
pub mod int8_dot;
pub mod kernels;
pub mod matmul;
pub mod pack;
pub mod quantize;

pub use matmul::{bitlinear, ternary_matmul_int};
pub use pack::{Format, Layout, PackedMatrix};
pub use quantize::{quantize_activations, quantize_weights};
