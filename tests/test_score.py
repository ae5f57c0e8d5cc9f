"""seqkern.score, local engine: the numbers against the model's logits, pieces and batches
against one pass, text input, bad input, resuming, the command line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("tokenizers")

from score_cases import (  # noqa: E402
    VOCAB,
    WORDS,
    by_hand,
    corpus,
    model_folder,
    read_output,
    write_jsonl,
    write_parquet,
)

from seqkern import models  # noqa: E402
from seqkern.score import InputError, score, token_logprobs  # noqa: E402
from seqkern.score import _model as score_model  # noqa: E402
from seqkern.score.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def docs():
    return corpus(23)


def run(folder, source, output, **options):
    options.setdefault("progress", None)
    return score(folder, source, output, **options)


def test_token_logprobs_matches_log_softmax():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((3, 5, 11)) * 30).astype(np.float32)  # large: stability
    targets = rng.integers(0, 11, (3, 5))
    z = logits.astype(np.float64)
    expected = np.take_along_axis(z, targets[..., None], -1)[..., 0] - np.logaddexp.reduce(z, -1)
    np.testing.assert_allclose(token_logprobs(logits, targets), expected, rtol=1e-12)
    assert np.all(np.isfinite(token_logprobs(np.full((1, 4), 1e30, np.float32), np.zeros(1, int))))


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_logprob_sum_equals_the_logits_by_hand(folder, docs, tmp_path, dtype, rtol):
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    assert run(folder, source, tmp_path / "out.parquet", dtype=dtype, batch_size=4) == len(docs)
    out = read_output(tmp_path / "out.parquet")
    model = models.load(folder, dtype=dtype)
    expected = [by_hand(model, d["input_ids"]) for d in docs]
    assert out["id"] == [d["id"] for d in docs]  # input order
    assert out["n_tokens"] == [len(d["input_ids"]) for d in docs]
    # float32: each logit carries ~1e-7 relative rounding; batched and padded calls round a
    # little differently from one call, summed over up to 70 positions.
    np.testing.assert_allclose(out["logprob_sum"], expected, rtol=rtol, atol=rtol)
    n = np.array(out["n_tokens"])
    scored = n >= 2
    ppl = np.array([np.nan if p is None else p for p in out["perplexity"]])
    np.testing.assert_allclose(
        ppl[scored], np.exp(-np.array(expected)[scored] / (n[scored] - 1)), rtol=rtol
    )
    # fewer than 2 tokens: nothing predicted, logprob_sum 0 and perplexity null
    assert [out["perplexity"][i] for i in np.flatnonzero(~scored)] == [None] * int((~scored).sum())
    assert all(out["logprob_sum"][i] == 0.0 for i in np.flatnonzero(~scored))


@pytest.mark.parametrize("batch_size, max_tokens", [(1, 1), (1, 7), (3, 10), (5, 64), (16, 4)])
def test_pieces_and_batches_agree_with_one_pass(folder, docs, tmp_path, batch_size, max_tokens):
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    run(folder, source, tmp_path / "one.parquet", dtype="float64", batch_size=1, max_tokens=4096)
    run(
        folder,
        source,
        tmp_path / "pieces.parquet",
        dtype="float64",
        batch_size=batch_size,
        max_tokens=max_tokens,
    )
    one, pieces = read_output(tmp_path / "one.parquet"), read_output(tmp_path / "pieces.parquet")
    assert one["id"] == pieces["id"]
    np.testing.assert_allclose(pieces["logprob_sum"], one["logprob_sum"], rtol=1e-10)


def test_parquet_input_and_string_ids(folder, docs, tmp_path):
    rows = [{"id": f"doc-{d['id']}", "input_ids": d["input_ids"]} for d in docs]
    write_jsonl(tmp_path / "in.jsonl", rows)
    write_parquet(tmp_path / "in.parquet", rows)
    run(folder, tmp_path / "in.jsonl", tmp_path / "a.parquet")
    run(folder, tmp_path / "in.parquet", tmp_path / "b.parquet")
    a, b = read_output(tmp_path / "a.parquet"), read_output(tmp_path / "b.parquet")
    assert a["id"] == b["id"] == [r["id"] for r in rows]
    assert a["logprob_sum"] == b["logprob_sum"]


def test_text_is_tokenized_with_the_folders_tokenizer(folder, tmp_path):
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(WORDS[1:], n)) for n in (1, 2, 9, 30)] + ["w3 unknown w7"]
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    run(folder, write_jsonl(tmp_path / "t.jsonl", rows), tmp_path / "t.parquet")
    ids = [[WORDS.index(w) if w in WORDS else 0 for w in t.split()] for t in texts]
    run(
        folder,
        write_jsonl(tmp_path / "i.jsonl", [{"id": i, "input_ids": x} for i, x in enumerate(ids)]),
        tmp_path / "i.parquet",
    )
    assert read_output(tmp_path / "t.parquet") == read_output(tmp_path / "i.parquet")


def test_text_without_a_tokenizer_is_an_error(tmp_path):
    bare = model_folder(tmp_path / "bare", tokenizer=False)
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "w1 w2"}])
    with pytest.raises(InputError, match=r"line 1 \(id 1\).*no tokenizer.json"):
        run(bare, source, tmp_path / "out.parquet")


BAD_ROWS = [
    ({"input_ids": [1, 2]}, r"line 3: missing 'id'"),
    ({"id": None, "input_ids": [1, 2]}, r"line 3: missing 'id'"),
    ({"id": 7}, r"line 3 \(id 7\): has neither 'input_ids' nor 'text'"),
    ({"id": 7, "input_ids": [1, 2], "text": "w1"}, r"line 3 \(id 7\): has both"),
    ({"id": 7, "input_ids": [1, VOCAB]}, rf"line 3 \(id 7\): token id {VOCAB} at position 1 "),
    ({"id": 7, "input_ids": [-1]}, r"line 3 \(id 7\): token id -1 at position 0 "),
    ({"id": 7, "input_ids": [1, 2.5]}, r"line 3 \(id 7\): 'input_ids' must be a list of ints"),
    ({"id": 7, "input_ids": "1 2"}, r"line 3 \(id 7\): 'input_ids' must be a list of ints"),
    ({"id": 7, "text": 5}, r"line 3 \(id 7\): 'text' must be a string"),
    ({"id": [7], "input_ids": [1]}, r"line 3: 'id' must be an int or a string"),
    ({"id": "seven", "input_ids": [1]}, r"line 3 \(id 'seven'\): 'id' is a str but earlier"),
    ("{not json", r"line 3: not valid JSON"),
    ("[1, 2]", r"line 3: expected a JSON object"),
]


@pytest.mark.parametrize("bad, message", BAD_ROWS)
def test_bad_row_names_the_row_and_keeps_the_good_output(folder, tmp_path, bad, message):
    output = tmp_path / "out.parquet"
    good = [{"id": 1, "input_ids": [1, 2, 3]}, {"id": 2, "input_ids": [4, 5]}]
    run(folder, write_jsonl(tmp_path / "good.jsonl", good), output)
    before = output.read_bytes()
    source = write_jsonl(tmp_path / "bad.jsonl", good + [bad] + good)
    with pytest.raises(InputError, match=message):
        run(folder, source, output)
    assert output.read_bytes() == before


def test_unreadable_inputs(folder, tmp_path):
    output = tmp_path / "out.parquet"
    with pytest.raises(InputError, match="no such input file"):
        run(folder, tmp_path / "missing.jsonl", output)
    with pytest.raises(InputError, match="no such input file"):
        run(folder, tmp_path, output)  # a directory
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"broken.parquet: cannot read the Parquet input"):
        run(folder, broken, output)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": 1, "input_ids": [1]}\n{"id": "\xe9"}\n')
    with pytest.raises(InputError, match=r"latin.jsonl: line 2: cannot read"):
        run(folder, latin, output)
    assert not output.exists()


def test_bad_row_in_parquet_names_the_row(folder, tmp_path):
    rows = [{"id": 1, "input_ids": [1, 2]}, {"id": 2, "input_ids": [1, VOCAB + 5]}]
    with pytest.raises(InputError, match=rf"row 1 \(id 2\): token id {VOCAB + 5}"):
        run(folder, write_parquet(tmp_path / "in.parquet", rows), tmp_path / "out.parquet")


def test_options_are_checked(folder, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "input_ids": [1, 2]}])
    for name, value in [
        ("batch_size", 0),
        ("max_tokens", -1),
        ("batch_size", 1.5),
        ("part_size", 0),
    ]:
        with pytest.raises(ValueError, match=name):
            run(folder, source, tmp_path / "out.parquet", **{name: value})
    with pytest.raises(ValueError, match="engine"):
        run(folder, source, tmp_path / "out.parquet", engine="spark")


class Interrupt:
    """Replaces Scorer.score: raises KeyboardInterrupt on call number ``at`` (1-based)."""

    def __init__(self, monkeypatch, at):
        self.calls, self.at, self.real = 0, at, score_model.Scorer.score
        monkeypatch.setattr(score_model.Scorer, "score", self)

    def __get__(self, scorer, owner):
        def call(*args):
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt
            return self.real(scorer, *args)

        return call


def test_resume_after_an_interruption(folder, docs, tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    whole = tmp_path / "whole.parquet"
    run(folder, source, whole, part_size=4)

    output = tmp_path / "out.parquet"
    run(folder, write_jsonl(tmp_path / "old.jsonl", docs[:2]), output)
    old = output.read_bytes()
    interrupt = Interrupt(monkeypatch, at=4)  # windows of 4: 3 parts are written first
    with pytest.raises(KeyboardInterrupt):
        run(folder, source, output, part_size=4)
    assert output.read_bytes() == old  # the old output stays whole until the new one is
    parts = sorted(p.name for p in (tmp_path / "out.parquet.parts").glob("part-*"))
    assert parts == [f"part-{a:012d}-{a + 4:012d}.parquet" for a in (0, 4, 8)]
    (tmp_path / "out.parquet.parts" / "part-000000000012-000000000016.parquet.tmp").write_bytes(
        b"half a part: a write that was killed"
    )

    interrupt.calls, interrupt.at = 0, None
    log = io.StringIO()
    run(folder, source, output, part_size=4, progress=log)
    assert "resuming: 12 documents already scored" in log.getvalue()
    assert interrupt.calls == 3  # 23 - 12 documents in windows of 4
    assert read_output(output) == read_output(whole)
    assert not (tmp_path / "out.parquet.parts").exists()


def test_resume_refuses_a_changed_input_or_model(folder, docs, tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    output = tmp_path / "out.parquet"
    Interrupt(monkeypatch, at=3)
    with pytest.raises(KeyboardInterrupt):
        run(folder, source, output, part_size=4)
    monkeypatch.undo()
    changed = write_jsonl(tmp_path / "changed.jsonl", [dict(d, id=d["id"] + 100) for d in docs])
    with pytest.raises(InputError, match=r"line 1: id 100, but the parts .* have 0"):
        run(folder, changed, output, part_size=4)
    with pytest.raises(ValueError, match="another model"):
        run(folder, source, output, part_size=4, dtype="float64")
    run(folder, changed, output, part_size=4, restart=True)
    assert read_output(output)["id"] == [d["id"] + 100 for d in docs]


def test_progress_reports_documents_tokens_and_rate(folder, docs, tmp_path):
    log = io.StringIO()
    run(folder, write_jsonl(tmp_path / "in.jsonl", docs), tmp_path / "o.parquet", progress=log)
    tokens = sum(len(d["input_ids"]) for d in docs)
    assert f"{len(docs)} documents, {tokens} tokens, " in log.getvalue()
    assert "tokens/s" in log.getvalue()


def test_a_model_callable_and_a_loaded_model(folder, docs, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    run(folder, source, tmp_path / "a.parquet")
    run(lambda: models.load(folder), source, tmp_path / "b.parquet")
    run(models.load(folder), source, tmp_path / "c.parquet")
    a = read_output(tmp_path / "a.parquet")
    assert a == read_output(tmp_path / "b.parquet") == read_output(tmp_path / "c.parquet")


def test_a_model_behind_a_uri(folder, docs, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", docs[:6])
    run(folder, source, tmp_path / "a.parquet")
    run(folder.resolve().as_uri(), source, tmp_path / "b.parquet")
    assert read_output(tmp_path / "a.parquet") == read_output(tmp_path / "b.parquet")


def test_command_line(folder, docs, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    output = tmp_path / "out.parquet"
    argv = [str(folder), "--input", str(source), "--output", str(output)]
    assert main(argv + ["--batch-size", "3", "--max-tokens", "16"]) == 0
    assert read_output(output)["id"] == [d["id"] for d in docs]
    assert "tokens/s" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "input_ids": [VOCAB]}])
    assert main([str(folder), "--input", str(bad), "--output", str(output), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: line 1 (id 1): token id 61" in err
    assert json.dumps(read_output(output)["id"]) == json.dumps([d["id"] for d in docs])


def test_padded_batch_in_pieces_equals_one_pass(folder):
    from seqkern.score._compute import _score_batch

    model = models.load(folder, dtype="float64")
    docs = [np.array(d["input_ids"]) for d in corpus(12, seed=9)[2:6]]  # lengths 2, 3, 70, ...
    sums = _score_batch(model, docs, max_tokens=9)  # 4 rows: pieces of 2 tokens
    np.testing.assert_allclose(sums, [by_hand(model, d.tolist()) for d in docs], rtol=1e-10)


def test_missing_extras_are_named(folder, tmp_path, monkeypatch):
    import sys

    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "input_ids": [1, 2]}])
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'seqkern\[ray\]'"):
        run(folder, source, tmp_path / "out.parquet", engine="ray")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install 'seqkern\[score\]'"):
        run(folder, source, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
