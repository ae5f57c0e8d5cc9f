"""Calls every public function with mutated arguments (run in a subprocess by test_fuzz.py, so
that a crash of the interpreter is seen as a failure rather than taking pytest down).

Two passes. The deterministic pass runs every (function, argument, mutation) triple once, on
sizes that are distinct (so that no mutated axis matches another argument's by coincidence)
and again on large sizes (SIMD tails, several threads). The random pass (hypothesis) draws
functions, seeds, arguments and mutations, half of the time on small sizes with zeros and ones.

The contract checked on every call:
- a mutation that breaks a dtype or shape rule raises ValueError or TypeError whose message
  starts with the name of one of the function's arguments; a call that returns is a failure,
  unless the spec lists the mutation as one the argument accepts (then it must return);
- mutations that keep the values (strides, read-only) give the same result as the contiguous
  call (arguments updated in place must instead be refused when they are not writable
  C-contiguous arrays);
- NaN and infinity either return results of the right shapes or raise a named ValueError;
- a BaseException that is not an Exception (PyO3's PanicException) is always a failure.

Usage: python -m fuzz.runner [--examples N]  (prints "fuzz: N calls, M failures").
"""

from __future__ import annotations

import argparse
import inspect
import sys
import traceback

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .specs import SIZES, SPECS, Spec

BAD_DTYPES = {
    "float16": np.float16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
    "complex64": np.complex64,
    "object": object,
}
HUGE = 2**40  # with stride 0: no memory, but 2^40 elements claimed

VALUE_KEEPING = ["fortran", "negative_stride", "sliced", "read_only"]
VALUE_CHANGING = ["nan", "inf"]
BREAKING = [
    *(f"dtype:{name}" for name in BAD_DTYPES),
    "other_float",
    "drop_axis",
    "add_axis",
    "grow_axis",
    "zero_axis",
    "huge",
    "not_array",
    "scalar",
]


def mutations(array: np.ndarray) -> list[str]:
    """Every mutation of ``array``: grow_axis and zero_axis once per axis (``grow_axis:1``)."""
    per_axis = [f"{how}:{axis}" for how in ("grow_axis", "zero_axis") for axis in range(array.ndim)]
    plain = [how for how in BREAKING if how not in ("grow_axis", "zero_axis")]
    return VALUE_KEEPING + VALUE_CHANGING + plain + per_axis


