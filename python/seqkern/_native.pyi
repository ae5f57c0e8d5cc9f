"""Type stubs of the compiled extension. The public API is in the family modules
(``seqkern.mamba``, ...), which check arguments before calling these."""

from typing import Any, Optional

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

def set_num_threads(threads: int) -> None: ...
def get_num_threads() -> int: ...
def set_simd_path(name: str) -> str: ...
def get_simd_path() -> str: ...
def build_info() -> dict[str, Any]: ...
def cpu_features() -> list[str]: ...

# --- mamba
def selective_scan_f32(
    u: F32,
    delta: F32,
    a: F32,
    b: F32,
    c: F32,
    d: Optional[F32],
    z: Optional[F32],
    delta_bias: Optional[F32],
    delta_softplus: bool,
    initial_state: Optional[F32],
) -> tuple[F32, F32]: ...
def selective_scan_f64(
    u: F64,
    delta: F64,
    a: F64,
    b: F64,
    c: F64,
    d: Optional[F64],
    z: Optional[F64],
    delta_bias: Optional[F64],
    delta_softplus: bool,
    initial_state: Optional[F64],
) -> tuple[F64, F64]: ...
def selective_state_update_f32(
    state: F32,
    x: F32,
    dt: F32,
    a: F32,
    b: F32,
    c: F32,
    d: Optional[F32],
    z: Optional[F32],
    dt_bias: Optional[F32],
    dt_softplus: bool,
) -> F32: ...
def selective_state_update_f64(
    state: F64,
    x: F64,
    dt: F64,
    a: F64,
    b: F64,
    c: F64,
    d: Optional[F64],
    z: Optional[F64],
    dt_bias: Optional[F64],
    dt_softplus: bool,
) -> F64: ...

# --- mamba2 (SSD scan, causal conv1d)
def ssd_scan_f32(
    x: F32,
    dt: F32,
    a: F32,
    b: F32,
    c: F32,
    chunk_size: int,
    d: Optional[F32],
    z: Optional[F32],
    dt_bias: Optional[F32],
    initial_states: Optional[F32],
    dt_softplus: bool,
    dt_min: float,
    dt_max: float,
    sequential: bool,
) -> tuple[F32, F32]: ...
def ssd_scan_f64(
    x: F64,
    dt: F64,
    a: F64,
    b: F64,
    c: F64,
    chunk_size: int,
    d: Optional[F64],
    z: Optional[F64],
    dt_bias: Optional[F64],
    initial_states: Optional[F64],
    dt_softplus: bool,
    dt_min: float,
    dt_max: float,
    sequential: bool,
) -> tuple[F64, F64]: ...
def causal_conv1d_f32(
    x: F32,
    weight: F32,
    bias: Optional[F32],
    silu: bool,
    initial_states: Optional[F32],
    channels_last: bool = False,
) -> tuple[F32, F32]: ...
def causal_conv1d_f64(
    x: F64,
    weight: F64,
    bias: Optional[F64],
    silu: bool,
    initial_states: Optional[F64],
    channels_last: bool = False,
) -> tuple[F64, F64]: ...
def causal_conv1d_update_f32(
    x: F32, conv_state: F32, weight: F32, bias: Optional[F32], silu: bool
) -> F32: ...
def causal_conv1d_update_f64(
    x: F64, conv_state: F64, weight: F64, bias: Optional[F64], silu: bool
) -> F64: ...
def mamba2_step_f32(
    zxbcdt: F32,
    conv_state: F32,
    ssm_state: F32,
    conv_weight: F32,
    conv_bias: Optional[F32],
    dt_bias: F32,
    a: F32,
    d: F32,
    norm_weight: F32,
    groups: int,
    eps: float,
    dt_min: float,
    dt_max: float,
) -> F32: ...
def mamba2_step_f64(
    zxbcdt: F64,
    conv_state: F64,
    ssm_state: F64,
    conv_weight: F64,
    conv_bias: Optional[F64],
    dt_bias: F64,
    a: F64,
    d: F64,
    norm_weight: F64,
    groups: int,
    eps: float,
    dt_min: float,
    dt_max: float,
) -> F64: ...
def grouped_rms_norm_f32(y: F32, weight: F32, groups: int, eps: float) -> None: ...
def grouped_rms_norm_f64(y: F64, weight: F64, groups: int, eps: float) -> None: ...

