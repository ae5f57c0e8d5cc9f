"""Sequence-length sweeps: the recurrent kernels against causal attention.

Every kernel is swept at the shapes of one sequence-mixing layer of a model of about 1.4B
parameters (d_model 2048), batch 1, float32, both in seqkern and in its NumPy reference on the
same inputs. A kernel whose function is missing from this build (another family not merged
yet) is reported as not available instead of failing the run.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from .analysis import Point, bootstrap_slope, fit_slope, predict_next
from .timing import sample_seconds, settle_after_numpy, timed_warm_up

Args = tuple[tuple[Any, ...], dict[str, Any]]
F32 = np.float32
SECONDS_WITHOUT_WARMUP = 0.5
"""Calls predicted to take longer than this are timed without a warm-up call."""
LONG_CALL_SECONDS = 5.0
"""Calls predicted to take longer than this get at most LONG_CALL_REPEATS samples."""
LONG_CALL_REPEATS = 3
ROUND_CALL_SECONDS = 0.02
"""In every round, a point's calls are repeated back to back until they fill this long ..."""
ROUND_CALLS = 10
"""... but at most this many times (each call is a sample)."""
STILL_IMPROVING = 0.05
BOOTSTRAP_ROUNDS = 200
INPUT_BLOCK = 1024
"""Inputs longer than this repeat a random block of this many positions (see
:func:`tiled_inputs`)."""
RECURRENCE_FIT_FROM = 4096
"""Where the recurrences' slopes are fitted from. From L = 4096 on, each of them reads and
writes more than the 32 MiB L3 cache of the reference machine: the regime of all longer L.
Below, the time steps up once where the data leaves the L3 cache, and a fit across that step
measures the step rather than the growth. (The report also asks the allocator to keep freed
memory, ``timing.keep_freed_memory``: otherwise outputs of 32 MiB or more come from fresh
mmaps whose pages every call faults in, a second, larger step of 3-4x in one doubling whose
size depends on the host at that moment.)"""
ATTENTION_FIT_FROM = 1024
"""Attention's quadratic term dominates from about L = 1024 on."""


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
    fit_from: int = RECURRENCE_FIT_FROM
    """The slope is fitted over the measured lengths from this one on (see :func:`fit_lengths`)."""


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
    fit_from=ATTENTION_FIT_FROM,
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
    fit_from: int = RECURRENCE_FIT_FROM
    status: str = "ok"
    """"ok", "unavailable" (not in this build) or "error" (it raised; see note)."""
    note: str = ""
    points: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    rounds: int = 0
    """Interleaved rounds taken over the series' lengths (see :meth:`SweepRunner.run`)."""

    def timings(self) -> list[Point]:
        """(length, seconds: the fastest sample) of the measured points."""
        return [(p["length"], p["seconds"]) for p in self.points]

    def to_json(self) -> dict[str, Any]:
        used = fit_lengths([p["length"] for p in self.points], self.fit_from)
        fit = fit_slope([(n, t) for n, t in self.timings() if n in used], longer_half_only=False)
        low = high = None
        if fit is not None:
            chosen = {p["length"]: p["samples"] for p in self.points if p["length"] in used}
            low, high = bootstrap_slope(chosen, min, BOOTSTRAP_ROUNDS)
        return {
            "kernel": self.kernel,
            "impl": self.impl,
            "model": self.model,
            "shape": self.shape,
            "status": self.status,
            "note": self.note,
            "points": self.points,
            "skipped": self.skipped,
            "rounds": self.rounds,
            "fit_from": self.fit_from,
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


@dataclass(frozen=True)
class Sampling:
    """How many samples each point gets: every series takes at least ``rounds`` interleaved
    rounds over its lengths, and more (up to ``max_rounds``) while it has spent less than
    ``series_seconds``; in each round a point's calls repeat until they fill
    :data:`ROUND_CALL_SECONDS` (at most :data:`ROUND_CALLS`)."""

    rounds: int
    max_rounds: int
    series_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "statistic": "minimum",
            "rounds": self.rounds,
            "max_rounds": self.max_rounds,
            "series_seconds": self.series_seconds,
            "round_call_seconds": ROUND_CALL_SECONDS,
            "round_calls": ROUND_CALLS,
        }


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


class _Failed(Exception):
    """A kernel raised at ``length``."""

    def __init__(self, length: int, error: Exception):
        super().__init__(f"L={length}: {type(error).__name__}: {error}")
        self.length = length


