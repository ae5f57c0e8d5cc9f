"""Bad input to the Mamba kernels raises ValueError/TypeError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from seqkern.mamba import selective_scan, selective_state_update

BATCH, DIM, DSTATE, LENGTH = 2, 6, 4, 5


def scan_args(dtype=np.float32):
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return dict(
        u=normal(BATCH, DIM, LENGTH),
        delta=normal(BATCH, DIM, LENGTH),
        A=-np.abs(normal(DIM, DSTATE)),
        B=normal(BATCH, DSTATE, LENGTH),
        C=normal(BATCH, DSTATE, LENGTH),
        D=normal(DIM),
        z=normal(BATCH, DIM, LENGTH),
        delta_bias=normal(DIM),
    )


WRONG_SHAPES = {
    "u": [(BATCH, DIM), (BATCH, DIM, LENGTH, 1)],
    "delta": [(BATCH, DIM, LENGTH + 1), (BATCH, DIM)],
    # A defines dstate, so a wrong dstate in A is reported against B (the first to disagree).
    "A": [(DIM + 1, DSTATE), (DIM,)],
    "B": [
        (BATCH, DSTATE, LENGTH + 1),
        (BATCH + 1, DSTATE, LENGTH),
        (DIM, DSTATE + 1),
        (DSTATE,),
        (BATCH, 2, DSTATE + 1, LENGTH),
    ],
    "C": [(BATCH, DSTATE - 1, LENGTH), (DIM + 1, DSTATE), (1, BATCH, 1, DSTATE, LENGTH)],
    "D": [(DIM + 1,), (DIM, 1)],
    "z": [(BATCH, DIM, LENGTH - 1)],
    "delta_bias": [(DIM - 1,), ()],
}


@pytest.mark.parametrize(
    "name,shape", [(n, s) for n, shapes in WRONG_SHAPES.items() for s in shapes]
)
def test_scan_wrong_shape_names_the_argument(name, shape):
    args = scan_args()
    args[name] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"^{name}: expected .*got .*{shape[0] if shape else ''}"):
        selective_scan(**args)


def test_scan_message_states_expected_and_actual_shape():
    args = scan_args()
    args["delta"] = np.zeros((BATCH, DIM, 7), np.float32)
    with pytest.raises(ValueError) as info:
        selective_scan(**args)
    assert str(info.value) == (
        f"delta: expected shape (batch, dim, L) = ({BATCH}, {DIM}, {LENGTH}), got (2, 6, 7)"
    )


def test_scan_initial_state_shape():
    args = scan_args()
    with pytest.raises(ValueError, match=r"^initial_state: expected shape \(batch, dim, dstate\)"):
        selective_scan(**args, initial_state=np.zeros((BATCH, DIM, DSTATE + 1), np.float32))


@pytest.mark.parametrize("name", ["delta", "A", "B", "C", "D", "z", "delta_bias"])
def test_scan_mixed_float_dtypes(name):
    args = scan_args()
    args[name] = args[name].astype(np.float64)
    with pytest.raises(
        TypeError,
        match=rf"^{name}: expected dtype float32 \(the dtype of u\), "
        r"got float64",
    ):
        selective_scan(**args)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16, np.complex64, bool, object])
def test_scan_non_float_u(dtype):
    args = scan_args()
    args["u"] = args["u"].astype(dtype)
    with pytest.raises(TypeError, match=r"^u: expected dtype float32 or float64, got"):
        selective_scan(**args)


def test_scan_integer_b():
    args = scan_args()
    args["B"] = np.ones((BATCH, DSTATE, LENGTH), np.int64)
    with pytest.raises(TypeError, match=r"^B: expected dtype float32"):
        selective_scan(**args)


@pytest.mark.parametrize("name", ["B", "C"])
def test_scan_groups_must_divide_dim(name):
    args = scan_args()
    args[name] = np.zeros((BATCH, 4, DSTATE, LENGTH), np.float32)
    with pytest.raises(ValueError, match=rf"^{name}: 4 groups must divide dim = {DIM}"):
        selective_scan(**args)


def test_scan_zero_groups():
    args = scan_args()
    args["B"] = np.zeros((BATCH, 0, DSTATE, LENGTH), np.float32)
    with pytest.raises(ValueError, match=r"^B: 0 groups must divide"):
        selective_scan(**args)


def test_scan_not_an_array():
    args = scan_args()
    args["u"] = "not an array"
    with pytest.raises(TypeError, match=r"^u: expected dtype float32 or float64"):
        selective_scan(**args)


# --- selective_state_update


def update_args(dtype=np.float32):
    rng = np.random.default_rng(1)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return dict(
        state=normal(BATCH, DIM, DSTATE),
        x=normal(BATCH, DIM),
        dt=normal(BATCH, DIM),
        A=-np.abs(normal(DIM, DSTATE)),
        B=normal(BATCH, DSTATE),
        C=normal(BATCH, DSTATE),
        D=normal(DIM),
        z=normal(BATCH, DIM),
        dt_bias=normal(DIM),
    )


def test_update_read_only_state():
    args = update_args()
    args["state"].setflags(write=False)
    with pytest.raises(ValueError, match=r"^state: the array is read-only"):
        selective_state_update(**args)


def test_update_state_wrong_dtype():
    args = update_args()
    args["state"] = args["state"].astype(np.float64)
    with pytest.raises(TypeError, match=r"^x: expected dtype float64 \(the dtype of state\)"):
        selective_state_update(**args)
    args["state"] = args["state"].astype(np.int32)
    with pytest.raises(TypeError, match=r"^state: expected dtype float32 or float64, got int32"):
        selective_state_update(**args)


def test_update_state_not_an_ndarray():
    args = update_args()
    args["state"] = args["state"].tolist()
    with pytest.raises(TypeError, match=r"^state: expected a numpy.ndarray updated in place"):
        selective_state_update(**args)


def test_update_non_contiguous_state_is_refused_not_copied():
    args = update_args()
    args["state"] = np.zeros((DSTATE, DIM, BATCH), np.float32).transpose(2, 1, 0)
    with pytest.raises(ValueError, match=r"^state: expected a C-contiguous array"):
        selective_state_update(**args)


@pytest.mark.parametrize(
    "name,shape",
    [
        ("x", (BATCH, DIM + 1)),
        ("dt", (BATCH,)),
        ("A", (DIM,)),
        ("B", (BATCH, DSTATE + 1)),
        ("C", (BATCH + 1, DSTATE)),
        ("D", (DIM + 1,)),
        ("z", (BATCH, DIM, 1)),
        ("dt_bias", (DIM, 1)),
        ("state", (BATCH, DIM)),
    ],
)
def test_update_wrong_shape_names_the_argument(name, shape):
    args = update_args()
    args[name] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        selective_state_update(**args)


def test_update_multihead_wrong_shapes():
    rng = np.random.default_rng(2)
    heads, headdim = 4, 3
    good = dict(
        state=np.zeros((BATCH, heads, headdim, DSTATE), np.float32),
        x=rng.standard_normal((BATCH, heads, headdim)).astype(np.float32),
        dt=rng.standard_normal((BATCH, heads)).astype(np.float32),
        A=-np.ones(heads, np.float32),
        B=rng.standard_normal((BATCH, 2, DSTATE)).astype(np.float32),
        C=rng.standard_normal((BATCH, 2, DSTATE)).astype(np.float32),
    )
    selective_state_update(**good)
    for name, shape, pattern in [
        ("A", (heads + 1,), r"^A: expected shape \(nheads,\)"),
        ("A", (heads, headdim), r"^A: expected \(nheads\) or \(nheads, headdim, dstate\)"),
        ("dt", (BATCH, heads + 1), r"^dt: expected shape \(batch, nheads\)"),
        ("B", (BATCH, 3, DSTATE), r"^B: 3 groups must divide nheads = 4"),
        ("C", (BATCH, DSTATE), r"^C: expected \(batch, groups, dstate\)"),
    ]:
        args = dict(good, **{name: np.zeros(shape, np.float32)})
        with pytest.raises(ValueError, match=pattern):
            selective_state_update(**args)