def mutate(array: np.ndarray, how: str, rng: np.random.Generator):
    """Returns a mutated version of ``array`` (or a non-array) for mutation ``how``."""
    how, _, axis_text = how.partition(":")
    if how == "fortran":
        return np.asfortranarray(array) if array.ndim > 1 else array[::1]
    if how == "negative_stride":
        flipped = np.ascontiguousarray(array[..., ::-1]) if array.ndim else array.copy()
        return flipped[..., ::-1] if array.ndim else flipped
    if how == "sliced":
        big = np.zeros(tuple(s * 2 for s in array.shape), array.dtype)
        view = big[tuple(slice(None, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if how == "read_only":
        copy = array.copy()
        copy.setflags(write=False)
        return copy
    if how == "dtype":
        name = axis_text or list(BAD_DTYPES)[int(rng.integers(len(BAD_DTYPES)))]
        return array.astype(BAD_DTYPES[name])
    if how == "other_float":
        return array.astype(np.float64 if array.dtype == np.float32 else np.float32)
    if how == "drop_axis":
        return array[..., 0] if array.ndim and array.shape[-1] else array.reshape(-1)[:0]
    if how == "add_axis":
        return array[..., None]
    if how in ("grow_axis", "zero_axis") and array.ndim == 0:
        return array[None] if how == "grow_axis" else array.reshape(1)[:0]
    if how in ("grow_axis", "zero_axis"):
        axis = int(axis_text) if axis_text else int(rng.integers(array.ndim))
        if how == "zero_axis":
            return np.zeros(_with(array.shape, axis, 0), array.dtype)
        extra = (
            array.take([0], axis=axis)
            if array.shape[axis]
            else np.zeros(_with(array.shape, axis, 1), array.dtype)
        )
        return np.concatenate([array, extra], axis=axis)
    if how == "huge":
        shape = _with(array.shape, 0, HUGE) if array.ndim else (HUGE,)
        return np.lib.stride_tricks.as_strided(
            np.zeros(1, array.dtype), shape=shape, strides=(0,) * len(shape)
        )
    if how == "not_array":
        return ["not", "an", "array"] if rng.integers(2) else "text"
    if how in ("nan", "inf"):
        copy = array.copy()
        if copy.size and copy.dtype.kind == "f":
            copy.flat[int(rng.integers(copy.size))] = np.nan if how == "nan" else np.inf
        return copy
    if how == "scalar":
        return 1.5
    raise AssertionError(how)


def _with(shape, axis, size):
    shape = list(shape)
    shape[axis] = size
    return tuple(shape)


def _shapes(result):
    if isinstance(result, tuple):
        return tuple(_shapes(r) for r in result)
    if not isinstance(result, np.ndarray) and hasattr(result, "shape"):
        return tuple(result.shape)  # a TernaryWeight
    return np.shape(result)


def _copy(kwargs):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}


class Failure(Exception):
    pass


def accepted(spec: Spec, name: str, how: str) -> bool:
    """Whether the spec lists ``how`` (or its family, "grow_axis" for "grow_axis:1") as a
    mutation ``name`` accepts."""
    allowed = spec.accepts.get(name, frozenset())
    return how in allowed or how.partition(":")[0] in allowed


def array_arguments(spec: Spec, rng: np.random.Generator, dtype) -> list[str]:
    return [k for k, v in spec.build(rng, dtype).items() if isinstance(v, np.ndarray)]


def valid_call(spec: Spec, seed: int):
    """The valid arguments of ``seed`` (float32 for odd seeds) and their result."""
    dtype = np.float32 if seed % 2 else np.float64
    valid = spec.build(np.random.default_rng(seed), dtype)
    expected = spec.fn(**_copy(valid))
    if _shapes(expected) != spec.out_shape(valid):
        raise Failure(f"valid call returned {_shapes(expected)}")
    return valid, expected


def check_call(spec: Spec, seed: int, name: str, how: str, strict: bool = True, valid=None):
    """Runs one mutated call of ``spec`` and raises Failure if it breaks the contract. Without
    ``strict`` (sizes that may coincide) a breaking shape mutation may also return. ``valid``
    is ``valid_call(spec, seed)`` when already computed."""
    valid, expected = valid or valid_call(spec, seed)
    if how in ("grow_axis", "zero_axis") and np.ndim(valid[name]):
        # Which axis, so that `accepts` can tell a free axis from a coupled one.
        how = f"{how}:{np.random.default_rng(seed + 2).integers(np.ndim(valid[name]))}"
    params = set(inspect.signature(spec.fn).parameters)
    kwargs = _copy(valid)
    with np.errstate(all="ignore"):  # casting NaN to int8 and the like
        kwargs[name] = mutate(valid[name], how, np.random.default_rng(seed + 1))
    in_place_unusable = (
        name in spec.in_place
        and isinstance(kwargs[name], np.ndarray)
        and not (kwargs[name].flags.c_contiguous and kwargs[name].flags.writeable)
    )
    family = how.partition(":")[0]
    must_raise = (family in BREAKING or how in BREAKING) and not accepted(spec, name, how)
    must_raise |= how in VALUE_KEEPING and in_place_unusable
    try:
        result = spec.fn(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        if not any(message.startswith(f"{p}:") for p in params):
            raise Failure(f"{type(err).__name__} does not name an argument: {message!r}") from err
        if how in VALUE_KEEPING and not in_place_unusable:
            raise Failure(f"{how} {name} was refused: {message!r}") from err
        if accepted(spec, name, how):
            raise Failure(f"{how} {name} is valid but was refused: {message!r}") from err
        return
    except Exception as err:  # noqa: BLE001 - anything else is a finding
        raise Failure(f"{type(err).__name__}: {err}") from err
    if must_raise and (strict or how in VALUE_KEEPING or family not in SHAPE_MUTATIONS):
        raise Failure(f"{how} {name} breaks a rule but the call returned {_shapes(result)}")
    if how in VALUE_KEEPING:
        _assert_same(result, expected)
    elif how in VALUE_CHANGING and _shapes(result) != _shapes(expected):
        raise Failure(f"{how} in {name}: shape {_shapes(result)} != {_shapes(expected)}")


# Mutations whose breaking depends on the sizes (a grown axis of size 0 may match, ...).
SHAPE_MUTATIONS = {"drop_axis", "add_axis", "grow_axis", "zero_axis"}


def _assert_same(result, expected):
    if isinstance(expected, tuple):
        for r, e in zip(result, expected):
            _assert_same(r, e)
        return
    if hasattr(expected, "codes"):  # a TernaryWeight: same codes and scale
        result, expected = (result.codes(), result.gamma), (expected.codes(), expected.gamma)
        return _assert_same(result, expected)
    if not np.array_equal(np.asarray(result), np.asarray(expected), equal_nan=True):
        raise Failure("a value-keeping mutation changed the result")


def _record(failures: list[str], label: str, *args, **kwargs) -> None:
    """Runs ``check_call(*args, **kwargs)``, adding what it finds to ``failures``."""
    try:
        check_call(*args, **kwargs)
    except Failure as failure:
        failures.append(f"{label}: {failure}")
    except BaseException as err:  # noqa: BLE001 - PanicException is a BaseException
        if isinstance(err, KeyboardInterrupt):
            raise
        failures.append(
            f"{label}: {type(err).__name__} escaped: {err}\n{traceback.format_exc(limit=-3)}"
        )


def every_triple(specs: list[Spec], failures: list[str]) -> int:
    """The deterministic pass: each (function, argument, mutation) once on distinct sizes in
    float32 and in float64, and once on large sizes. Returns the number of calls."""
    calls = 0
    per_spec: dict[str, int] = {}
    for mode, seed in (("distinct", 11), ("distinct", 12), ("large", 13)):
        SIZES["mode"] = mode
        for spec in specs:
            try:
                valid = valid_call(spec, seed)
            except Failure as failure:
                failures.append(f"{spec.name} {mode} seed={seed}: {failure}")
                continue
            for name, array in valid[0].items():
                if not isinstance(array, np.ndarray):
                    continue
                for how in mutations(array):
                    calls += 1
                    per_spec[spec.name] = per_spec.get(spec.name, 0) + 1
                    label = f"{spec.name} {mode} seed={seed} {name} {how}"
                    _record(failures, label, spec, seed, name, how, valid=valid)
    for spec_name, count in per_spec.items():
        print(f"fuzz: triples of {spec_name}: {count}")
    return calls


def random_calls(examples: int, specs: list[Spec], failures: list[str]) -> int:
    calls = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        spec=st.sampled_from(specs),
        seed=st.integers(0, 2**31),
        arg=st.integers(0, 30),
        how=st.sampled_from(VALUE_KEEPING + VALUE_CHANGING + BREAKING),
        mode=st.sampled_from(["random", "distinct"]),
    )
    def fuzz(spec, seed, arg, how, mode):
        nonlocal calls
        calls += 1
        SIZES["mode"] = mode
        dtype = np.float32 if seed % 2 else np.float64
        names = array_arguments(spec, np.random.default_rng(seed), dtype)
        name = names[arg % len(names)]
        label = f"{spec.name} {mode} seed={seed} {name} {how}"
        _record(failures, label, spec, seed, name, how, mode != "random")

    fuzz()
    return calls


def run(examples: int, specs: list[Spec]) -> int:
    failures: list[str] = []
    calls = every_triple(specs, failures)
    print(f"fuzz: every triple: {calls} calls")
    calls += random_calls(examples, specs, failures)
    print(f"fuzz: {calls} calls, {len(failures)} failures")
    for failure in failures[:40]:
        print("FAIL", failure)
    return 1 if failures else 0


def _misbehaving(x):
    """A function that breaks the contract: its error names no argument."""
    if not (isinstance(x, np.ndarray) and x.shape == (3,) and x.dtype.kind == "f"):
        raise ValueError("bad input")
    return np.asarray(x) * 2


def _lenient(x):
    """A function that breaks the contract: it accepts any dtype and shape (by casting)."""
    return np.asarray(x, dtype=np.float64).reshape(-1)[:3].copy()


SELF_CHECK = {
    "name": [
        Spec(
            "misbehaving",
            _misbehaving,
            lambda rng, dtype: {"x": np.zeros(3, dtype)},
            lambda a: (3,),
        )
    ],
    "strict": [
        Spec("lenient", _lenient, lambda rng, dtype: {"x": np.zeros(3, dtype)}, lambda a: (3,))
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument(
        "--self-check",
        choices=sorted(SELF_CHECK),
        help="fuzz a function that breaks the contract (must report failures)",
    )
    args = parser.parse_args()
    return run(args.examples, SELF_CHECK[args.self_check] if args.self_check else SPECS)


if __name__ == "__main__":
    sys.exit(main())
