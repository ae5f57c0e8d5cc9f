"""BitNet b1.58 ternary weights: exact quantization, packed storage and int8 x ternary matmul.

Weights follow ``nn.Linear``: ``W`` is (out_features, in_features) = (N, K) and
``y = x @ W.T``. ``quantize_activations`` is bit-identical to BitNet's published
``activation_quant``; ``quantize_weights`` is ``weight_quant`` with mean|W| summed exactly
(see its docstring); the matmul multiplies int8 activations by ternary weights exactly in
int32, on AVX-512 VNNI, AVX2, NEON or portable code (every path gives the same bits).

Typical use::

    w = quantize_weights(W)            # TernaryWeight, 2 bits per weight ("t1": 1.6)
    y = bitlinear(x, w, bias)          # x (..., K) float32/float64 -> (..., N)
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from . import _checks as ck
from . import _native

__all__ = [
    "FORMATS",
    "Int8Weight",
    "TernaryWeight",
    "bitlinear",
    "int8_matmul",
    "quantize_activations",
    "quantize_weights",
    "ternary_matmul_int",
]

FORMATS = ("i2", "t1")
"""Storage formats: ``"i2"`` 2 bits per weight, ``"t1"`` base 3 with five weights per byte."""

FILE_VERSION = 1
"""Version written by :meth:`TernaryWeight.save`; :meth:`TernaryWeight.load` reads only it."""

_FILE_KIND = "seqkern.TernaryWeight"
_FILE_KEYS = ("kind", "version", "format", "shape", "gamma", "packed")

_QUANTIZE_WEIGHTS = ck.by_dtype(_native, "ternary_quantize_weights")
_QUANTIZE_ACTIVATIONS = ck.by_dtype(_native, "ternary_quantize_activations")
_BITLINEAR = ck.by_dtype(_native, "ternary_bitlinear")
_BITLINEAR_MANY = ck.by_dtype(_native, "ternary_bitlinear_many")
_INT8_QUANTIZE = ck.by_dtype(_native, "int8_quantize_rows")
_INT8_MATMUL = {
    "float": ck.by_dtype(_native, "int8_matmul"),
    "int8": ck.by_dtype(_native, "int8_matmul_quantized"),
}

PathLike = Union[str, "os.PathLike[str]"]


def _check_format(format: Any) -> str:
    if format not in FORMATS:
        raise ValueError(f"format: expected 'i2' or 't1', got {format!r}")
    return format


def _check_gamma(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    gamma = float(value)
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"{name}: expected a finite value > 0, got {gamma}")
    return gamma


class TernaryWeight:
    """A ternary weight matrix W = gamma * t, t in {-1, 0, 1}, packed for the int8 kernels.

    Build one with :func:`quantize_weights`, :meth:`from_codes`, :meth:`from_hf_packed` or
    :meth:`load`. Instances are immutable and safe to share between threads.

    Storage (``format``): ``"i2"`` keeps each code ``t + 1`` in 2 bits; ``"t1"`` packs five
    codes per byte in base 3 (1.6 bits per weight). Rows are stored in blocks of 256 ("i2") or
    320 ("t1") weights plus one narrower tail block, so any K costs ``ceil(K / 4)`` or about
    ``ceil(K / 5)`` bytes per row; padding decodes to 0.
    """

    __slots__ = ("_format", "_gamma", "_packed", "_shape")

    def __init__(self, packed: np.ndarray, shape: tuple[int, int], gamma: float, format: str):
        """Wraps packed bytes (``(N, row_bytes)`` uint8, as :attr:`packed` returns them).
        Checks the size and every byte; prefer the ``from_*`` constructors."""
        format = _check_format(format)
        if len(shape) != 2:
            raise ValueError(f"shape: expected (out_features, in_features), got {shape}")
        n, k = (int(s) for s in shape)
        if n <= 0 or k <= 0:
            raise ValueError(f"shape: expected (out_features, in_features) > 0, got {shape}")
        packed = ck.as_array("packed", packed)
        if packed.dtype != np.uint8:
            raise TypeError(f"packed: expected dtype uint8, got {packed.dtype}")
        row_bytes = _native.ternary_row_bytes(k, format)
        ck.check_shape("packed", packed, ("out_features", "row_bytes"), (n, row_bytes))
        packed = ck.contiguous("packed", packed)
        _native.ternary_validate(packed, k, format)
        self._set(packed, (n, k), _check_gamma("gamma", gamma), format)

    def _set(self, packed: np.ndarray, shape: tuple[int, int], gamma: float, format: str):
        packed.flags.writeable = False
        self._packed = packed
        self._shape = shape
        self._gamma = gamma
        self._format = format

    @classmethod
    def _trusted(
        cls, packed: np.ndarray, shape: tuple[int, int], gamma: float, format: str
    ) -> TernaryWeight:
        """An instance around bytes the native packer just produced (no re-validation)."""
        self = cls.__new__(cls)
        self._set(packed, shape, gamma, format)
        return self

    @classmethod
    def from_codes(cls, codes: Any, gamma: float, format: str = "i2") -> TernaryWeight:
        """Packs ternary ``codes`` (integer array (N, K), values in {-1, 0, 1}) with the
        per-tensor scale ``gamma`` (W = gamma * codes)."""
        format = _check_format(format)
        codes = ck.as_array("codes", codes)
        if not np.issubdtype(codes.dtype, np.integer):
            raise TypeError(f"codes: expected an integer dtype (int8), got {codes.dtype}")
        ck.check_ndim("codes", codes, [("out_features", "in_features")])
        if codes.size == 0:
            raise ValueError(f"codes: expected a non-empty matrix, got shape {codes.shape}")
        gamma = _check_gamma("gamma", gamma)
        if codes.dtype != np.int8:
            bad = (codes < -1) | (codes > 1)
            if bad.any():
                at = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"codes: expected values in {{-1, 0, 1}}, got {codes[at]} at index {at}"
                )
            codes = codes.astype(np.int8)
        packed = _native.ternary_pack(ck.contiguous("codes", codes), format)
        return cls._trusted(packed, codes.shape, gamma, format)

    @classmethod
    def from_hf_packed(cls, packed: Any, weight_scale: Any, format: str = "i2") -> TernaryWeight:
        """Imports a weight in transformers' BitNet layout.

        ``packed`` is uint8 (N / 4, K): byte (r, k) holds ``code + 1`` of rows r, r + N/4,
        r + N/2 and r + 3N/4 at bits 0, 2, 4 and 6. transformers divides the layer's output by
        ``weight_scale`` (a scalar or a one-element array), so ``gamma = 1 / weight_scale``.
        """
        packed = ck.as_array("packed", packed)
        if packed.dtype != np.uint8:
            raise TypeError(f"packed: expected dtype uint8, got {packed.dtype}")
        ck.check_ndim("packed", packed, [("out_features / 4", "in_features")])
        packed = ck.contiguous("packed", packed)
        if packed.size == 0:
            raise ValueError(f"packed: expected a non-empty matrix, got shape {packed.shape}")
        scale = ck.as_array("weight_scale", weight_scale)
        if scale.size != 1:
            raise ValueError(
                f"weight_scale: expected one per-tensor value, got shape {scale.shape}"
            )
        if not np.issubdtype(scale.dtype, np.floating):
            raise TypeError(f"weight_scale: expected a float dtype, got {scale.dtype}")
        gamma = 1.0 / _check_gamma("weight_scale", float(scale.reshape(())))
        rows, k = packed.shape
        shifts = np.array([0, 2, 4, 6], np.uint8)[:, None, None]
        fields = (packed[None, :, :] >> shifts) & 3  # (4, N / 4, K): row i N/4 + r
        if (fields == 3).any():
            i, r, col = (int(v) for v in np.argwhere(fields == 3)[0])
            raise ValueError(
                f"packed: byte ({r}, {col}) holds 3 at bits {2 * i}..{2 * i + 1}, "
                "which is not a ternary code + 1"
            )
        codes = fields.reshape(4 * rows, k).astype(np.int8) - 1
        return cls.from_codes(codes, gamma, format)

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) = (N, K)."""
        return self._shape

    @property
    def out_features(self) -> int:
        """N."""
        return self._shape[0]

    @property
    def in_features(self) -> int:
        """K."""
        return self._shape[1]

    @property
    def gamma(self) -> float:
        """The per-tensor scale: W = gamma * codes (``max(mean|W|, eps)`` when quantized)."""
        return self._gamma

    @property
    def format(self) -> str:
        """``"i2"`` or ``"t1"``."""
        return self._format

    @property
    def packed(self) -> np.ndarray:
        """The packed bytes, (N, row_bytes) uint8, read-only."""
        return self._packed

    @property
    def nbytes(self) -> int:
        """Bytes of packed codes (gamma and the shape add 24 bytes)."""
        return int(self._packed.nbytes)

    @property
    def bits_per_weight(self) -> float:
        """``8 * nbytes / (N * K)``: 2.0 for "i2" when 4 divides K, 1.6 for "t1" when 5
        divides K (a little more for other K)."""
        n, k = self._shape
        return 8.0 * self.nbytes / (n * k)

    def codes(self) -> np.ndarray:
        """The ternary codes, int8 (N, K), values in {-1, 0, 1}."""
        return _native.ternary_unpack(self._packed, self._shape[1], self._format)

    def dequantize(self, dtype: Any = np.float32) -> np.ndarray:
        """``gamma * codes`` as a float array (N, K) of ``dtype`` (float32 or float64)."""
        dtype = np.dtype(dtype)
        if dtype not in ck.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        return self.codes().astype(dtype) * dtype.type(self._gamma)

    def save(self, path: PathLike) -> None:
        """Writes one ``.npz`` file at ``path`` (exactly that name) holding the packed bytes,
        format, shape, gamma and the file version."""
        with open(path, "wb") as f:
            np.savez(
                f,
                kind=np.array(_FILE_KIND),
                version=np.array(FILE_VERSION, np.int64),
                format=np.array(self._format),
                shape=np.array(self._shape, np.int64),
                gamma=np.array(self._gamma, np.float64),
                packed=self._packed,
            )

    @classmethod
    def load(cls, path: PathLike) -> TernaryWeight:
        """Reads a file written by :meth:`save`. A missing file raises ``FileNotFoundError``;
        a truncated, corrupt, foreign or wrong-version file raises ``ValueError``."""
        with open(path, "rb") as f:
            try:
                fields = _read_npz(f)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
                raise ValueError(
                    f"path: {os.fspath(path)!r} is not a readable TernaryWeight file ({exc})"
                ) from exc
        version = fields["version"]
        if version.shape != () or int(version) != FILE_VERSION:
            raise ValueError(
                f"path: {os.fspath(path)!r} has file version {version}, but this seqkern reads "
                f"version {FILE_VERSION}"
            )
        shape = fields["shape"]
        if shape.shape != (2,) or not np.issubdtype(shape.dtype, np.integer):
            raise ValueError(f"path: {os.fspath(path)!r}: expected a shape (N, K), got {shape}")
        try:
            return cls(
                fields["packed"], tuple(shape), float(fields["gamma"]), str(fields["format"])
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"path: {os.fspath(path)!r} holds an invalid weight: {exc}") from exc

    def __reduce__(self):
        return (TernaryWeight, (self._packed, self._shape, self._gamma, self._format))

    def __repr__(self) -> str:
        n, k = self._shape
        return (
            f"TernaryWeight(out_features={n}, in_features={k}, format={self._format!r}, "
            f"gamma={self._gamma:.6g}, bits_per_weight={self.bits_per_weight:.4g})"
        )


