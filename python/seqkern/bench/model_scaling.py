"""Whole models against the context: the recurrent models and a transformer at equal width.

Four models at hidden 768 and 24 residual sublayers each (each at its published depth: Mamba
and Mamba-2 stack 24 mixer blocks, RWKV-7 and the transformer 12 blocks of a mixer plus an
MLP, the convention that sets mamba-130m beside GPT-3 small), one vocabulary (50280, Mamba's)
for all, random weights, batch 1, float32. What differs is the sequence mixer.

For each model:

- decode: the time of one ``forward`` of one token after a context of C tokens. Its cost does
  not depend on the cache's values: a recurrent model decodes from a state of the right shape
  (from a 16-token prompt, then labelled C tokens), the transformer from a KV cache holding C
  positions of random keys and values (or, for a cache of another layout, prefilled to C tokens
  in pieces);
- prefill: ``model(ids)`` on a prompt of P tokens from an empty cache (all logits);
- the cache or state's bytes (``Cache.nbytes``) at every context;
- the total time to generate N tokens from scratch, integrated from the decode curve (the sum
  of the per-token times at contexts 0 .. N - 1, linear between measured contexts), and checked
  once by a direct ``generate`` of a few tokens.

Each point is the minimum of its samples (the least disturbed run on a shared machine), the
samples of all contexts of a model, and of all prompt lengths of all models, taken in
interleaved rounds; slopes are least-squares fits of log t on log L with a bootstrap interval
over the samples.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .analysis import Crossover, bootstrap_slope, fit_slope, predict_next
from .models import PUBLISHED

HIDDEN, VOCAB = 768, 50280
STATE_PROMPT = 16
"""Tokens of the prompt whose state a recurrent model decodes from (labelled context C)."""
BOOTSTRAP_ROUNDS = 200
DIRECT_REPEATS = 3
SECONDS_WITHOUT_WARMUP = 0.5
"""A prompt's first call counts as a sample when it took this long (else it was a warm-up)."""
STILL_IMPROVING = 0.05
"""A prefill round that lowers a minimum by more than this share is followed by another."""


@dataclass(frozen=True)
class Architecture:
    """One model of the section: a transformers-style config and what to tell the reader."""

    name: str
    label: str
    kind: str
    """"recurrent" (a fixed-size state) or "transformer" (a KV cache growing with the context)."""
    config: dict[str, Any]
    depth: str
    """How its depth counts: blocks, and the residual sublayers they hold."""
    weights: str
    """Its linear layers' number format (float32, or ternary for BitNet)."""
    tiny: dict[str, Any] = field(default_factory=dict)
    """Config overrides giving a tiny model of the same architecture (for tests)."""


ARCHITECTURES = [
    Architecture(
        "mamba",
        "Mamba",
        "recurrent",
        dict(PUBLISHED["mamba-130m"], vocab_size=VOCAB, hidden_size=HIDDEN),
        "24 blocks (mamba-130m), a mixer each: 24 sublayers",
        "float32",
        dict(vocab_size=256, hidden_size=32, num_hidden_layers=2),
    ),
    Architecture(
        "mamba2",
        "Mamba-2",
        "recurrent",
        dict(PUBLISHED["mamba2-130m"], vocab_size=VOCAB, hidden_size=HIDDEN),
        "24 blocks (mamba2-130m), a mixer each: 24 sublayers",
        "float32",
        dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_heads=2, head_dim=32,
             state_size=16, chunk_size=16),
    ),
    Architecture(
        "rwkv7",
        "RWKV-7",
        "recurrent",
        dict(
            model_type="rwkv_x070",
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=12,
            head_size=64,
            intermediate_size=4 * HIDDEN,
            decay_low_rank=64,
            a_low_rank=64,
            v_low_rank=32,
            gate_low_rank=128,
        ),
        "12 blocks (RWKV-7 0.1B), time mix + channel mix: 24 sublayers",
        "float32",
        dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, head_size=32,
             intermediate_size=128, decay_low_rank=8, a_low_rank=8, v_low_rank=8,
             gate_low_rank=8),
    ),
    Architecture(
        "transformer",
        "Transformer (BitNet)",
        "transformer",
        dict(
            model_type="bitnet",
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=3,
            intermediate_size=2048,
            hidden_act="relu2",
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            max_position_embeddings=65536,
            tie_word_embeddings=True,
        ),
        "12 blocks, attention + MLP: 24 sublayers; 12 heads of 64, 3 KV heads (BitNet-2B's 4:1)",
        "ternary (BitLinear, int8 activations), as BitNet b1.58",
        dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=128, max_position_embeddings=4096),
    ),
]  # fmt: skip