class SweepRunner:
    """Runs the sweeps, reporting every point to ``progress(message, steps)``.

    Per kernel and implementation, a first pass in increasing length decides which lengths
    run (see :meth:`_admit`), warms each up and takes its first samples; then rounds go over
    all admitted lengths, one batch of samples each per round, so that a burst of load on a
    shared machine lands on every length alike instead of bending the curve at one. Each
    point is the fastest of its samples.
    """

    def __init__(
        self,
        kernels: Sequence[SweepKernel],
        lengths: Sequence[int],
        repeats: Union[int, Sampling],
        limits: Limits,
        progress: Callable[[str, int], None],
        seed: int = 0,
    ):
        self.kernels = list(kernels)
        self.lengths = sorted(lengths)
        if isinstance(repeats, int):
            repeats = Sampling(repeats, repeats, 0.0)
        self.sampling = repeats
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
            results[impl] = Series(kernel.name, impl, kernel.model, kernel.shape, kernel.fit_from)
            try:
                functions[impl] = resolve(module, name)
            except Unavailable as exc:
                results[impl].status = "unavailable"
                results[impl].note = str(exc)
                self.progress(f"{kernel.name:<16} {impl:<7} not available", len(self.lengths))
        inputs: dict[int, Args] = {}

        def args_at(length: int) -> Args:
            """The inputs at ``length``, made once and shared by both implementations."""
            if length not in inputs:
                rng = np.random.default_rng([self.seed, length])
                inputs[length] = tiled_inputs(kernel, rng, length)
            return inputs[length]

        for impl, fn in functions.items():
            self._run_series(kernel, results[impl], _caller(fn, args_at))
            if impl == "numpy":
                settle_after_numpy()
        inputs.clear()
        return [results[impl] for impl in IMPLEMENTATIONS]

    def _run_series(
        self, kernel: SweepKernel, series: Series, call_at: Callable[[int], Callable[[], Any]]
    ) -> None:
        """The first pass, then the rounds; the points into ``series``."""
        fastest: dict[int, float] = {}
        samples: dict[int, list[float]] = {}
        caps: dict[int, int] = {}
        failed = 0
        try:
            for length in self.lengths:
                if not self._admit(kernel, series, fastest, length):
                    reason = series.skipped[-1]["reason"]
                    self.progress(f"{_label(series)} L={length:<6} skipped: {reason}", 1)
                    continue
                predicted = predict_next(list(fastest.items()), length, kernel.expected_slope)
                long_call = predicted is not None and predicted > LONG_CALL_SECONDS
                caps[length] = LONG_CALL_REPEATS if long_call else self.sampling.max_rounds
                fastest[length], samples[length] = _first_pass(call_at(length), predicted, length)
        except _Failed as exc:
            failed = self._failed(series, exc)
        try:
            series.rounds = self._rounds(call_at, fastest, samples, caps)
        except _Failed as exc:  # a length that ran in the first pass fails later
            samples.pop(exc.length)
            failed = self._failed(series, exc)
        for length, times in samples.items():
            if not times:
                continue
            best = float(min(times))
            series.points.append({"length": length, "seconds": best, "samples": times})
            self.progress(f"{_label(series)} L={length:<6} {_ms(best)} ({len(times)} calls)", 1)
        remaining = len(self.lengths) - len(series.points) - len(series.skipped) - failed
        if remaining > 0:
            self.progress(f"{_label(series)} stopped after the failure", remaining)

    def _failed(self, series: Series, exc: _Failed) -> int:
        """Marks ``series`` failed (the lengths run before stay measured); returns 1."""
        series.status = "error"
        series.note = str(exc)
        self.progress(f"{_label(series)} L={exc.length:<6} failed: {series.note}", 1)
        return 1

    def _rounds(
        self,
        call_at: Callable[[int], Callable[[], Any]],
        fastest: dict[int, float],
        samples: dict[int, list[float]],
        caps: dict[int, int],
    ) -> int:
        """Rounds over the admitted lengths, in increasing and decreasing order by turns, each
        taking one batch of samples of every length that has fewer rounds than its cap (a
        first call long enough to be a sample counts as its first round): ``rounds`` at
        least, then more while the series has spent under ``series_seconds``, or under 1.5 times
        that while the last round still lowered some point's minimum by more than
        :data:`STILL_IMPROVING` (it has not settled yet); returns how many."""
        start = time.perf_counter()
        taken = {n: 1 if times else 0 for n, times in samples.items()}
        done, improving = 0, True
        while done < self.sampling.max_rounds:
            due = [n for n in samples if taken[n] < min(caps[n], self.sampling.max_rounds)]
            if not due:
                break
            estimate = sum(fastest[n] * _calls(fastest[n]) for n in due)
            after = time.perf_counter() - start + estimate
            budget = (1.5 if improving else 1) * self.sampling.series_seconds
            if min(taken.values()) >= self.sampling.rounds and after > budget:
                break
            improving = False
            for n in due if done % 2 == 0 else reversed(due):
                before = min(samples[n], default=float("inf"))
                samples[n].extend(_round(call_at(n), fastest[n], n))
                improving |= min(samples[n]) < (1 - STILL_IMPROVING) * before
                fastest[n] = min(fastest[n], *samples[n])
                taken[n] += 1
            done += 1
        return max(taken.values(), default=0)

    def _admit(
        self, kernel: SweepKernel, series: Series, fastest: dict[int, float], length: int
    ) -> bool:
        """Whether to run ``length``; when not, records why (once per series)."""
        if series.skipped:
            first = series.skipped[0]
            reason = f"L={first['length']} was skipped: {first['reason']}"
            series.skipped.append({"length": length, "reason": reason})
            return False
        predicted = predict_next(list(fastest.items()), length, kernel.expected_slope)
        reason = None
        if predicted is not None and predicted > self.limits.max_call_seconds:
            reason = (
                f"predicted {predicted:.1f} s per call > the {self.limits.max_call_seconds:g} s "
                "limit (--max-call-seconds)"
            )
        elif series.impl == "numpy" and self.limits.max_bytes is not None:
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


