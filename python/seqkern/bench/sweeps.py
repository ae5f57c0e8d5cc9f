"""Sequence-length sweeps: the recurrent kernels against causal attention.

Every kernel is swept at the shapes of one sequence-mixing layer of a model of about 1.4B
parameters (d_model 2048), batch 1, float32, both in seqkern and in its NumPy reference on the
same inputs. A kernel whose function is missing from this build (another family not merged
yet) is reported as not available instead of failing the run.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .analysis import Point, bootstrap_slope, fit_slope, predict_next
from .timing import sample_seconds, settle_after_numpy

Args = tuple[tuple[Any, ...], dict[str, Any]]
F32 = np.float32
SECONDS_WITHOUT_WARMUP = 0.5
"""Calls predicted to take longer than this are timed without a warm-up call."""
LONG_CALL_SECONDS = 5.0
"""Calls predicted to take longer than this are repeated at most LONG_CALL_REPEATS times."""
LONG_CALL_REPEATS = 3
SHORT_POINT_SECONDS = 0.1
"""Calls predicted this short are repeated until the point takes about this long ..."""
SHORT_CALL_REPEATS = 15
"""... but at most this many times: the minimum of more samples moves less between runs."""
BOOTSTRAP_ROUNDS = 200


class Unavailable(Exception):
    """A kernel or reference that this build does not have."""


def resolve(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, or :class:`Unavailable` when either is missing."""
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"{module}.{name} is missing") from exc
    if not callable(fn):
        raise Unavailable(f"{module}.{name} is not callable")
    return fn


@dataclass(frozen=True)
class SweepKernel:
    """One kernel of the sweep: where its two implementations live and how to feed them."""

    name: str
    model: str
    shape: str
    fast: tuple[str, str]
    reference: tuple[str, str]
    inputs: Callable[[np.random.Generator, int], Args]
    reference_bytes: Callable[[int], float]
    """Peak memory the NumPy reference needs at length L (an estimate)."""
    expected_slope: float = 1.0


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=F32)
    if scale != 1.0:
        x *= F32(scale)
    return x


# --- causal attention: a d_model 2048 transformer layer (32 heads of 64).
ATTN_HEADS, ATTN_DIM = 32, 64


def _attention_inputs(rng: np.random.Generator, length: int) -> Args:
    shape = (1, ATTN_HEADS, length, ATTN_DIM)
    return (_normal(rng, *shape), _normal(rng, *shape), _normal(rng, *shape)), {}


def _attention_reference_bytes(length: int) -> float:
    # The (B, H, L, L) float32 scores plus one temporary of the same size.
    return 2.0 * ATTN_HEADS * length * length * 4


# --- Mamba-1 selective scan: mamba-1.4b (d_model 2048, d_inner 4096, d_state 16).
SCAN_DIM, SCAN_STATE = 4096, 16


def _scan_inputs(rng: np.random.Generator, length: int) -> Args:
    from .cases_mamba import scan_inputs

    u, delta, A, B, C, D, z, bias = scan_inputs(rng, 1, SCAN_DIM, SCAN_STATE, length)
    return (u, delta, A, B, C, D, z, bias), {"delta_softplus": True}


def _scan_reference_bytes(length: int) -> float:
    # The reference expands B and C to (batch, dim, dstate, L); inputs and output besides.
    return (2.0 * SCAN_DIM * SCAN_STATE + 5.0 * SCAN_DIM) * length * 4


# --- RWKV-6 and RWKV-7: the 1.6B / 1.5B models (C 2048 = 32 heads of 64).
RWKV_HEADS, RWKV_DIM = 32, 64