# --- attention
def causal_attention_f32(q: F32, k: F32, v: F32, scale: float) -> F32: ...
def causal_attention_f64(q: F64, k: F64, v: F64, scale: float) -> F64: ...

# --- rwkv
def wkv4_f32(w: F32, u: F32, k: F32, v: F32, state: Optional[F32]) -> tuple[F32, F32]: ...
def wkv4_f64(w: F64, u: F64, k: F64, v: F64, state: Optional[F64]) -> tuple[F64, F64]: ...
def wkv5_f32(
    r: F32, k: F32, v: F32, w: F32, u: F32, state: Optional[F32], scale: float
) -> tuple[F32, F32]: ...
def wkv5_f64(
    r: F64, k: F64, v: F64, w: F64, u: F64, state: Optional[F64], scale: float
) -> tuple[F64, F64]: ...
def wkv6_f32(
    r: F32, k: F32, v: F32, w: F32, u: F32, state: Optional[F32], scale: float
) -> tuple[F32, F32]: ...
def wkv6_f64(
    r: F64, k: F64, v: F64, w: F64, u: F64, state: Optional[F64], scale: float
) -> tuple[F64, F64]: ...
def wkv7_f32(
    r: F32, w: F32, k: F32, v: F32, a: F32, b: F32, state: Optional[F32], scale: float
) -> tuple[F32, F32]: ...
def wkv7_f64(
    r: F64, w: F64, k: F64, v: F64, a: F64, b: F64, state: Optional[F64], scale: float
) -> tuple[F64, F64]: ...
def rwkv7_output_f32(
    y: F32, r: F32, k: F32, v: F32, g: F32, r_k: F32, ln_w: F32, ln_b: F32, eps: float
) -> F32: ...
def rwkv7_output_f64(
    y: F64, r: F64, k: F64, v: F64, g: F64, r_k: F64, ln_w: F64, ln_b: F64, eps: float
) -> F64: ...

# --- ternary
I8 = npt.NDArray[np.int8]
I32 = npt.NDArray[np.int32]
U8 = npt.NDArray[np.uint8]

def ternary_row_bytes(k: int, format: str) -> int: ...
def ternary_kernel_path() -> str: ...
def ternary_pack(codes: I8, format: str) -> U8: ...
def ternary_unpack(packed: U8, k: int, format: str) -> I8: ...
def ternary_validate(packed: U8, k: int, format: str) -> None: ...
def ternary_matmul_int(q: I8, packed: U8, k: int, format: str) -> I32: ...
def ternary_quantize_weights_f32(w: F32, eps: float, format: str) -> tuple[U8, float]: ...
def ternary_quantize_weights_f64(w: F64, eps: float, format: str) -> tuple[U8, float]: ...
def ternary_quantize_activations_f32(x: F32, eps: float) -> tuple[I8, F32]: ...
def ternary_quantize_activations_f64(x: F64, eps: float) -> tuple[I8, F64]: ...
def ternary_bitlinear_f32(
    x: F32, packed: U8, k: int, format: str, gamma: float, bias: Optional[F32]
) -> F32: ...
def ternary_bitlinear_f64(
    x: F64, packed: U8, k: int, format: str, gamma: float, bias: Optional[F64]
) -> F64: ...
def ternary_bitlinear_many_f32(
    x: F32,
    packed: list[U8],
    k: int,
    format: str,
    gammas: list[float],
    biases: list[Optional[F32]],
    norm: Optional[F32],
    eps: float,
) -> list[F32]: ...
def ternary_bitlinear_many_f64(
    x: F64,
    packed: list[U8],
    k: int,
    format: str,
    gammas: list[float],
    biases: list[Optional[F64]],
    norm: Optional[F64],
    eps: float,
) -> list[F64]: ...
def int8_quantize_rows_f32(w: F32) -> tuple[I8, F32]: ...
def int8_quantize_rows_f64(w: F64) -> tuple[I8, F32]: ...
def int8_matmul_f32(x: F32, codes: I8, scales: F32) -> F32: ...
def int8_matmul_f64(x: F64, codes: I8, scales: F32) -> F64: ...
def int8_matmul_quantized_f32(x: F32, codes: I8, scales: F32) -> F32: ...
def int8_matmul_quantized_f64(x: F64, codes: I8, scales: F32) -> F64: ...