def _caller(
    fn: Callable[..., Any], args_at: Callable[[int], Args]
) -> Callable[[int], Callable[[], Any]]:
    """``length -> (a call of fn on the inputs at length)``."""

    def call_at(length: int) -> Callable[[], Any]:
        positional, keywords = args_at(length)
        return lambda: fn(*positional, **keywords)

    return call_at


def _label(series: Series) -> str:
    return f"{series.kernel:<16} {series.impl:<7}"


def _calls(seconds: Optional[float]) -> int:
    """Calls of one round for a call of about ``seconds``."""
    if seconds is None or seconds <= 0:
        return 1
    return max(1, min(ROUND_CALLS, math.ceil(ROUND_CALL_SECONDS / seconds)))


def _round(fn: Callable[[], Any], seconds: float, length: int) -> list[float]:
    """One round's samples of ``fn``, a call of about ``seconds`` (see :func:`_calls`);
    :class:`_Failed` if it raised."""
    try:
        return sample_seconds(fn, _calls(seconds), warmup=False)
    except Exception as exc:  # noqa: BLE001 - a failing kernel is reported, not fatal
        raise _Failed(length, exc) from exc


def _first_pass(
    fn: Callable[[], Any], predicted: Optional[float], length: int
) -> tuple[float, list[float]]:
    """The first calls at a length: (the fastest, the samples). Calls predicted under
    :data:`SECONDS_WITHOUT_WARMUP` (or not predicted) are warm-up calls for
    :data:`.timing.WARM_UP_SECONDS` (two at least, so that one hiccup does not stop the
    series), timed for the predictions but not samples; a longer call
    is called once, and that call is the first sample."""
    try:
        if predicted is not None and predicted >= SECONDS_WITHOUT_WARMUP:
            first = sample_seconds(fn, 1, warmup=False)
            return first[0], first
        times = timed_warm_up(fn)
    except Exception as exc:  # noqa: BLE001 - a failing kernel is reported, not fatal
        raise _Failed(length, exc) from exc
    return min(times), []


def tiled_inputs(kernel: SweepKernel, rng: np.random.Generator, length: int) -> Args:
    """``kernel.inputs(rng, length)``, but past :data:`INPUT_BLOCK` positions a random block of
    that many is repeated along the sequence axis (the one axis of that size) instead of
    drawing every value: drawing (and shaping) hundreds of MiB of inputs took longer than
    timing the kernels on them, and none of the kernels' costs depends on the values."""
    if length <= INPUT_BLOCK:
        return kernel.inputs(rng, length)
    positional, keywords = kernel.inputs(rng, INPUT_BLOCK)
    copies = -(-length // INPUT_BLOCK)

    def grow(a: Any) -> Any:
        if not isinstance(a, np.ndarray):
            return a
        axes = [i for i, n in enumerate(a.shape) if n == INPUT_BLOCK]
        if len(axes) > 1:
            raise ValueError(f"{kernel.name}: an input of shape {a.shape} has two sequence axes")
        if not axes:
            return a
        reps = [1] * a.ndim
        reps[axes[0]] = copies
        grown = np.tile(a, reps)
        cut = (slice(None),) * axes[0] + (slice(0, length),)
        return np.ascontiguousarray(grown[cut])

    return tuple(grow(a) for a in positional), {k: grow(v) for k, v in keywords.items()}


def fit_lengths(lengths: Sequence[int], fit_from: int, least: int = 3) -> list[int]:
    """The lengths a slope is fitted over: the measured ones from ``fit_from`` on, or the
    ``least`` longest when fewer reach it (a series cut short by the time limit)."""
    ordered = sorted(set(lengths))
    chosen = [n for n in ordered if n >= fit_from]
    return chosen if len(chosen) >= least else ordered[-least:]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:10.3f} ms"


def memory_limit(fraction: float = 0.4) -> Optional[float]:
    """``fraction`` of the memory available now, or None when unknown."""
    available = available_memory_bytes()
    return None if available is None else fraction * available
