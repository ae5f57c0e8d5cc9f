"""The ternary section: BitNet b1.58 ``bitlinear`` against NumPy float32 matmul.

For each weight shape (in_features -> out_features) and M tokens: seqkern's
``bitlinear(x, quantize_weights(W))`` against NumPy's ``x @ W.T`` on the same float32 W, with
the bits per weight of the packed format and the effective bandwidth (bytes of the weight
matrix read per call / time), since a decode step (M = 1) is bound by reading the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Callable

import numpy as np

from .sweeps import Unavailable, resolve
from .timing import median_seconds, settle_after_numpy

# (in_features, out_features): a 4096-wide projection, and BitNet b1.58 2B4T's feed-forward
# up (2560 -> 6912) and down (6912 -> 2560) projections.
SHAPES: list[tuple[int, int]] = [(4096, 4096), (2560, 6912), (6912, 2560)]
TOKENS: list[int] = [1, 8, 64, 512]


def parse_shape(text: str) -> tuple[int, int]:
    """``"2560x6912"`` (in_features x out_features) -> (2560, 6912)."""
    parts = text.lower().replace("->", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected IN x OUT, like 2560x6912, got {text!r}")
    k, n = (int(p) for p in parts)
    if k <= 0 or n <= 0:
        raise ValueError(f"expected positive sizes, got {text!r}")
    return k, n


def steps(shapes: Sequence[tuple[int, int]], tokens: Sequence[int], formats: Sequence[str]) -> int:
    """Progress steps of :func:`run`."""
    return len(shapes) * len(tokens) * len(formats)


def run(
    shapes: Sequence[tuple[int, int]],
    tokens: Sequence[int],
    formats: Sequence[str],
    repeats: int,
    progress: Callable[[str, int], None],
    seed: int = 0,
) -> dict[str, Any]:
    """Times every (shape, format, M); returns ``{"status", "note", "rows"}``."""
    try:
        quantize = resolve("seqkern.ternary", "quantize_weights")
        bitlinear = resolve("seqkern.ternary", "bitlinear")
    except Unavailable as exc:
        progress(f"ternary  not available: {exc}", steps(shapes, tokens, formats))
        return {"status": "unavailable", "note": str(exc), "rows": []}
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for k, n in shapes:
        # nn.Linear's layout: W is (out_features, in_features), y = x @ W.T.
        W = rng.standard_normal((n, k), dtype=np.float32)
        W *= np.float32(0.02)
        activations = {m: rng.standard_normal((m, k), dtype=np.float32) for m in tokens}
        numpy_seconds: dict[int, float] = {}
        for fmt in formats:
            try:
                weight = quantize(W, format=fmt)
            except Exception as exc:  # noqa: BLE001 - reported in the section's note
                errors.append(f"{k}x{n} {fmt}: {type(exc).__name__}: {exc}")
                progress(f"ternary  {k}->{n} {fmt}: failed ({exc})", len(tokens))
                continue
            for m, x in activations.items():
                if m not in numpy_seconds:
                    numpy_seconds[m] = median_seconds(partial(np.matmul, x, W.T), repeats)
                    settle_after_numpy()
                try:
                    fast = median_seconds(partial(bitlinear, x, weight), repeats)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"{k}x{n} {fmt} M={m}: {type(exc).__name__}: {exc}")
                    progress(f"ternary  {k}->{n} {fmt} M={m}: failed ({exc})", 1)
                    continue
                rows.append(_row(k, n, m, fmt, weight, W, fast, numpy_seconds[m]))
                progress(
                    f"ternary  {k}->{n} {fmt} M={m:<4} seqkern {fast * 1e3:8.3f} ms, "
                    f"numpy {numpy_seconds[m] * 1e3:8.3f} ms",
                    1,
                )
    status = "error" if errors and not rows else "ok"
    return {"status": status, "note": "; ".join(errors), "rows": rows}


def _row(
    k: int, n: int, m: int, fmt: str, weight: Any, W: np.ndarray, fast: float, reference: float
) -> dict[str, Any]:
    weight_bytes = float(weight.nbytes)
    return {
        "in_features": k,
        "out_features": n,
        "tokens": m,
        "format": fmt,
        "bits_per_weight": float(weight.bits_per_weight),
        "weight_bytes": weight_bytes,
        "seqkern_seconds": fast,
        "numpy_seconds": reference,
        "speedup": reference / fast,
        "seqkern_gbps": weight_bytes / fast / 1e9,
        "numpy_gbps": W.nbytes / reference / 1e9,
    }