NAMES = tuple(a.name for a in ARCHITECTURES)


@dataclass(frozen=True)
class Plan:
    """What to measure: contexts and prompt lengths, samples, the fitting ranges."""

    contexts: list[int]
    prompts: list[int]
    decode_samples: int
    prefill_repeats: int
    """Samples per prompt length at least ..."""
    prefill_max_repeats: int
    """... and at most, taking more while the prefill rounds have taken under ..."""
    prefill_seconds: float
    """... this long (per model)."""
    direct_tokens: int
    decode_fit_from: int
    prefill_fit_from: int
    max_call_seconds: float
    max_bytes: Optional[float]
    tiny: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "contexts": self.contexts,
            "prompts": self.prompts,
            "decode_samples": self.decode_samples,
            "prefill_repeats": self.prefill_repeats,
            "prefill_max_repeats": self.prefill_max_repeats,
            "prefill_seconds": self.prefill_seconds,
            "direct_tokens": self.direct_tokens,
            "decode_fit_from": self.decode_fit_from,
            "prefill_fit_from": self.prefill_fit_from,
            "statistic": "minimum",
            "prefill_statistic": "median",
            "tiny": self.tiny,
        }


def steps(plan: Plan, names: Sequence[str]) -> int:
    """Progress steps: per model, one build, one per prompt and context, one direct run (as
    :attr:`ModelRunner.per_model`)."""
    return len(names) * (2 + len(plan.prompts) + len(plan.contexts))


class Unavailable(Exception):
    """An architecture this build of seqkern.models does not have."""


def config_of(arch: Architecture, tiny: bool) -> dict[str, Any]:
    """The config the section builds (the tiny one for tests)."""
    return dict(arch.config, **arch.tiny) if tiny else dict(arch.config)


def build(arch: Architecture, tiny: bool = False, seed: int = 0) -> Any:
    """The model with random weights; :class:`Unavailable` when its model_type is not in
    :data:`seqkern.models.ARCHITECTURES`."""
    from .. import models
    from ..models.testing import random_model

    config = config_of(arch, tiny)
    model_type = config["model_type"]
    if model_type not in models.ARCHITECTURES:
        raise Unavailable(
            f"model_type {model_type!r} is not in seqkern.models.ARCHITECTURES "
            f"(this build has {', '.join(sorted(models.ARCHITECTURES))})"
        )
    module = importlib.import_module(models.ARCHITECTURES[model_type])
    options: dict[str, Any] = {}
    if hasattr(module, "random_initializers"):
        options["initializers"] = module.random_initializers()
    return random_model(config, seed=seed, dtype=np.float32, **options)


# --- caches at a given context


def cache_at(model: Any, arch: Architecture, context: int, ids: np.ndarray, cache: Any) -> Any:
    """A cache holding ``context`` tokens for a decode at that context.

    Recurrent: the state after a short prompt, labelled ``context`` tokens (a state has the same
    shape and decode cost at any context). Transformer: a KV cache of random keys and values
    filled to ``context`` positions when it has the layout of :func:`has_kv_layout`, else
    ``cache`` (from the previous, shorter context, or None) extended by prefilling the missing
    tokens of ``ids``, so that it holds exactly ``context`` tokens."""
    if arch.kind == "recurrent":
        if cache is None:
            _, cache = model.forward(ids[:, :STATE_PROMPT])
        cache.seq_len = context
        return cache
    fresh = model.new_cache(1)
    if has_kv_layout(fresh):
        return random_kv_cache(fresh, context, np.random.default_rng(context))
    done = 0 if cache is None else cache.seq_len
    if done > context:  # the decode timings went past this context: start again
        cache, done = None, 0
    chunk = 1024
    while done < context:
        end = min(context, done + chunk)
        _, cache = model.forward(ids[:, done:end], cache)
        done = end
    return cache


