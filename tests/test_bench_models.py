"""The report's models section: its arithmetic on synthetic timings, and a tiny end-to-end run
(every architecture of this build at tiny shapes, plus a toy attention model standing in for a
transformer whose KV cache grows). Nothing here asserts a speed."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from dataclasses import replace

import numpy as np
import pytest

from seqkern import models
from seqkern.bench import model_scaling as ms
from seqkern.bench import report
from seqkern.bench.analysis import bootstrap_slope
from seqkern.bench.results import validate
from seqkern.models.core import Cache, CausalLM

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


# --- the arithmetic


def test_generation_time_is_the_sum_of_the_per_token_curve():
    flat = [(8, 0.5), (16, 0.5), (32, 0.5)]
    assert ms.generation_seconds(flat, [8, 32]) == pytest.approx([4.0, 16.0])
    # t(c) = 1 + c on measured points 0 .. 30: the sum over c < N is N + N (N - 1) / 2.
    line = [(0, 1.0), (10, 11.0), (30, 31.0)]
    assert ms.generation_seconds(line, [10, 30]) == pytest.approx([55.0, 465.0])
    # Below the first context: its value; beyond the last: the line through the last two.
    curve = ms.per_token_curve([(4, 2.0), (8, 3.0)])
    assert curve(np.array([0.0, 6.0, 12.0])) == pytest.approx([2.0, 2.5, 4.0])


def test_decode_line_and_overtaking():
    recurrent = [(c, 0.02) for c in (128, 256, 512, 1024)]
    transformer = [(c, 0.01 + 1e-5 * c) for c in (128, 256, 512, 1024)]
    a, b = ms.decode_line(transformer)
    assert (a, b) == pytest.approx((0.01, 1e-5))
    # 0.02 = 0.01 + 1e-5 C at C = 1000, between the measured 512 and 1024.
    found = ms.overtakes(recurrent, transformer, ms.lines_meet(recurrent, transformer))
    assert found.kind == "measured" and found.length == pytest.approx(1000.0)
    # Beyond the measured contexts: where the fitted lines meet.
    dear = [(c, 0.05) for c in (128, 256, 512)]
    assert ms.lines_meet(dear, transformer[:3]) == pytest.approx(4000.0)
    far = ms.overtakes(dear, transformer[:3], ms.lines_meet(dear, transformer[:3]))
    assert far.kind == "extrapolated" and far.length == pytest.approx(4000.0)
    assert ms.overtakes([(128, 0.001)], transformer, None).kind == "below"
    parallel = [(c, 1.0 + 1e-5 * c) for c in (128, 256)]
    assert ms.lines_meet(parallel, transformer[:2]) is None
    assert ms.overtakes(parallel, transformer[:2], None).kind == "none"
    assert ms.overtakes([(1, 1.0)], [(2, 1.0)], None).kind == "no data"


def test_bootstrap_interval_brackets_the_slope():
    rng = np.random.default_rng(0)
    samples = {n: list(1e-6 * n * (1 + 0.05 * rng.random(9))) for n in (64, 128, 256, 512)}
    low, high = bootstrap_slope(samples, min, rounds=100, seed=1)
    assert low <= high and 0.9 < low and high < 1.1
    exact = {n: [2e-6 * n] * 3 for n in (64, 128)}
    assert bootstrap_slope(exact, min, rounds=10) == pytest.approx((1.0, 1.0))
    assert bootstrap_slope({64: [1.0]}, min, rounds=5) == (None, None)


def test_crossovers_pair_recurrent_models_with_the_transformer():
    def record(name, kind, points):
        r = ms.empty_record(ms.ARCHITECTURES[0], tiny=True)
        r.update(name=name, kind=kind)
        r["decode"] = [{"context": c, "seconds": t} for c, t in points]
        contexts = [c for c, _ in points]
        totals = ms.generation_seconds(points, contexts)
        r["generation"] = [{"tokens": n, "seconds": s} for n, s in zip(contexts, totals)]
        return r

    contexts = (128, 256, 512, 1024, 2048)
    found = ms.crossovers(
        [
            record("rec", "recurrent", [(c, 0.02) for c in contexts]),
            record("att", "transformer", [(c, 0.01 + 1e-5 * c) for c in contexts]),
        ]
    )
    (c,) = found
    assert (c["model"], c["against"]) == ("rec", "att")
    assert c["decode_kind"] == "measured" and c["decode_context"] == pytest.approx(1000.0)
    # Generating N: the transformer's sum falls behind later than its per-token cost does.
    assert c["generation_kind"] == "measured" and 1000 < c["generation_tokens"] <= 2048


def test_unknown_model_types_are_unavailable(monkeypatch):
    arch = replace(ms.ARCHITECTURES[0], config=dict(ms.ARCHITECTURES[0].config, model_type="nope"))
    with pytest.raises(ms.Unavailable, match="'nope' is not in seqkern.models.ARCHITECTURES"):
        ms.build(arch, tiny=True)


def test_the_published_configs_have_equal_width_and_vocabulary():
    for arch in ms.ARCHITECTURES:
        assert arch.config["hidden_size"] == 768 and arch.config["vocab_size"] == 50280
        assert "24 sublayers" in arch.depth


# --- a toy transformer: one attention head per layer, a KV cache growing by doubling


class _KVCache(Cache):
    """Keys and values (layers, B, capacity, D), the first seq_len rows in use."""

    def grow(self, needed: int) -> None:
        capacity = self.arrays["k"].shape[2]
        if needed <= capacity:
            return
        size = max(needed, 2 * capacity)
        for name in ("k", "v"):
            old = self.arrays[name]
            new = np.zeros(old.shape[:2] + (size,) + old.shape[3:], old.dtype)
            new[:, :, : self.seq_len] = old[:, :, : self.seq_len]
            self.arrays[name] = new


class ToyAttentionLM(CausalLM):
    model_type = "toy_attention"

    def __init__(self, config, weights, backend):
        vocab, hidden = config["vocab_size"], config["hidden_size"]
        layers = config["num_hidden_layers"]
        self.hidden = hidden
        self.embedding = weights("embed.weight", vocab, hidden)
        self.qkvo = [
            [weights(f"layers.{i}.{m}.weight", hidden, hidden) for m in "qkvo"]
            for i in range(layers)
        ]
        super().__init__(config, weights.dtype, backend, vocab, layers, weights.count)

    def new_cache(self, batch=1):
        shape = (self.num_layers, batch, 4, self.hidden)
        arrays = {"k": np.zeros(shape, self.dtype), "v": np.zeros(shape, self.dtype)}
        return _KVCache(self._cache_signature(), batch, arrays)

    def _forward(self, ids, cache):
        x = self.embedding[ids]
        start, length = cache.seq_len, ids.shape[1]
        cache.grow(start + length)
        for i, (wq, wk, wv, wo) in enumerate(self.qkvo):
            cache["k"][i, :, start : start + length] = x @ wk.T
            cache["v"][i, :, start : start + length] = x @ wv.T
            keys, values = cache["k"][i, :, : start + length], cache["v"][i, :, : start + length]
            scores = (x @ wq.T) @ keys.transpose(0, 2, 1) / np.sqrt(self.hidden)
            future = np.arange(start + length)[None, :] > start + np.arange(length)[:, None]
            scores = np.where(future, -np.inf, scores)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            x = x + (weights @ values) @ wo.T
        return x @ self.embedding.T


@pytest.fixture
def toy_transformer(monkeypatch):
    module = types.ModuleType("toy_attention_module")
    module.from_checkpoint = lambda config, weights, backend: ToyAttentionLM(
        config, weights, backend
    )
    monkeypatch.setitem(sys.modules, "toy_attention_module", module)
    monkeypatch.setitem(models.ARCHITECTURES, "toy_attention", "toy_attention_module")
    archs = list(ms.ARCHITECTURES)
    index = ms.NAMES.index("transformer")
    config = {"model_type": "toy_attention", "vocab_size": 50280, "hidden_size": 768,
              "num_hidden_layers": 12}  # fmt: skip
    archs[index] = replace(archs[index], config=config, tiny=dict(vocab_size=64, hidden_size=16,
                           num_hidden_layers=2))  # fmt: skip
    monkeypatch.setattr(ms, "ARCHITECTURES", archs)
    from seqkern.bench import peers

    monkeypatch.setattr(peers, "ARCHITECTURES", archs)


def test_a_toy_kv_cache_decodes_as_the_prompt_does(toy_transformer):
    arch = ms.ARCHITECTURES[ms.NAMES.index("transformer")]
    model = ms.build(arch, tiny=True)
    ids = np.random.default_rng(0).integers(0, 64, (1, 12))
    whole = model(ids)
    cache = ms.cache_at(model, arch, 5, ids, None)
    assert cache.seq_len == 5
    cache = ms.cache_at(model, arch, 11, ids, cache)
    logits, _ = model.forward(ids[:, 11:12], cache)
    assert np.allclose(logits[0, 0], whole[0, 11], atol=1e-4)


def test_random_kv_cache_grows_as_a_prefill_would():
    class Stub:
        def new_cache(self, batch=1):
            shape = (2, batch, 3, 4, 5)  # layers, batch, kv heads, capacity 4, head dim
            return Cache(("stub",), batch, {"k": np.zeros(shape), "v": np.zeros(shape)})

    fresh = Stub().new_cache()
    assert ms.has_kv_layout(fresh)
    cache = ms.random_kv_cache(fresh, 13, np.random.default_rng(0))
    assert cache.seq_len == 13 and cache["k"].shape == (2, 1, 3, 16, 5)
    assert np.all(cache["v"][:, :, :, :13] != 0) and np.all(cache["k"][:, :, :, 13:] == 0)
    assert not ms.has_kv_layout(Cache(("x",), 1, {"k": np.zeros((2, 1, 4, 5))}))


def test_recurrent_state_is_labelled_with_the_context():
    arch = ms.ARCHITECTURES[ms.NAMES.index("mamba")]
    model = ms.build(arch, tiny=True)
    ids = np.random.default_rng(0).integers(0, 64, (1, 40))
    cache = ms.cache_at(model, arch, 4096, ids, None)
    assert cache.seq_len == 4096 and cache.nbytes == model.new_cache(1).nbytes


# --- the whole section, tiny


def run_models(tmp_path, *extra):
    out = tmp_path / "report"
    stream = io.StringIO()
    argv = ["--sections", "models", "--tiny-models", "--model-contexts", "8,16,32",
            "--model-prompts", "4,8,16", "--repeats", "1", "--out", str(out), *extra]  # fmt: skip
    assert report.main(argv, stream=stream) == 0
    return out, stream.getvalue()


def test_tiny_models_section_end_to_end(tmp_path, toy_transformer):
    out, log = run_models(tmp_path)
    expected = {"report.md", "results.json"} | ({"models.png"} if HAS_MATPLOTLIB else set())
    assert {p.name for p in out.iterdir()} == expected
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    section = results["models"]
    by_name = {r["name"]: r for r in section["architectures"]}
    assert list(by_name) == list(ms.NAMES)
    for name, record in by_name.items():
        assert record["status"] in ("ok", "unavailable"), (name, record["note"])
    for name in ("mamba", "mamba2", "transformer"):
        record = by_name[name]
        assert record["status"] == "ok", record["note"]
        assert [p["context"] for p in record["decode"]] == [8, 16, 32]
        assert [p["length"] for p in record["prefill"]] == [4, 8, 16]
        assert all(len(p["samples"]) == section["plan"]["decode_samples"] for p in record["decode"])
        assert record["direct"]["integrated_seconds"] > 0
        assert record["slopes"]["decode"]["slope"] is not None
    # A state does not grow with the context; the toy KV cache holds every token.
    mamba_bytes = {p["cache_bytes"] for p in by_name["mamba"]["decode"]}
    assert len(mamba_bytes) == 1
    kv = [p["cache_bytes"] for p in by_name["transformer"]["decode"]]
    assert kv[0] < kv[1] < kv[2]
    assert by_name["transformer"]["slopes"]["cache"]["slope"] > 0.5
    pairs = {(c["model"], c["against"]) for c in section["crossovers"]}
    assert ("mamba", "transformer") in pairs and ("mamba2", "transformer") in pairs
    text = (out / "report.md").read_text()
    assert "## Models: decoding cost against the context" in text
    assert "| Mamba-2 |" in text and "Where each recurrent model overtakes" in text
    assert "Tiny shapes" in text and "24 sublayers" in text
    assert "model    transformer  decode  C=32" in log
    assert section["peers"]["status"] == "not run"


def test_missing_architectures_are_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "ARCHITECTURES", {"mamba": models.ARCHITECTURES["mamba"]})
    out, log = run_models(tmp_path, "--models", "mamba,mamba2", "--no-plots")
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    mamba, mamba2 = results["models"]["architectures"]
    assert mamba["status"] == "ok" and mamba2["status"] == "unavailable"
    assert "'mamba2' is not in seqkern.models.ARCHITECTURES" in mamba2["note"]
    assert results["models"]["crossovers"] == []
    text = (out / "report.md").read_text()
    assert "Mamba-2: not available" in text and "skipped" in log


def test_peers_say_why_they_were_skipped(tmp_path, monkeypatch):
    from seqkern.bench import peers

    def no_torch():
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(peers, "_import_peers", no_torch)
    out, _ = run_models(tmp_path, "--models", "mamba", "--peers", "--no-plots")
    results = json.loads((out / "results.json").read_text())
    assert validate(results) == []
    assert results["models"]["peers"]["status"] == "skipped"
    assert "torch and transformers are not installed" in results["models"]["peers"]["note"]
    assert "Skipped: torch and transformers are not installed" in (out / "report.md").read_text()


def test_quick_and_full_model_plans():
    quick = report.Settings.from_args(report.build_parser().parse_args(["--quick"])).model_plan
    full = report.Settings.from_args(report.build_parser().parse_args([])).model_plan
    assert quick.contexts == [128, 256, 512, 1024, 2048, 4096] and quick.decode_fit_from == 512
    assert quick.prompts == [256, 512, 1024] and quick.prefill_fit_from == 256
    assert quick.prefill_repeats == 3 < quick.prefill_max_repeats
    assert full.prefill_fit_from == 1024 and full.prefill_repeats == 5
    assert full.contexts[-1] == 32768 and full.prompts[-1] == 4096
    assert "models" in report.Settings.from_args(report.build_parser().parse_args([])).sections


def test_a_model_failing_in_the_prefill_rounds_is_reported_and_the_others_go_on(monkeypatch):
    plan = report.Settings.from_args(
        report.build_parser().parse_args(
            [
                "--tiny-models",
                "--model-contexts",
                "8,16",
                "--model-prompts",
                "4,8",
                "--repeats",
                "2",
            ]
        )
    ).model_plan
    real_build = ms.build
    calls = {"n": 0}

    def fragile(arch, tiny=False, seed=0):
        model = real_build(arch, tiny, seed)
        if arch.name != "mamba":
            return model

        class Fragile:
            def __getattr__(self, name):
                return getattr(model, name)

            def __call__(self, ids):
                calls["n"] += 1
                if calls["n"] > len(plan.prompts):  # the first pass passes, a round fails
                    raise RuntimeError("boom")
                return model(ids)

        return Fragile()

    monkeypatch.setattr(ms, "build", fragile)
    reported = []
    runner = ms.ModelRunner(plan, ["mamba", "mamba2"], lambda m, s: reported.append(s))
    mamba, mamba2 = runner.run()
    assert mamba["status"] == "error" and "RuntimeError: boom" in mamba["note"]
    assert not mamba["prefill"] and not mamba["decode"]
    assert mamba2["status"] == "ok", mamba2["note"]
    assert [len(p["samples"]) for p in mamba2["prefill"]] == [2, 2]
    assert sum(reported) == ms.steps(plan, ["mamba", "mamba2"])