def _wkv6_inputs(rng: np.random.Generator, length: int) -> Args:
    shape = (1, length, RWKV_HEADS, RWKV_DIM)
    r, k, v = _normal(rng, *shape), _normal(rng, *shape), _normal(rng, *shape)
    # Log-decays -exp(w) with w in [-6, 1], the range of RWKV-6's trained time_decay.
    w = -np.exp(rng.uniform(-6.0, 1.0, shape).astype(F32))
    u = _normal(rng, RWKV_HEADS, RWKV_DIM, scale=0.5)
    return (r, k, v, w, u), {}


def _wkv7_inputs(rng: np.random.Generator, length: int) -> Args:
    shape = (1, length, RWKV_HEADS, RWKV_DIM)
    r, k, v = _normal(rng, *shape), _normal(rng, *shape), _normal(rng, *shape)
    # RWKV-7: log-decay -exp(-0.5 - softplus(.)) in (-0.61, 0); a = -kk, b = kk * alpha with
    # kk the per-head unit key and alpha in (0, 1), so every transition is a contraction.
    w = -np.exp(-0.5 - np.logaddexp(0.0, _normal(rng, *shape))).astype(F32)
    kk = _normal(rng, *shape)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    alpha = (1.0 / (1.0 + np.exp(-_normal(rng, *shape)))).astype(F32)
    return (r, w, k, v, -kk, kk * alpha), {}


def _rwkv_reference_bytes(length: int) -> float:
    # Inputs (up to six (B, T, H, N) arrays), output and a few temporaries of that size.
    return 10.0 * length * RWKV_HEADS * RWKV_DIM * 4


# --- Mamba-2 SSD: mamba2-1.3b (64 heads of 64, d_state 128, one group).
SSD_HEADS, SSD_HEADDIM, SSD_STATE = 64, 64, 128


def _ssd_inputs(rng: np.random.Generator, length: int) -> Args:
    x = _normal(rng, 1, length, SSD_HEADS, SSD_HEADDIM)
    dt = rng.uniform(0.001, 0.1, (1, length, SSD_HEADS)).astype(F32)
    A = -rng.uniform(1.0, 16.0, SSD_HEADS).astype(F32)
    B = _normal(rng, 1, length, 1, SSD_STATE)
    C = _normal(rng, 1, length, 1, SSD_STATE)
    D = np.ones(SSD_HEADS, F32)
    return (x, dt, A, B, C), {"D": D}


def _ssd_reference_bytes(length: int) -> float:
    # Inputs, output and chunk temporaries of a few times the input size.
    return 10.0 * length * SSD_HEADS * SSD_HEADDIM * 4


ATTENTION = SweepKernel(
    "causal_attention",
    "transformer layer, d_model 2048",
    f"B 1, H {ATTN_HEADS}, D {ATTN_DIM}, float32",
    ("seqkern.attention", "causal_attention"),
    ("seqkern.reference.attention", "causal_attention"),
    _attention_inputs,
    _attention_reference_bytes,
    expected_slope=2.0,
)

RECURRENCES = [
    SweepKernel(
        "selective_scan",
        "mamba-1.4b layer",
        f"B 1, dim {SCAN_DIM}, dstate {SCAN_STATE}, D z delta_bias softplus, float32",
        ("seqkern.mamba", "selective_scan"),
        ("seqkern.reference.mamba", "selective_scan"),
        _scan_inputs,
        _scan_reference_bytes,
    ),
    SweepKernel(
        "wkv6",
        "RWKV-6 1.6B layer",
        f"B 1, H {RWKV_HEADS}, N {RWKV_DIM}, float32",
        ("seqkern.rwkv", "wkv6"),
        ("seqkern.reference.rwkv", "wkv6"),
        _wkv6_inputs,
        _rwkv_reference_bytes,
    ),
    SweepKernel(
        "wkv7",
        "RWKV-7 1.5B layer",
        f"B 1, H {RWKV_HEADS}, N {RWKV_DIM}, float32",
        ("seqkern.rwkv", "wkv7"),
        ("seqkern.reference.rwkv", "wkv7"),
        _wkv7_inputs,
        _rwkv_reference_bytes,
    ),
    SweepKernel(
        "ssd_scan",
        "mamba2-1.3b layer",
        f"B 1, {SSD_HEADS} heads x {SSD_HEADDIM}, dstate {SSD_STATE}, 1 group, D, float32",
        ("seqkern.mamba", "ssd_scan"),
        ("seqkern.reference.mamba", "ssd_scan_chunked"),
        _ssd_inputs,
        _ssd_reference_bytes,
    ),
]