def has_kv_layout(cache: Any) -> bool:
    """Whether ``cache`` holds keys and values as arrays ``k`` and ``v`` of shape (layers,
    batch, kv_heads, capacity, head_dim), the first ``seq_len`` positions in use (BitNet's)."""
    arrays = cache.arrays
    return set(arrays) == {"k", "v"} and all(a.ndim == 5 for a in arrays.values())


def random_kv_cache(cache: Any, context: int, rng: np.random.Generator) -> Any:
    """``cache`` (empty, :func:`has_kv_layout`) grown by doubling to hold ``context`` positions
    and filled with random keys and values there: what a prefill leaves, for the cost of a
    decode (attention reads every position, whatever it holds)."""
    for name, old in list(cache.arrays.items()):
        capacity = max(old.shape[3], 1)
        while capacity < context:
            capacity *= 2
        grown = np.zeros(old.shape[:3] + (capacity,) + old.shape[4:], old.dtype)
        shape = old.shape[:3] + (context,) + old.shape[4:]
        grown[:, :, :, :context] = rng.standard_normal(shape, dtype=np.float32)
        cache.arrays[name] = grown
    cache.seq_len = context
    return cache


# --- timing


def _minimum(samples: Sequence[float]) -> float:
    """The statistic of a decode point: the fastest sample."""
    return float(min(samples))


def _median(samples: Sequence[float]) -> float:
    """The statistic of a prefill point: the median sample. A prefill call of a second or so
    on a shared machine is rarely undisturbed, so its fastest sample is a matter of luck
    (the samples at the longest prompts fall in two groups some 30 % apart, and whether one
    lands in the faster is what moved the slope between runs); the median is the typical
    call, reproducible while the load is, and equal to the minimum on a quiet machine."""
    return float(np.median(samples))


