"""The report command's own logic: slope fits, crossovers, the results schema, and that a tiny
run writes every file. Timings are synthetic or ignored: nothing here asserts a speed."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import sys
import types

import numpy as np
import pytest

from seqkern.bench import __main__ as entry
from seqkern.bench import report, sweeps
from seqkern.bench.analysis import crossover, fit_slope, longer_half, predict_next
from seqkern.bench.cases import Case
from seqkern.bench.results import SCHEMA_ID, validate

LENGTHS = [128, 256, 512, 1024, 2048, 4096]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def power_law(scale, slope, lengths=LENGTHS, overhead=0.0):
    return [(n, overhead + scale * n**slope) for n in lengths]


# --- slopes


@pytest.mark.parametrize("slope", [0.5, 1.0, 2.0, 2.3])
def test_fit_recovers_the_exponent_of_a_power_law(slope):
    fit = fit_slope(power_law(1e-7, slope))
    assert fit.slope == pytest.approx(slope, abs=1e-12)
    assert fit.predict(3000) == pytest.approx(1e-7 * 3000**slope, rel=1e-9)


def test_fit_uses_the_longer_half_and_ignores_short_length_overheads():
    # A fixed 1 ms overhead dominates the short lengths; over the longer half the linear
    # term dominates, so the fitted slope is near 1 where a fit over all points is not.
    points = power_law(1e-5, 1.0, overhead=1e-3)
    fit = fit_slope(points)
    assert fit.fitted == (1024, 2048, 4096)
    assert 0.85 < fit.slope < 1.0
    everything = fit_slope([(1, 1.0)] + points)  # 7 points: the longer half has 4
    assert everything.fitted == (512, 1024, 2048, 4096)


def test_fit_with_noise_stays_close():
    rng = np.random.default_rng(1)
    noisy = [(n, t * math.exp(rng.normal(0, 0.03))) for n, t in power_law(1e-9, 2.0)]
    assert fit_slope(noisy).slope == pytest.approx(2.0, abs=0.1)


def test_longer_half_edge_cases():
    assert longer_half([(8, 1.0)]) == [(8, 1.0)]
    assert longer_half([(16, 2.0), (8, 1.0)]) == [(8, 1.0), (16, 2.0)]
    assert longer_half([(8, 1.0), (16, 2.0), (32, 4.0)]) == [(16, 2.0), (32, 4.0)]
    assert fit_slope([(8, 1.0)]) is None
    assert fit_slope([]) is None
    assert fit_slope([(8, 1.0), (8, 2.0)]) is None


def test_prediction_clamps_a_noisy_local_slope():
    points = [(256, 0.010), (512, 0.200)]  # a 20x jump: local slope 4.3
    assert predict_next(points, 1024, expected_slope=2.0) == pytest.approx(0.2 * 2**2.5)
    assert predict_next(points[:1], 1024, expected_slope=1.0) == pytest.approx(0.04)
    assert predict_next([(256, 0.2), (512, 0.1)], 1024, 1.0) == pytest.approx(0.2)
    assert predict_next([], 1024, 1.0) is None


# --- crossovers


def test_crossover_between_measured_lengths_is_exact_for_power_laws():
    # 1e-5 L vs 1e-8 L^2 meet at L = 1000, between 512 and 1024.
    c = crossover(power_law(1e-5, 1.0), power_law(1e-8, 2.0))
    assert c.kind == "measured"
    assert c.length == pytest.approx(1000.0, rel=1e-9)


def test_crossover_below_the_first_length():
    c = crossover(power_law(1e-9, 1.0), power_law(1e-8, 2.0))
    assert (c.kind, c.length) == ("below", 128.0)


def test_crossover_extrapolated_beyond_the_measured_lengths():
    c = crossover(power_law(1e-3, 1.0), power_law(1e-8, 2.0))  # they meet at 1e5
    assert c.kind == "extrapolated"
    assert c.length == pytest.approx(1e5, rel=1e-6)


def test_crossover_not_reached_when_slopes_do_not_cross():
    c = crossover(power_law(1e-3, 2.0), power_law(1e-8, 2.0))
    assert (c.kind, c.length) == ("none", None)
    assert "not reached" in c.describe()


def test_crossover_takes_the_last_sign_change():
    # Cheaper at 128 by noise, then dearer until 1024, then cheaper for good.
    recurrence = [(128, 0.5), (256, 3.0), (512, 3.0), (1024, 1.0), (2048, 1.0)]
    attention = [(128, 1.0), (256, 1.0), (512, 2.0), (1024, 4.0), (2048, 16.0)]
    c = crossover(recurrence, attention)
    assert c.kind == "measured" and 512 < c.length < 1024


def test_crossover_without_common_lengths():
    assert crossover([(128, 1.0)], [(256, 1.0)]).kind == "no data"


def test_report_crossovers_pair_each_recurrence_with_attention_of_the_same_impl():
    def series(kernel, impl, points):
        return {
            "kernel": kernel,
            "impl": impl,
            "points": [{"length": n, "seconds": t} for n, t in points],
        }

    found = report.crossovers(
        [
            series("causal_attention", "seqkern", power_law(1e-8, 2.0)),
            series("causal_attention", "numpy", []),
            series("wkv6", "seqkern", power_law(1e-5, 1.0)),
            series("wkv6", "numpy", power_law(1e-4, 1.0)),
        ]
    )
    assert len(found) == 1
    assert found[0]["kernel"] == "wkv6" and found[0]["impl"] == "seqkern"
    assert found[0]["length"] == pytest.approx(1000.0)


# --- the runner


def _fake_kernel(fast=("math", "hypot"), reference=("math", "hypot"), **kw):
    def inputs(rng, length):
        return (float(length), 1.0), {}

    return sweeps.SweepKernel(
        kw.get("name", "fake"),
        "toy",
        "two floats",
        fast,
        reference,
        inputs,
        kw.get("reference_bytes", lambda n: 0.0),
        kw.get("expected_slope", 1.0),
    )


GENEROUS = sweeps.Limits(60.0, None)


def _run(kernel, lengths=(8, 16, 32), limits=GENEROUS):
    messages = []
    runner = sweeps.SweepRunner(
        [kernel], list(lengths), 1, limits, lambda m, steps: messages.append((m, steps))
    )
    return runner.run(), messages, runner.steps


def test_runner_measures_every_point_and_reports_progress():
    (fast, ref), messages, steps = _run(_fake_kernel())
    assert [p["length"] for p in fast.points] == [8, 16, 32]
    assert fast.status == ref.status == "ok"
    assert sum(s for _, s in messages) == steps == 6


def test_runner_marks_missing_functions_unavailable():
    kernel = _fake_kernel(fast=("seqkern.no_such_family", "kernel"), reference=("math", "nope"))
    (fast, ref), messages, steps = _run(kernel)
    assert fast.status == ref.status == "unavailable"
    assert "seqkern.no_such_family.kernel is missing" in fast.note
    assert not fast.points and sum(s for _, s in messages) == steps


def test_runner_skips_points_over_the_time_and_memory_limits():
    kernel = _fake_kernel(reference_bytes=lambda n: 1e3 * n)
    (fast, ref), _, _ = _run(kernel, limits=sweeps.Limits(1e-12, 2e4))
    assert [p["length"] for p in fast.points] == [8]  # the next is predicted too slow
    assert [s["length"] for s in fast.skipped] == [16, 32]
    assert "per call" in fast.skipped[0]["reason"]
    assert fast.skipped[1]["reason"].startswith("L=16 was skipped: predicted")
    (fast, ref), _, _ = _run(kernel, limits=sweeps.Limits(60.0, 2e4))
    assert [p["length"] for p in ref.points] == [8, 16]  # 32 needs 3.2e4 bytes
    assert "GiB memory limit" in ref.skipped[0]["reason"]


def test_runner_repeats_long_calls_fewer_times(monkeypatch):
    monkeypatch.setattr(sweeps, "LONG_CALL_SECONDS", 0.0)  # every predicted call is "long"
    monkeypatch.setattr(sweeps, "ROUND_CALLS", 1)
    runner = sweeps.SweepRunner([_fake_kernel()], [8, 16], 5, GENEROUS, lambda m, s: None)
    fast, _ = runner.run()
    assert [len(p["samples"]) for p in fast.points] == [5, 3]
    assert fast.rounds == 5


def _recording(monkeypatch):
    calls = []
    monkeypatch.setattr(
        sweeps, "resolve", lambda module, name: lambda x, y: calls.append((module, x))
    )
    monkeypatch.setattr(sweeps, "settle_after_numpy", lambda: None)
    return calls


def test_runner_interleaves_rounds_over_the_lengths(monkeypatch):
    calls = _recording(monkeypatch)
    monkeypatch.setattr(sweeps, "ROUND_CALLS", 1)
    sampling = sweeps.Sampling(rounds=3, max_rounds=3, series_seconds=0.0)
    kernel = _fake_kernel(fast=("fast", "f"), reference=("slow", "f"))
    fast, ref = sweeps.SweepRunner(
        [kernel], [8, 16, 32], sampling, GENEROUS, lambda m, s: None
    ).run()
    # Per implementation: the first pass (timed warm-up calls at each length, ending with
    # L=32), then three rounds taking one sample of every length in turn, in increasing and
    # decreasing order by turns.
    for module in ("fast", "slow"):
        mine = [x for m, x in calls if m == module]
        assert mine[-10:] == [32.0, 8.0, 16.0, 32.0, 32.0, 16.0, 8.0, 8.0, 16.0, 32.0]
    assert fast.rounds == ref.rounds == 3
    assert all(len(p["samples"]) == 3 for p in fast.points + ref.points)


def test_runner_adds_rounds_while_the_series_is_under_its_time_budget(monkeypatch):
    _recording(monkeypatch)
    monkeypatch.setattr(sweeps, "ROUND_CALLS", 2)
    generous = sweeps.Sampling(rounds=2, max_rounds=6, series_seconds=60.0)
    (fast, _), _, _ = _run_with(_fake_kernel(), generous)
    assert fast.rounds == 6 and [len(p["samples"]) for p in fast.points] == [12, 12, 12]
    tight = sweeps.Sampling(rounds=2, max_rounds=6, series_seconds=0.0)
    (fast, _), _, _ = _run_with(_fake_kernel(), tight)
    assert fast.rounds == 2


def _run_with(kernel, sampling, lengths=(8, 16, 32)):
    runner = sweeps.SweepRunner([kernel], list(lengths), sampling, GENEROUS, lambda m, s: None)
    return runner.run(), None, runner.steps


def test_fit_lengths_start_where_asked_or_take_the_three_longest():
    lengths = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    assert sweeps.fit_lengths(lengths, 4096) == [4096, 8192, 16384]
    assert sweeps.fit_lengths(lengths, 1024) == [1024, 2048, 4096, 8192, 16384]
    assert sweeps.fit_lengths(lengths[:5], 4096) == [512, 1024, 2048]
    assert sweeps.fit_lengths([8, 16], 4096) == [8, 16]


def test_series_slope_is_fitted_from_its_fit_from():
    # Linear with a 4x step between 2048 and 4096 (the page faults of a large output): fitted
    # from 4096 the slope is the growth, 1; across the step it would not be.
    points = [(n, 1e-6 * n * (4 if n >= 4096 else 1)) for n in [512, 1024, 2048, 4096, 8192, 16384]]
    series = sweeps.Series("k", "seqkern", "m", "s", fit_from=4096)
    series.points = [{"length": n, "seconds": t, "samples": [t, 1.1 * t]} for n, t in points]
    record = series.to_json()
    assert record["slope_lengths"] == [4096, 8192, 16384] and record["fit_from"] == 4096
    assert record["slope"] == pytest.approx(1.0)
    assert record["slope_low"] <= record["slope"] <= record["slope_high"]
    series.fit_from = 1024
    assert series.to_json()["slope"] > 1.3


def test_runner_records_a_failing_kernel_and_goes_on(monkeypatch):
    calls = []

    def flaky(x, y):
        calls.append(x)
        if x > 10:
            raise RuntimeError("boom")

    monkeypatch.setattr(sweeps, "resolve", lambda module, name: flaky)
    (fast, ref), messages, steps = _run(_fake_kernel())
    assert fast.status == "error" and "L=16: RuntimeError: boom" in fast.note
    assert [p["length"] for p in fast.points] == [8]
    assert sum(s for _, s in messages) == steps


def test_geometric_lengths():
    assert sweeps.geometric_lengths(128, 4096) == LENGTHS
    assert sweeps.geometric_lengths(128, 32768)[-1] == 32768
    assert sweeps.geometric_lengths(128, 100) == []


@pytest.mark.parametrize("kernel", sweeps.KERNELS, ids=lambda k: k.name)
def test_sweep_inputs_have_the_stated_model_shapes(kernel):
    (positional, keywords) = kernel.inputs(np.random.default_rng(0), 16)
    arrays = [a for a in (*positional, *keywords.values()) if isinstance(a, np.ndarray)]
    assert arrays and all(a.dtype == np.float32 for a in arrays)
    assert all(np.isfinite(a).all() for a in arrays)
    assert any(16 in a.shape for a in arrays)


@pytest.mark.parametrize("kernel", sweeps.KERNELS, ids=lambda k: k.name)
def test_long_inputs_repeat_a_random_block_along_the_sequence(kernel, monkeypatch):
    monkeypatch.setattr(sweeps, "INPUT_BLOCK", 24)
    for length in (16, 48, 60):
        tiled = sweeps.tiled_inputs(kernel, np.random.default_rng(0), length)
        drawn = kernel.inputs(np.random.default_rng(0), length)
        flat = [*tiled[0], *tiled[1].values()]
        for a, b in zip(flat, [*drawn[0], *drawn[1].values()]):
            if isinstance(a, np.ndarray):
                assert a.shape == b.shape and a.dtype == b.dtype and a.flags.c_contiguous
    # The sequence axis repeats the block; the other axes are as drawn.
    (tiled, _), (block, _) = (
        sweeps.tiled_inputs(kernel, np.random.default_rng(0), 60),
        kernel.inputs(np.random.default_rng(0), 24),
    )
    first = next(a for a in tiled if isinstance(a, np.ndarray) and 60 in a.shape)
    axis = first.shape.index(60)
    source = next(a for a in block if isinstance(a, np.ndarray) and 24 in a.shape)
    assert np.array_equal(np.take(first, range(24, 48), axis), source)
    assert np.array_equal(np.take(first, range(48, 60), axis), np.take(source, range(12), axis))


# --- the whole command


def tiny_run(tmp_path, *extra):
    out = tmp_path / "report"
    stream = io.StringIO()
    argv = ["--lengths", "8,16,32", "--repeats", "1", "--out", str(out), *extra]
    assert report.main(argv, stream=stream) == 0
    return out, stream.getvalue()


def test_tiny_sweep_writes_every_file(tmp_path):
    args = ["--sections", "sweep,ternary", "--ternary-shapes", "64x48", "--ternary-tokens", "1,3"]
    out, log = tiny_run(tmp_path, *args)
    written = {p.name for p in out.iterdir()}
    expected = {"report.md", "results.json"}
    if HAS_MATPLOTLIB:
        expected |= {"scaling.png", "speedup.png"}
    assert written == expected
    for png in expected - {"report.md", "results.json"}:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    assert results["settings"]["lengths"] == [8, 16, 32]
    attention = [s for s in results["sweeps"] if s["kernel"] == "causal_attention"]
    assert [p["length"] for p in attention[0]["points"]] == [8, 16, 32]
    text = (out / "report.md").read_text()
    assert "## Linear versus quadratic" in text and "## Ternary matmul" in text
    assert "causal_attention (seqkern)" in text and "B 1, H 32, D 64" in text
    for kernel in ("wkv6", "wkv7", "ssd_scan"):  # in this build or not, the report says
        assert f"`{kernel}`" in text
    assert "[" in log and "causal_attention seqkern L=32" in log
    assert ("scaling.png" in text) == HAS_MATPLOTLIB


def test_ci_draws_the_plots():
    """The `test` extra installs matplotlib, so that CI runs the plot code above rather than
    skipping it; outside CI the report is also written without it."""
    if os.environ.get("CI", "").lower() not in ("1", "true"):
        pytest.skip("not CI")
    assert HAS_MATPLOTLIB


def test_no_plots_and_a_fake_case_registry(tmp_path, monkeypatch):
    def good(rng):
        x = rng.standard_normal(100)
        return (lambda: x.sum(), lambda: sum(x))

    def bad(rng):
        raise ImportError("this family is not built")

    cases = [Case("toy", "sum", "n 100", good, "fast"), Case("toy", "broken", "-", bad)]
    monkeypatch.setattr(report, "all_cases", lambda: cases)
    out, _ = tiny_run(tmp_path, "--sections", "cases", "--no-plots")
    assert {p.name for p in out.iterdir()} == {"report.md", "results.json"}
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    section = results["fixed_shape"]
    assert [r["kernel"] for r in section["rows"]] == ["sum"]
    assert "broken: ImportError" in section["note"]
    assert results["sweeps"] == [] and results["ternary"]["status"] == "not run"
    text = (out / "report.md").read_text()
    assert "| `sum` | n 100 |" in text and "Linear versus" not in text


# --- the schema


def test_schema_catches_missing_keys_wrong_types_and_nan():
    good = {"length": 8, "seconds": 0.5, "samples": [0.5]}
    assert validate(good, sweeps_point_schema()) == []
    assert validate({"length": 8, "samples": []}, sweeps_point_schema()) == [
        "$: missing key 'seconds'"
    ]
    errors = validate(
        {"length": True, "seconds": float("nan"), "samples": "x"}, sweeps_point_schema()
    )
    assert len(errors) == 3
    assert validate([], {"a": int})[0].startswith("$: expected an object")
    top = validate({"schema": SCHEMA_ID})
    assert any("missing key 'sweeps'" in e for e in top)


def sweeps_point_schema():
    from seqkern.bench.results import POINT

    return POINT


# --- the command line


def test_bad_arguments_exit_with_a_message(capsys):
    for argv in (["--lengths", "a,b"], ["--sections", "sweep,nope"], ["--ternary-shapes", "12"]):
        with pytest.raises(SystemExit):
            report.build_parser().parse_args(argv)
    assert "expected" in capsys.readouterr().err


def test_settings_of_quick_and_full_runs():
    quick = report.Settings.from_args(report.build_parser().parse_args(["--quick"]))
    full = report.Settings.from_args(report.build_parser().parse_args([]))
    assert quick.lengths == [*LENGTHS, 8192, 16384] and quick.max_call_seconds == 0.75
    assert quick.repeats == 3 and quick.sampling.rounds == 5 and quick.sampling.max_rounds > 5
    assert full.sampling.rounds == 5
    assert full.lengths[0] == 128 and full.lengths[-1] == 32768 and full.repeats == 5
    assert quick.ternary_formats == ["i2"] and full.ternary_formats == ["i2", "t1"]


def test_relaunch_drops_only_the_openblas_overrides(monkeypatch):
    launched = []
    monkeypatch.setattr(entry.os, "execve", lambda exe, args, env: launched.append((args, env)))
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    monkeypatch.delenv(entry.UNSET_MARKER, raising=False)
    monkeypatch.setenv("SEQKERN_BENCH_TEST_KEEP", "1")
    entry._relaunch_without_blas_env(["--quick"])
    if entry.os.name != "posix":
        assert launched == []
        return
    ((args, env),) = launched
    assert args[1:] == ["-m", "seqkern.bench", "--quick"]
    assert "OPENBLAS_CORETYPE" not in env and env["SEQKERN_BENCH_TEST_KEEP"] == "1"
    assert env[entry.UNSET_MARKER] == "OPENBLAS_CORETYPE=Haswell"
    launched.clear()
    entry._relaunch_without_blas_env(["--keep-blas-env"])
    monkeypatch.setenv(entry.UNSET_MARKER, "OPENBLAS_CORETYPE=Haswell")
    entry._relaunch_without_blas_env([])
    assert launched == []


# --- stand-ins with the signatures of design.md, for the families built in other branches


def _rwkv_stand_in():
    """seqkern.rwkv / seqkern.reference.rwkv as design.md specifies them, checking shapes."""

    def wkv6(r, k, v, w, u, state=None, *, scale=1.0):
        batch, length, heads, n = r.shape
        assert k.shape == v.shape == w.shape == r.shape and u.shape == (heads, n)
        assert (w <= 0).all(), "log-decays"
        return r * scale, np.zeros((batch, heads, n, n), r.dtype)

    def wkv7(r, w, k, v, a, b, state=None, *, scale=1.0):
        assert r.shape == w.shape == k.shape == v.shape == a.shape == b.shape
        assert (w <= 0).all()
        return r * scale, None

    module = types.ModuleType("stand_in_rwkv")
    module.wkv6, module.wkv7 = wkv6, wkv7
    return module


def _ssd_stand_in(x, dt, A, B, C, chunk_size=256, D=None, **kw):
    batch, length, heads, p = x.shape
    assert dt.shape == (batch, length, heads) and A.shape == (heads,)
    assert B.shape == C.shape and B.shape[:2] == (batch, length) and D.shape == (heads,)
    return x


class _StandInWeight:
    def __init__(self, W, fmt):
        self.codes = np.sign(W).astype(np.int8)
        self.bits_per_weight = {"i2": 2.0, "t1": 1.6}[fmt]
        self.nbytes = int(np.ceil(W.size * self.bits_per_weight / 8))


def _ternary_stand_in():
    module = types.ModuleType("stand_in_ternary")

    def quantize_weights(W, *, eps=1e-5, format="i2"):
        return _StandInWeight(W, format)

    def bitlinear(x, weight, bias=None):
        return x @ weight.codes.T.astype(np.float32)

    module.quantize_weights, module.bitlinear = quantize_weights, bitlinear
    return module


def test_families_from_other_branches_light_up_when_present(tmp_path, monkeypatch):
    import seqkern.mamba
    import seqkern.reference.mamba

    rwkv = _rwkv_stand_in()
    monkeypatch.setitem(sys.modules, "seqkern.rwkv", rwkv)
    monkeypatch.setitem(sys.modules, "seqkern.reference.rwkv", rwkv)
    monkeypatch.setitem(sys.modules, "seqkern.ternary", _ternary_stand_in())
    monkeypatch.setattr(seqkern.mamba, "ssd_scan", _ssd_stand_in, raising=False)
    monkeypatch.setattr(seqkern.reference.mamba, "ssd_scan_chunked", _ssd_stand_in, raising=False)
    args = [
        "--sections", "sweep,ternary", "--kernels", "causal_attention,wkv6,wkv7,ssd_scan",
        "--ternary-shapes", "64x48,40x24", "--ternary-tokens", "1,5",
        "--ternary-formats", "i2,t1",
    ]  # fmt: skip
    out, _ = tiny_run(tmp_path, *args)
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    statuses = {(s["kernel"], s["impl"]): (s["status"], s["note"]) for s in results["sweeps"]}
    assert set(statuses.values()) == {("ok", "")}, statuses
    assert {c["kernel"] for c in results["crossovers"]} == {"wkv6", "wkv7", "ssd_scan"}
    rows = results["ternary"]["rows"]
    assert len(rows) == 2 * 2 * 2
    assert {r["bits_per_weight"] for r in rows} == {2.0, 1.6}
    assert rows[0]["weight_bytes"] == 64 * 48 * 2 / 8
    text = (out / "report.md").read_text()
    assert "not available in this build" not in text
    assert "| 64 → 48 | 5 | t1 | 1.60 |" in text


# --- comparing runs


def test_compare_tabulates_every_slope_with_its_spread(tmp_path):
    from seqkern.bench import compare

    def document(attention, decode, ranges=(1024, 4096)):
        series = {"kernel": "causal_attention", "impl": "seqkern", "status": "ok", "points": []}
        series.update(slope=attention, slope_lengths=list(ranges))
        none = {"slope": None, "low": None, "high": None, "lengths": []}
        slopes = dict.fromkeys(("prefill", "generation", "cache"), none)
        slopes["decode"] = {"slope": decode, "low": None, "high": None, "lengths": [512, 4096]}
        model = {"name": "mamba", "slopes": slopes}
        return {"sweeps": [series], "models": {"architectures": [model]}, "elapsed_seconds": 1}

    runs = [document(1.9, 0.0), document(2.0, 0.1, (1024, 8192)), document(2.4, 0.05)]
    paths = []
    for i, doc in enumerate(runs):
        path = tmp_path / f"r{i}"
        path.mkdir()
        (path / "results.json").write_text(json.dumps(doc))
        paths.append(str(path))
    rows = {r["name"]: r for r in compare.compare(runs)}
    attention = rows["sweep causal_attention (seqkern)"]
    assert attention["values"] == [1.9, 2.0, 2.4]
    assert attention["spread"] == pytest.approx(0.5)
    assert attention["from_median"] == pytest.approx(0.4)
    assert attention["ranges"] == ["1024–4096", "1024–8192"]
    assert rows["model mamba decode"]["spread"] == pytest.approx(0.1)
    assert rows["model mamba prefill"]["values"] == [None] * 3
    stream = io.StringIO()
    assert report.main(["--compare", *paths], stream=stream) == 0
    text = stream.getvalue()
    assert "| sweep causal_attention (seqkern) | 1024–4096, 1024–8192 | 1.900 |" in text
    assert "0.400 ⚠" in text and "1 of 2 slopes more than ±0.15 from their median" in text