KERNELS = [ATTENTION, *RECURRENCES]
IMPLEMENTATIONS = ("seqkern", "numpy")


def geometric_lengths(shortest: int, longest: int) -> list[int]:
    """shortest, 2 shortest, 4 shortest, ... up to longest (inclusive)."""
    lengths = []
    n = shortest
    while n <= longest:
        lengths.append(n)
        n *= 2
    return lengths


@dataclass
class Series:
    """The timings of one kernel in one implementation."""

    kernel: str
    impl: str
    model: str
    shape: str
    status: str = "ok"
    """"ok", "unavailable" (not in this build) or "error" (it raised; see note)."""
    note: str = ""
    points: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def timings(self) -> list[Point]:
        """(length, seconds: the fastest sample) of the measured points."""
        return [(p["length"], p["seconds"]) for p in self.points]

    def best_timings(self) -> list[Point]:
        """(length, fastest sample): what the time limit extrapolates from, since on a
        shared machine a slow sample says more about the neighbours than the kernel."""
        return [(p["length"], min(p["samples"])) for p in self.points]

    def to_json(self) -> dict[str, Any]:
        fit = fit_slope(self.timings())
        low = high = None
        if fit is not None:
            used = {p["length"]: p["samples"] for p in self.points if p["length"] in fit.fitted}
            low, high = bootstrap_slope(used, min, BOOTSTRAP_ROUNDS)
        return {
            "kernel": self.kernel,
            "impl": self.impl,
            "model": self.model,
            "shape": self.shape,
            "status": self.status,
            "note": self.note,
            "points": self.points,
            "skipped": self.skipped,
            "slope": None if fit is None else fit.slope,
            "slope_lengths": [] if fit is None else list(fit.fitted),
            "slope_low": low,
            "slope_high": high,
        }


@dataclass(frozen=True)
class Limits:
    """When a point is not run: predicted wall time per call, or memory."""

    max_call_seconds: float
    max_bytes: Optional[float]