def _time_once(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds of one call ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _time_calls(fn: Callable[[], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


# --- the integrated generation time and the crossovers


def per_token_curve(points: Sequence[tuple[int, float]]) -> Callable[[np.ndarray], np.ndarray]:
    """t(c) for any context c >= 0: linear between measured contexts, the first point's value
    below it, the line through the last two beyond."""
    xs = np.array([p[0] for p in points], float)
    ys = np.array([p[1] for p in points], float)

    def t(c: np.ndarray) -> np.ndarray:
        inside = np.interp(c, xs, ys)
        if len(xs) < 2:
            return inside
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return np.where(c > xs[-1], ys[-1] + slope * (c - xs[-1]), inside)

    return t


def generation_seconds(points: Sequence[tuple[int, float]], tokens: Sequence[int]) -> list[float]:
    """The time to generate N tokens from an empty cache, sum of t(c) for c = 0 .. N - 1."""
    t = per_token_curve(points)
    longest = max(tokens)
    cumulative = np.cumsum(t(np.arange(longest, dtype=float)))
    return [float(cumulative[n - 1]) for n in tokens]


def decode_line(points: Sequence[tuple[int, float]]) -> Optional[tuple[float, float]]:
    """Least-squares t = a + b C over the points: (a seconds, b seconds per context token)."""
    if len({c for c, _ in points}) < 2:
        return None
    b, a = np.polyfit([c for c, _ in points], [t for _, t in points], 1)
    return float(a), float(b)


def lines_meet(recurrent: Sequence[tuple[int, float]], transformer: Sequence[tuple[int, float]]):
    """The context where the decode lines t = a + b C of the two models meet (None when the
    transformer's does not rise faster)."""
    rec, tra = decode_line(recurrent), decode_line(transformer)
    if rec is None or tra is None or tra[1] <= rec[1]:
        return None
    return (rec[0] - tra[0]) / (tra[1] - rec[1])


def overtakes(
    recurrent: Sequence[tuple[int, float]],
    transformer: Sequence[tuple[int, float]],
    beyond: Optional[float],
) -> Crossover:
    """The length from which ``recurrent`` stays cheaper than ``transformer`` (both as
    (length, seconds)): interpolated linearly in L between measured lengths, ``below`` when it
    is cheaper everywhere; when it is still dearer at the longest, ``beyond`` (the length the
    fitted decode lines give, if any) when that lies past the measured lengths."""
    rec, tra = dict(recurrent), dict(transformer)
    common = sorted(set(rec) & set(tra))
    if not common:
        return Crossover("no data", None)
    gaps = [rec[n] - tra[n] for n in common]
    dearer = [i for i, g in enumerate(gaps) if g >= 0]
    if not dearer:
        return Crossover("below", float(common[0]))
    last = dearer[-1]
    if last + 1 < len(common):
        x0, x1, g0, g1 = common[last], common[last + 1], gaps[last], gaps[last + 1]
        return Crossover("measured", x0 + (x1 - x0) * g0 / (g0 - g1))
    if beyond is None or beyond <= common[-1]:
        return Crossover("none", None)
    return Crossover("extrapolated", beyond)


# --- one architecture


def _slope_json(
    samples: dict[int, list[float]],
    fit_from: int,
    seed: int,
    statistic: Callable[[Sequence[float]], float] = _minimum,
) -> dict[str, Any]:
    used = {n: s for n, s in samples.items() if n >= fit_from}
    points = [(n, statistic(s)) for n, s in sorted(used.items())]
    fit = fit_slope(points, longer_half_only=False)
    if fit is None:
        return {"slope": None, "low": None, "high": None, "lengths": []}
    low, high = bootstrap_slope(used, statistic, BOOTSTRAP_ROUNDS, seed)
    return {"slope": fit.slope, "low": low, "high": high, "lengths": list(fit.fitted)}


def _exact_slope(points: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """The log-log slope of exact values (cache bytes) over the longer half."""
    fit = fit_slope([(n, v) for n, v in points if v > 0])
    if fit is None:
        return {"slope": None, "low": None, "high": None, "lengths": []}
    return {"slope": fit.slope, "low": fit.slope, "high": fit.slope, "lengths": list(fit.fitted)}


def empty_record(arch: Architecture, tiny: bool) -> dict[str, Any]:
    """The record of one architecture before anything is measured."""
    none = {"slope": None, "low": None, "high": None, "lengths": []}
    return {
        "name": arch.name,
        "label": arch.label,
        "kind": arch.kind,
        "model_type": arch.config["model_type"],
        "config": config_of(arch, tiny),
        "depth": arch.depth,
        "weights": arch.weights,
        "status": "ok",
        "note": "",
        "parameters": None,
        "build_seconds": None,
        "decode": [],
        "prefill": [],
        "generation": [],
        "direct": None,
        "skipped": [],
        "decode_line": None,
        "slopes": {"decode": none, "prefill": none, "generation": none, "cache": none},
    }


@dataclass
class _Built:
    """One architecture in a run: its record, its model (None if not built), and how many of
    its progress steps have been reported."""

    arch: Architecture
    record: dict[str, Any]
    model: Any = None
    done: int = 0
    ids: Any = None
    samples: dict[int, list[float]] = field(default_factory=dict)


class ModelRunner:
    """Measures the architectures, reporting to ``progress(msg, steps)``: builds them all,
    prefills them all in interleaved rounds, then decodes each in turn."""

    def __init__(self, plan: Plan, names: Sequence[str], progress: Callable, seed: int = 0):
        self.plan = plan
        self.archs = [a for a in ARCHITECTURES if a.name in names]
        self.progress = progress
        self.seed = seed

    @property
    def per_model(self) -> int:
        """Progress steps per model: build, one per prompt and context, the direct run."""
        return 2 + len(self.plan.prompts) + len(self.plan.contexts)

    def run(self) -> list[dict[str, Any]]:
        built = [self._build(arch) for arch in self.archs]
        live = [b for b in built if b.model is not None]
        self._prefill(live)
        for b in live:
            if b.record["status"] == "ok":
                try:
                    b.done += self._decode(b.arch, b.model, b.record)
                    self._direct(b.arch, b.model, b.record)
                    b.done += 1
                except Exception as exc:  # noqa: BLE001 - a failing model is reported
                    self._fail(b, exc)
            self._summarise(b.record)
            b.model = None  # free its weights before the next model decodes
        return [b.record for b in built]

    def _say(self, arch: Architecture, message: str, steps: int = 1) -> None:
        self.progress(f"model    {arch.name:<12} {message}", steps)

    def _fail(self, b: _Built, exc: Exception) -> None:
        b.record.update(status="error", note=f"{type(exc).__name__}: {exc}")
        self._say(b.arch, f"failed: {b.record['note']}", self.per_model - b.done)
        b.done = self.per_model

    def _build(self, arch: Architecture) -> _Built:
        b = _Built(arch, empty_record(arch, self.plan.tiny))
        start = time.perf_counter()
        try:
            b.model = build(arch, self.plan.tiny, self.seed)
        except Unavailable as exc:
            b.record.update(status="unavailable", note=str(exc))
            self._say(arch, f"skipped: {exc}", self.per_model)
            return b
        except Exception as exc:  # noqa: BLE001 - a model that fails to build is reported
            b.record.update(status="error", note=f"build: {type(exc).__name__}: {exc}")
            self._say(arch, f"failed: {b.record['note']}", self.per_model)
            return b
        b.record["parameters"] = int(b.model.num_parameters)
        b.record["build_seconds"] = time.perf_counter() - start
        self._say(arch, f"built, {b.model.num_parameters / 1e6:.1f}M parameters")
        b.done = 1
        return b

    def _ids(self, model: Any, length: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        return rng.integers(0, model.vocab_size, (1, length))

    def _prefill(self, live: list[_Built]) -> None:
        """Prefill at every prompt length of every model: a first pass per model in increasing
        length (which admits the lengths under the time limit and warms up), then rounds over
        all models and admitted lengths, so that a burst of load on a shared machine, which
        lasts seconds, touches every model and length alike."""
        for b in live:
            try:
                self._prefill_first(b)
            except Exception as exc:  # noqa: BLE001 - a failing model is reported
                self._fail(b, exc)
        measuring = [b for b in live if b.record["status"] == "ok"]
        self._prefill_rounds(measuring)
        for b in measuring:
            if b.record["status"] != "ok":
                continue
            for length, times in b.samples.items():
                point = {"length": length, "seconds": _median(times), "samples": times}
                b.record["prefill"].append(point)
                self._say(b.arch, f"prefill P={length:<6} {_median(times) * 1e3:10.2f} ms")
            b.done += len(b.samples)

    def _prefill_first(self, b: _Built) -> None:
        plan, arch, model = self.plan, b.arch, b.model
        b.ids = self._ids(model, max(plan.prompts))
        firsts: list[tuple[int, float]] = []
        for length in plan.prompts:
            predicted = predict_next(firsts, length, 2.0 if arch.kind == "transformer" else 1.0)
            if predicted is not None and predicted > plan.max_call_seconds:
                reason = f"predicted {predicted:.1f} s per call > {plan.max_call_seconds:g} s"
                b.record["skipped"].append({"what": "prefill", "length": length, "reason": reason})
                self._say(arch, f"prefill P={length:<6} skipped: {reason}")
                b.done += 1
                continue
            first = _time_once(model, b.ids[:, :length])
            firsts.append((length, first))
            # A first call this long is a sample; a shorter one was the warm-up.
            b.samples[length] = [first] if first >= SECONDS_WITHOUT_WARMUP else []

    def _prefill_rounds(self, measuring: list[_Built]) -> None:
        """Rounds over every model and prompt length, one sample each, until every point has
        ``prefill_repeats`` samples; then more, up to ``prefill_max_repeats``, while the rounds
        have taken less than ``prefill_seconds`` per model, or less than 1.5 times that while the
        last round still lowered some point's minimum by more than :data:`STILL_IMPROVING` (a
        burst of load on a shared machine slows calls this long several times over, and lasts
        seconds: the minimum has not settled while it is still falling)."""
        plan = self.plan
        start = time.perf_counter()
        last_round, improving = 0.0, True
        while True:
            going = [b for b in measuring if b.record["status"] == "ok" and b.samples]
            if not going:
                return
            fewest = min(len(t) for b in going for t in b.samples.values())
            if fewest >= plan.prefill_max_repeats:
                return
            if fewest >= plan.prefill_repeats:
                after = time.perf_counter() - start + last_round
                budget = (1.5 if improving else 1) * plan.prefill_seconds * len(going)
                if after > budget:
                    return
            begun = time.perf_counter()
            improving = False
            # Until every point has its least samples, only the points short of it are due
            # (a first call long enough counted as a sample).
            target = (
                plan.prefill_repeats if fewest < plan.prefill_repeats else plan.prefill_max_repeats
            )
            for b in going:
                try:
                    improving |= self._prefill_round(b, target)
                except Exception as exc:  # noqa: BLE001 - a failing model is reported
                    self._fail(b, exc)
            last_round = time.perf_counter() - begun

    def _prefill_round(self, b: _Built, target: int) -> bool:
        """One sample of each of ``b``'s prompt lengths that has fewer than ``target``;
        whether one of them lowered its minimum by more than :data:`STILL_IMPROVING`."""
        improving = False
        for length, times in b.samples.items():
            if len(times) < target:
                before = min(times, default=float("inf"))
                times.append(_time_once(b.model, b.ids[:, :length]))
                improving |= times[-1] < (1 - STILL_IMPROVING) * before
        return improving

    def _decode(self, arch: Architecture, model: Any, record: dict[str, Any]) -> int:
        """Decode at every context: the caches of all contexts are made first, then each round
        decodes one token from each of them (after two untimed tokens each)."""
        plan = self.plan
        ids = self._ids(model, max(plan.contexts) + 1)
        token = ids[:, -1:]
        caches: dict[int, Any] = {}
        cache = None
        for context in plan.contexts:
            reason = self._decode_skip(arch, caches, context)
            if reason is not None:
                record["skipped"].append({"what": "decode", "length": context, "reason": reason})
                self._say(arch, f"decode  C={context:<6} skipped: {reason}")
                continue
            cache = cache_at(model, arch, context, ids, cache)
            caches[context] = cache.copy()
        nbytes = {context: int(c.nbytes) for context, c in caches.items()}
        samples: dict[int, list[float]] = {context: [] for context in caches}
        for c in caches.values():
            _time_calls(lambda c=c: model.forward(token, c), 2)
        for _ in range(plan.decode_samples):
            for context, c in caches.items():
                samples[context].append(_time_once(model.forward, token, c))
        for context, times in samples.items():
            record["decode"].append(
                {
                    "context": context,
                    "seconds": min(times),
                    "samples": times,
                    "cache_bytes": nbytes[context],
                }
            )
            self._say(
                arch,
                f"decode  C={context:<6} {min(times) * 1e3:10.2f} ms/token, "
                f"cache {nbytes[context] / 2**20:8.2f} MiB",
            )
        return len(plan.contexts)

    def _decode_skip(self, arch: Architecture, caches: dict[int, Any], context: int):
        """Why the decode at ``context`` is not run (the KV caches held at once would pass the
        memory limit), or None."""
        if arch.kind != "transformer" or not caches or self.plan.max_bytes is None:
            return None
        longest = max(caches)
        per_token = caches[longest].nbytes / max(longest, 1)
        held = per_token * (sum(caches) + 2 * context)
        if held > self.plan.max_bytes:
            return (
                f"its KV cache with the shorter ones held, about {held / 2**30:.1f} GiB, "
                f"> the {self.plan.max_bytes / 2**30:.1f} GiB memory limit"
            )
        return None

    def _direct(self, arch: Architecture, model: Any, record: dict[str, Any]) -> None:
        """Real ``generate`` runs of a few tokens from a one-token prompt (the fastest of
        :data:`DIRECT_REPEATS`), to set beside the integral."""
        tokens = self.plan.direct_tokens
        prompt = self._ids(model, 1)
        seconds = min(_time_calls(lambda: model.generate(prompt, tokens - 1), DIRECT_REPEATS))
        record["direct"] = {"tokens": tokens, "seconds": seconds, "integrated_seconds": None}
        self._say(arch, f"generate N={tokens:<5} {seconds * 1e3:10.1f} ms (greedy, direct)")

    def _summarise(self, record: dict[str, Any]) -> None:
        decode = {p["context"]: p["samples"] for p in record["decode"]}
        prefill = {p["length"]: p["samples"] for p in record["prefill"]}
        points = [(p["context"], p["seconds"]) for p in record["decode"]]
        slopes = record["slopes"]
        slopes["decode"] = _slope_json(decode, self.plan.decode_fit_from, self.seed)
        slopes["prefill"] = _slope_json(prefill, self.plan.prefill_fit_from, self.seed, _median)
        slopes["cache"] = _exact_slope([(p["context"], p["cache_bytes"]) for p in record["decode"]])
        if not points:
            return
        contexts = [c for c, _ in points]
        totals = generation_seconds(points, contexts)
        record["generation"] = [{"tokens": n, "seconds": s} for n, s in zip(contexts, totals)]
        slopes["generation"] = _generation_slope(decode, contexts, self.plan, self.seed)
        line = decode_line(points)
        if line is not None:
            record["decode_line"] = {"intercept_seconds": line[0], "seconds_per_token": line[1]}
        if record["direct"] is not None:
            record["direct"]["integrated_seconds"] = generation_seconds(
                points, [record["direct"]["tokens"]]
            )[0]


def _generation_slope(
    decode: dict[int, list[float]], contexts: list[int], plan: Plan, seed: int
) -> dict[str, Any]:
    """The log-log slope of the integrated generation time against N over the decode fitting
    range, with a bootstrap interval from the decode samples."""
    used = [n for n in contexts if n >= plan.decode_fit_from]
    points = [(c, _minimum(decode[c])) for c in contexts]
    totals = list(zip(contexts, generation_seconds(points, contexts)))
    fit = fit_slope([p for p in totals if p[0] in used], longer_half_only=False)
    if fit is None:
        return {"slope": None, "low": None, "high": None, "lengths": []}
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(BOOTSTRAP_ROUNDS):
        points = [(c, min(rng.choice(decode[c], len(decode[c])))) for c in contexts]
        resampled = list(zip(contexts, generation_seconds(points, contexts)))
        refit = fit_slope([p for p in resampled if p[0] in used], longer_half_only=False)
        if refit is not None:
            slopes.append(refit.slope)
    low, high = np.percentile(slopes, [5, 95]) if slopes else (fit.slope, fit.slope)
    return {"slope": fit.slope, "low": float(low), "high": float(high), "lengths": list(fit.fitted)}


def crossovers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each recurrent model with timings, the context from which it decodes a token more
    cheaply than the transformer, and the N from which it generates N tokens more cheaply."""
    transformers = [r for r in records if r["kind"] == "transformer" and r["decode"]]
    found = []
    for r in records:
        if r["kind"] != "recurrent" or not r["decode"]:
            continue
        for t in transformers:
            decode = _pairs(r["decode"], "context"), _pairs(t["decode"], "context")
            meet = lines_meet(*decode)
            per_token = overtakes(*decode, meet)
            # Summed over c < N, a + b c gives a N + b N^2 / 2: the sums meet at twice the C.
            total = overtakes(
                _pairs(r["generation"], "tokens"),
                _pairs(t["generation"], "tokens"),
                None if meet is None else 2 * meet,
            )
            found.append(
                {
                    "model": r["name"],
                    "against": t["name"],
                    "decode_kind": per_token.kind,
                    "decode_context": per_token.length,
                    "generation_kind": total.kind,
                    "generation_tokens": total.length,
                }
            )
    return found


def _pairs(points: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(p[key], p["seconds"]) for p in points]
