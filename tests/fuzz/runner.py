"""Calls every public function with mutated arguments (run in a subprocess by test_fuzz.py, so
that a crash of the interpreter is seen as a failure rather than taking pytest down).

Every call must either return a result of the right shape or raise ValueError/TypeError whose
message starts with the name of one of the function's arguments. Mutations that keep the values
(strides, read-only) must give the same result as the contiguous call. A BaseException that is
not an Exception (PyO3's PanicException) is always a failure.

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

from .specs import SPECS, Spec

BAD_DTYPES = [np.float16, np.int32, np.int64, np.bool_, np.complex64, object]
HUGE = 2**40  # with stride 0: no memory, but 2^40 elements claimed

VALUE_KEEPING = ["fortran", "negative_stride", "sliced", "read_only"]
BREAKING = [
    "dtype",
    "other_float",
    "drop_axis",
    "add_axis",
    "grow_axis",
    "zero_axis",
    "huge",
    "not_array",
    "nan",
    "inf",
    "scalar",
]


def mutate(array: np.ndarray, how: str, rng: np.random.Generator):
    """Returns a mutated version of ``array`` (or a non-array) for mutation ``how``."""
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
        return array.astype(BAD_DTYPES[rng.integers(len(BAD_DTYPES))])
    if how == "other_float":
        return array.astype(np.float64 if array.dtype == np.float32 else np.float32)
    if how == "drop_axis":
        return array[..., 0] if array.ndim and array.shape[-1] else array.reshape(-1)[:0]
    if how == "add_axis":
        return array[..., None]
    if how == "grow_axis":
        if array.ndim == 0:
            return array[None]
        axis = int(rng.integers(array.ndim))
        return np.concatenate(
            [
                array,
                array.take([0] * 1, axis=axis)
                if array.shape[axis]
                else np.zeros(_with(array.shape, axis, 1), array.dtype),
            ],
            axis=axis,
        )
    if how == "zero_axis":
        if array.ndim == 0:
            return array.reshape(1)[:0]
        axis = int(rng.integers(array.ndim))
        return np.zeros(_with(array.shape, axis, 0), array.dtype)
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


def check_call(spec: Spec, seed: int, arg_index: int, how: str) -> None:
    rng = np.random.default_rng(seed)
    dtype = np.float32 if seed % 2 else np.float64
    valid = spec.build(rng, dtype)
    names = [k for k, v in valid.items() if isinstance(v, np.ndarray)]
    name = names[arg_index % len(names)]
    params = set(inspect.signature(spec.fn).parameters)
    expected = spec.fn(**_copy(valid))
    if _shapes(expected) != _shapes_of_spec(spec, valid):
        raise Failure(f"valid call returned {_shapes(expected)}")
    kwargs = _copy(valid)
    kwargs[name] = mutate(valid[name], how, rng)
    try:
        result = spec.fn(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        if not any(message.startswith(f"{p}:") for p in params):
            raise Failure(f"{type(err).__name__} does not name an argument: {message!r}") from err
        if how in VALUE_KEEPING and not (name in spec.in_place and not _usable(kwargs[name])):
            raise Failure(f"{how} {name} was refused: {message!r}") from err
        return
    except Exception as err:  # noqa: BLE001 - anything else is a finding
        raise Failure(f"{type(err).__name__}: {err}") from err
    if how in VALUE_KEEPING and name in spec.in_place and not _usable(kwargs[name]):
        raise Failure(f"{how} {name} (updated in place) was accepted")
    if how in VALUE_KEEPING:
        _assert_same(result, expected)
    elif how in ("nan", "inf"):
        if _shapes(result) != _shapes(expected):
            raise Failure(f"{how} in {name}: shape {_shapes(result)} != {_shapes(expected)}")


def _usable(array):
    """Whether an in-place argument can be updated in place."""
    return array.flags.c_contiguous and array.flags.writeable


def _shapes_of_spec(spec, valid):
    shape = spec.out_shape(valid)
    return shape


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


def run(examples: int, specs: list[Spec]) -> int:
    calls = 0
    failures: list[str] = []

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
        how=st.sampled_from(VALUE_KEEPING + BREAKING),
    )
    def fuzz(spec, seed, arg, how):
        nonlocal calls
        calls += 1
        try:
            check_call(spec, seed, arg, how)
        except Failure as failure:
            failures.append(f"{spec.name} seed={seed} arg={arg} {how}: {failure}")
        except BaseException as err:  # noqa: BLE001 - PanicException is a BaseException
            if isinstance(err, KeyboardInterrupt):
                raise
            failures.append(
                f"{spec.name} seed={seed} arg={arg} {how}: "
                f"{type(err).__name__} escaped: {err}\n"
                f"{traceback.format_exc(limit=-3)}"
            )

    fuzz()
    print(f"fuzz: {calls} calls, {len(failures)} failures")
    for failure in failures[:20]:
        print("FAIL", failure)
    return 1 if failures else 0


def _misbehaving(x):
    """A function that breaks the contract: its error names no argument."""
    if not (isinstance(x, np.ndarray) and x.shape == (3,) and x.dtype.kind == "f"):
        raise ValueError("bad input")
    return np.asarray(x) * 2


SELF_CHECK = [
    Spec("misbehaving", _misbehaving, lambda rng, dtype: {"x": np.zeros(3, dtype)}, lambda a: (3,))
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="fuzz a function that breaks the contract (must report failures)",
    )
    args = parser.parse_args()
    return run(args.examples, SELF_CHECK if args.self_check else SPECS)


if __name__ == "__main__":
    sys.exit(main())