def available_memory_bytes() -> Optional[float]:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class SweepRunner:
    """Runs the sweeps, reporting every point to ``progress(message, steps)``."""

    def __init__(
        self,
        kernels: Sequence[SweepKernel],
        lengths: Sequence[int],
        repeats: int,
        limits: Limits,
        progress: Callable[[str, int], None],
        seed: int = 0,
    ):
        self.kernels = list(kernels)
        self.lengths = sorted(lengths)
        self.repeats = repeats
        self.limits = limits
        self.progress = progress
        self.seed = seed

    @property
    def steps(self) -> int:
        """Progress steps: one per kernel, implementation and length."""
        return len(self.kernels) * len(IMPLEMENTATIONS) * len(self.lengths)

    def run(self) -> list[Series]:
        series: list[Series] = []
        for kernel in self.kernels:
            series.extend(self._run_kernel(kernel))
        return series

    def _run_kernel(self, kernel: SweepKernel) -> list[Series]:
        functions: dict[str, Callable[..., Any]] = {}
        results = {}
        for impl, (module, name) in zip(IMPLEMENTATIONS, (kernel.fast, kernel.reference)):
            results[impl] = Series(kernel.name, impl, kernel.model, kernel.shape)
            try:
                functions[impl] = resolve(module, name)
            except Unavailable as exc:
                results[impl].status = "unavailable"
                results[impl].note = str(exc)
            if impl not in functions:
                self.progress(f"{kernel.name:<16} {impl:<7} not available", len(self.lengths))
        rng = np.random.default_rng(self.seed)
        for length in self.lengths:
            running = {
                impl: fn
                for impl, fn in functions.items()
                if self._admit(kernel, impl, results[impl], length)
            }
            for impl in [i for i in functions if i not in running]:
                reason = results[impl].skipped[-1]["reason"]
                self.progress(f"{kernel.name:<16} {impl:<7} L={length:<6} skipped: {reason}", 1)
            if not running:
                continue
            args = kernel.inputs(rng, length)
            for impl, fn in running.items():
                if not self._measure(kernel, impl, fn, args, results[impl], length):
                    del functions[impl]
            del args
        return [results[impl] for impl in IMPLEMENTATIONS]

    def _admit(self, kernel: SweepKernel, impl: str, series: Series, length: int) -> bool:
        """Whether to run ``length``; when not, records why (once per series)."""
        if series.status != "ok":
            return False
        if series.skipped:
            first = series.skipped[0]
            reason = f"L={first['length']} was skipped: {first['reason']}"
            series.skipped.append({"length": length, "reason": reason})
            return False
        predicted = predict_next(series.best_timings(), length, kernel.expected_slope)
        reason = None
        if predicted is not None and predicted > self.limits.max_call_seconds:
            reason = (
                f"predicted {predicted:.1f} s per call > the {self.limits.max_call_seconds:g} s "
                "limit (--max-call-seconds)"
            )
        elif impl == "numpy" and self.limits.max_bytes is not None:
            need = kernel.reference_bytes(length)
            if need > self.limits.max_bytes:
                reason = (
                    f"needs about {need / 2**30:.1f} GiB > the "
                    f"{self.limits.max_bytes / 2**30:.1f} GiB memory limit"
                )
        if reason is None:
            return True
        series.skipped.append({"length": length, "reason": reason})
        return False

    def _measure(
        self,
        kernel: SweepKernel,
        impl: str,
        fn: Callable[..., Any],
        args: Args,
        series: Series,
        length: int,
    ) -> bool:
        """Times one point into ``series``; False (and the series marked) if it raised."""
        positional, keywords = args
        predicted = predict_next(series.best_timings(), length, kernel.expected_slope)
        warmup = predicted is None or predicted < SECONDS_WITHOUT_WARMUP
        repeats = self.repeats
        if predicted is not None and predicted > LONG_CALL_SECONDS:
            repeats = min(repeats, LONG_CALL_REPEATS)
        elif predicted is not None and predicted * repeats < SHORT_POINT_SECONDS:
            fit_in = int(SHORT_POINT_SECONDS / max(predicted, 1e-9))
            repeats = max(repeats, min(SHORT_CALL_REPEATS, fit_in))
        try:
            samples = sample_seconds(lambda: fn(*positional, **keywords), repeats, warmup)
        except Exception as exc:  # noqa: BLE001 - a failing kernel is reported, not fatal
            series.status = "error"
            series.note = f"L={length}: {type(exc).__name__}: {exc}"
            self.progress(f"{kernel.name:<16} {impl:<7} L={length:<6} failed: {series.note}", 1)
            remaining = len(self.lengths) - self.lengths.index(length) - 1
            if remaining:
                self.progress(f"{kernel.name:<16} {impl:<7} stopped after the failure", remaining)
            return False
        if impl == "numpy":
            settle_after_numpy()
        fastest = float(min(samples))
        series.points.append({"length": length, "seconds": fastest, "samples": samples})
        self.progress(f"{kernel.name:<16} {impl:<7} L={length:<6} {_ms(fastest)}", 1)
        return True


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:10.3f} ms"


def memory_limit(fraction: float = 0.4) -> Optional[float]:
    """``fraction`` of the memory available now, or None when unknown."""
    available = available_memory_bytes()
    return None if available is None else fraction * available