def _read_npz(f) -> dict[str, np.ndarray]:
    """Every array of a TernaryWeight file (reading them checks each member's CRC)."""
    with np.load(f, allow_pickle=False) as archive:
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("expected an .npz archive")
        missing = [key for key in _FILE_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        fields = {key: archive[key] for key in _FILE_KEYS}
    if fields["kind"].shape != () or str(fields["kind"]) != _FILE_KIND:
        raise ValueError(f"kind is {fields['kind']!r}, not {_FILE_KIND!r}")
    return fields


def quantize_weights(W: Any, *, eps: float = 1e-5, format: str = "i2") -> TernaryWeight:
    """Quantizes ``W`` (out_features, in_features), float32 or float64, to ternary codes with
    one per-tensor scale, as BitNet's published ``weight_quant`` does::

        gamma = max(mean|W|, eps);  codes = clip(round_half_even(W * (1 / gamma)), -1, 1)

    computed in W's dtype (``1 / gamma`` rounded once, as PyTorch does). ``mean|W|`` is
    summed exactly and rounded once to W's dtype; PyTorch's float32 sum order can move it by an
    ulp, which can only flip a weight lying within an ulp of gamma / 2 (with the same gamma,
    the codes are identical). NaN and
    infinity are rejected. Returns a :class:`TernaryWeight` in ``format`` ("i2" or "t1").
    """
    format = _check_format(format)
    W = ck.as_array("W", W)
    dtype = ck.float_dtype("W", W)
    ck.check_ndim("W", W, [("out_features", "in_features")])
    if W.size == 0:
        raise ValueError(f"W: expected a non-empty matrix, got shape {W.shape}")
    eps = _check_gamma("eps", eps)
    packed, gamma = _QUANTIZE_WEIGHTS[dtype](ck.contiguous("W", W), eps, format)
    return TernaryWeight._trusted(packed, W.shape, gamma, format)


def _rows(name: str, x: Any) -> tuple[np.ndarray, np.dtype, tuple[int, ...], int]:
    """``x`` (..., K) as a contiguous (M, K) float matrix, with its dtype, batch shape and K."""
    x = ck.as_array(name, x)
    dtype = ck.float_dtype(name, x)
    if x.ndim == 0:
        raise ValueError(f"{name}: expected shape (..., in_features), got a 0-d array")
    batch, k = x.shape[:-1], x.shape[-1]
    return ck.contiguous(name, x).reshape(math.prod(batch), k), dtype, batch, k


def quantize_activations(x: Any, *, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax quantization of ``x`` (..., K), float32 or float64, to int8,
    bit-identical to BitNet's published ``activation_quant``::

        scale = 127 / max(max_k |x_k|, eps);  q = clip(round_half_even(x * scale), -128, 127)

    computed in x's dtype, with the scale rounded as PyTorch rounds ``127.0 / t``
    (``t.reciprocal() * 127``). Returns ``(q, scale)``: q int8 (..., K), scale (..., 1) in x's
    dtype, so that ``q / scale`` is ``activation_quant(x)``. NaN and infinity are rejected.
    """
    rows, dtype, batch, k = _rows("x", x)
    eps = _check_gamma("eps", eps)
    q, scale = _QUANTIZE_ACTIVATIONS[dtype](rows, eps)
    return q.reshape(*batch, k), scale.reshape(*batch, 1)


def _check_weight(weight: Any) -> TernaryWeight:
    if not isinstance(weight, TernaryWeight):
        raise TypeError(f"weight: expected a TernaryWeight, got {type(weight).__name__}")
    return weight


def _check_in_features(name: str, k: int, weight: TernaryWeight) -> None:
    if k != weight.in_features:
        raise ValueError(
            f"{name}: expected last dimension in_features = {weight.in_features}, got {k}"
        )


def bitlinear(x: Any, weight: TernaryWeight, bias: Optional[Any] = None) -> np.ndarray:
    """The BitLinear forward with ternary weights: ``x`` (..., K) float32 or float64 ->
    (..., N) in x's dtype::

        q, scale = quantize_activations(x)              # per token, eps = 1e-5
        acc = q @ codes.T                               # exact, int32
        y = acc * gamma / scale (+ bias)                # in float64, rounded once

    ``bias`` is (N,) in x's dtype. Any strides are accepted (x is copied once if needed); the
    GIL is released while the kernel runs.
    """
    weight = _check_weight(weight)
    rows, dtype, batch, k = _rows("x", x)
    _check_in_features("x", k, weight)
    n = weight.out_features
    bias = ck.optional_float_input("bias", bias, dtype, "x", ("out_features",), (n,))
    y = _BITLINEAR[dtype](rows, weight.packed, k, weight.format, weight.gamma, bias)
    return y.reshape(*batch, n)


def _bitlinear_many(
    x: Any,
    weights: Sequence[TernaryWeight],
    biases: Optional[Sequence[Optional[Any]]] = None,
    norm: Optional[Any] = None,
    eps: float = 1e-6,
) -> list[np.ndarray]:
    """:func:`bitlinear` of one ``x`` through several weights of the same in_features and
    format (a transformer's q/k/v or gate/up projections): x is quantized once and every
    weight's rows run in one parallel call. Without ``norm``, each output equals the separate
    ``bitlinear(x, weights[i], biases[i])`` bit for bit. With ``norm`` ((K,) in x's dtype),
    x is first RMS-normed in the same call, as a model's norm before its projections::

        x' = (x * r) * norm,   r = 1 / sqrt(mean(x^2) + eps)   (the mean square in float64,
                                                                r rounded to x's dtype)
    """
    weights = [_check_weight(w) for w in weights]
    biases = [None] * len(weights) if biases is None else list(biases)
    if len(biases) != len(weights):
        raise ValueError(f"biases: expected {len(weights)} entries, got {len(biases)}")
    rows, dtype, batch, k = _rows("x", x)
    formats = {w.format for w in weights}
    if len(formats) > 1:
        raise ValueError(f"weights: expected one format, got {sorted(formats)}")
    for w in weights:
        _check_in_features("x", k, w)
    checked = [
        ck.optional_float_input("bias", b, dtype, "x", ("out_features",), (w.out_features,))
        for w, b in zip(weights, biases)
    ]
    norm = ck.optional_float_input("norm", norm, dtype, "x", ("in_features",), (k,))
    outs = _BITLINEAR_MANY[dtype](
        rows,
        [w.packed for w in weights],
        k,
        weights[0].format,
        [w.gamma for w in weights],
        checked,
        norm,
        float(eps),
    )
    return [y.reshape(*batch, w.out_features) for y, w in zip(outs, weights)]


def ternary_matmul_int(q: Any, weight: TernaryWeight) -> np.ndarray:
    """The exact int32 product ``q @ codes.T`` of int8 activations ``q`` (..., K) and a
    :class:`TernaryWeight`: (..., N). Every kernel path returns the same bits."""
    weight = _check_weight(weight)
    q = ck.as_array("q", q)
    if q.dtype != np.int8:
        raise TypeError(f"q: expected dtype int8, got {q.dtype}")
    if q.ndim == 0:
        raise ValueError("q: expected shape (..., in_features), got a 0-d array")
    batch, k = q.shape[:-1], q.shape[-1]
    _check_in_features("q", k, weight)
    rows = ck.contiguous("q", q).reshape(math.prod(batch), k)
    out = _native.ternary_matmul_int(rows, weight.packed, k, weight.format)
    return out.reshape(*batch, weight.out_features)


class Int8Weight:
    """A float matrix stored as int8 with one scale per row (symmetric absmax), for the large
    float layers beside the ternary ones: a language model's output head or tied embedding.

    ``W[n, k] ~ scales[n] * codes[n, k]`` with ``scales[n] = max_k |W[n, k]| / 127`` (float32)
    and ``codes = clip(round_half_even(W / scales[n]), -127, 127)``, so each weight is off by
    at most ``scales[n] / 2``. It takes a quarter of float32's memory (plus 4 bytes per row),
    and :func:`int8_matmul` reads a quarter of the bytes: a memory-bound GEMV (batch 1) runs
    about 4x faster than float32. Build one with :meth:`from_float` or :meth:`from_codes`;
    instances are immutable and safe to share between threads.
    """

    __slots__ = ("_codes", "_scales")

    def __init__(self, codes: Any, scales: Any):
        """Wraps int8 ``codes`` (N, K) and float32 ``scales`` (N,) (see :meth:`from_codes`)."""
        codes = ck.as_array("codes", codes)
        if codes.dtype != np.int8:
            raise TypeError(f"codes: expected dtype int8, got {codes.dtype}")
        ck.check_ndim("codes", codes, [("out_features", "in_features")])
        scales = ck.as_array("scales", scales)
        if scales.dtype != np.float32:
            raise TypeError(f"scales: expected dtype float32, got {scales.dtype}")
        ck.check_shape("scales", scales, ("out_features",), (codes.shape[0],))
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise ValueError("scales: expected finite values >= 0")
        self._set(ck.contiguous("codes", codes), ck.contiguous("scales", scales))

    def _set(self, codes: np.ndarray, scales: np.ndarray) -> None:
        codes.flags.writeable = False
        scales.flags.writeable = False
        self._codes = codes
        self._scales = scales

    @classmethod
    def from_codes(cls, codes: Any, scales: Any) -> Int8Weight:
        """An instance of existing int8 ``codes`` (N, K) and float32 ``scales`` (N,) (both
        copied if not C-contiguous; made read-only)."""
        return cls(codes, scales)

    @classmethod
    def from_float(cls, W: Any) -> Int8Weight:
        """Quantizes ``W`` (out_features, in_features), float32 or float64, row by row (in
        float64, so both dtypes give the same codes). NaN and infinity are rejected."""
        W = ck.as_array("W", W)
        dtype = ck.float_dtype("W", W)
        ck.check_ndim("W", W, [("out_features", "in_features")])
        codes, scales = _INT8_QUANTIZE[dtype](ck.contiguous("W", W))
        self = cls.__new__(cls)
        self._set(codes, scales)
        return self

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) = (N, K)."""
        return tuple(self._codes.shape)

    @property
    def codes(self) -> np.ndarray:
        """int8 (N, K), read-only."""
        return self._codes

    @property
    def scales(self) -> np.ndarray:
        """float32 (N,), read-only."""
        return self._scales

    @property
    def nbytes(self) -> int:
        """Bytes of codes and scales: N K + 4 N."""
        return int(self._codes.nbytes + self._scales.nbytes)

    def dequantize(self, dtype: Any = np.float32) -> np.ndarray:
        """``scales[:, None] * codes`` as a float array (N, K) of ``dtype``."""
        dtype = np.dtype(dtype)
        if dtype not in ck.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        return self._codes.astype(dtype) * self._scales.astype(dtype)[:, None]

    def __reduce__(self):
        return (Int8Weight, (self._codes, self._scales))

    def __repr__(self) -> str:
        n, k = self.shape
        return f"Int8Weight(out_features={n}, in_features={k}, nbytes={self.nbytes})"


def int8_matmul(x: Any, weight: Int8Weight, *, activations: str = "int8") -> np.ndarray:
    """``y = x @ W.T`` for an :class:`Int8Weight`: ``x`` (..., K) float32 or float64 ->
    (..., N) in x's dtype. ``activations`` chooses the product:

    - ``"int8"`` (the default): each row of x is quantized as BitNet's ``activation_quant``
      (:func:`quantize_activations`: ``a = 127 / max(max|x|, 1e-5)``, ``q = clip(round(x a),
      -128, 127)``) and multiplied by the codes exactly in int32, with ``vpdpbusd`` on AVX-512
      VNNI, ``vpmaddubsw`` on AVX2, or portable code (the paths of :func:`bitlinear`)::

          y[..., n] = ((sum_k q[..., k] codes[n, k]) * scales[n]) * (1 / a)   in float64,
                                                                             rounded once

      Every path and thread count gives the same bits. Besides the weights' rounding (as
      for ``"float"``) it adds the activations': ``|x - q / a| <= 1 / (2 a) = max|x| / 254``
      per element (for max|x| >= 1e-5), so y differs from the ``"float"`` product by at most
      ``max|x| / 254 * sum_k |scales[n] codes[n, k]|`` plus float rounding. K is at most
      132104 (exact int32 sums).
    - ``"float"``: the activations stay in float: each block of codes is converted to x's
      dtype on the fly and multiplied with fused multiply-adds in 64 independent chains
      (AVX-512, AVX2 or portable)::

          y[..., n] = scales[n] * sum_k x[..., k] codes[n, k]

      The error against ``x @ W.T`` is the weights' rounding (|W - scales codes| <= scales / 2
      per weight) plus float rounding.

    Results do not depend on the thread count or on the other rows of x; the GIL is released.
    """
    if not isinstance(weight, Int8Weight):
        raise TypeError(f"weight: expected an Int8Weight, got {type(weight).__name__}")
    if activations not in _INT8_MATMUL:
        raise ValueError(f"activations: expected 'int8' or 'float', got {activations!r}")
    rows, dtype, batch, k = _rows("x", x)
    n, in_features = weight.shape
    if k != in_features:
        raise ValueError(f"x: expected last dimension in_features = {in_features}, got {k}")
    y = _INT8_MATMUL[activations][dtype](rows, weight.codes, weight.scales)
    return y.reshape(*batch, n)
