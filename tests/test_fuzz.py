"""Fuzzing of the whole public API, in a subprocess so that a crash is a failure, not the end
of the test run. ``HYPOTHESIS_PROFILE=slow`` runs at least 10,000 calls."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fuzz.runner import BREAKING
from fuzz.specs import SPECS

from seqkern import _native

HERE = Path(__file__).parent
EXAMPLES = {"fast": 300, "slow": 12000}


def run_fuzzer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fuzz.runner", *args],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=3000,
    )


def test_fuzzed_calls_return_or_raise_a_named_error():
    examples = EXAMPLES[os.environ.get("HYPOTHESIS_PROFILE", "fast")]
    done = run_fuzzer("--examples", str(examples))
    print(done.stdout[-4000:])
    # A negative return code is a signal: the interpreter crashed.
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    calls = int(re.search(r"fuzz: (\d+) calls, 0 failures", done.stdout).group(1))
    triples = int(re.search(r"fuzz: every triple: (\d+) calls", done.stdout).group(1))
    assert calls >= triples + examples * 0.9
    # Every public function had every (argument, mutation) pair.
    covered = dict(re.findall(r"fuzz: triples of (\S+): (\d+)", done.stdout))
    assert sorted(covered) == sorted(spec.name for spec in SPECS)
    for spec in SPECS:
        assert int(covered[spec.name]) >= 3 * len(BREAKING), spec.name


@pytest.mark.parametrize(
    "check, finding",
    [("name", "does not name an argument"), ("strict", "breaks a rule but the call returned")],
)
def test_fuzzer_reports_a_function_that_breaks_the_contract(check, finding):
    done = run_fuzzer("--examples", "20", "--self-check", check)
    assert done.returncode == 1
    assert finding in done.stdout


@pytest.mark.parametrize("entry", ["selective_scan_f32", "selective_scan_f64"])
def test_native_scan_rejects_inconsistent_shapes_without_panicking(entry):
    """The Rust layer checks again what the wrapper checked: a direct call with inconsistent
    arrays is a ValueError (a Rust panic would surface as a BaseException)."""
    dtype = np.float32 if entry.endswith("32") else np.float64
    u = np.zeros((2, 3, 4), dtype)
    bad_a = np.zeros((5, 2), dtype)
    bc = np.zeros((2, 2, 4), dtype)
    with pytest.raises(ValueError, match="^A: expected"):
        getattr(_native, entry)(u, u, bad_a, bc, bc, None, None, None, False, None)
    with pytest.raises(ValueError, match="^B: 3 groups must divide dim = 3|^B: expected"):
        getattr(_native, entry)(
            u,
            u,
            np.zeros((3, 2), dtype),
            np.zeros((2, 3, 2, 5), dtype),
            bc,
            None,
            None,
            None,
            False,
            None,
        )


def test_native_update_rejects_inconsistent_shapes_without_panicking():
    state = np.zeros((1, 4, 1, 2), np.float32)
    x = np.zeros((1, 4, 1), np.float32)
    with pytest.raises(ValueError, match="^B: 3 groups must divide"):
        _native.selective_state_update_f32(
            state,
            x,
            np.zeros((1, 4), np.float32),
            np.zeros(4, np.float32),
            np.zeros((1, 3, 2), np.float32),
            np.zeros((1, 3, 2), np.float32),
            None,
            None,
            None,
            False,
        )
