"""seqkern.score, Ray engine, on a local 2-CPU cluster: the same numbers and ids as the local
engine, a worker killed mid-run, a bad row."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("tokenizers")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from score_cases import (  # noqa: E402
    WORDS,
    corpus,
    model_folder,
    read_output,
    write_jsonl,
    write_parquet,
)

from seqkern.score import InputError, score  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    # The crash-once model below is pickled by value: Ray's workers cannot import this file.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def rows():
    """Token ids and text mixed, many lengths."""
    rng = np.random.default_rng(8)
    docs = corpus(40, seed=2)
    for doc in docs[::3]:
        doc["text"] = " ".join(rng.choice(WORDS[1:], len(doc.pop("input_ids"))))
    return docs


def by_id(table: dict) -> dict:
    return {i: (n, s) for i, n, s in zip(table["id"], table["n_tokens"], table["logprob_sum"])}


def assert_same(ray_out: dict, local_out: dict) -> None:
    """Every id exactly once, with the local engine's numbers (to float32 rounding: the two
    engines batch differently)."""
    assert sorted(ray_out["id"]) == sorted(local_out["id"])
    assert len(set(ray_out["id"])) == len(ray_out["id"])
    a, b = by_id(ray_out), by_id(local_out)
    assert all(a[i][0] == b[i][0] for i in b)
    np.testing.assert_allclose([a[i][1] for i in b], [b[i][1] for i in b], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_ray_gives_the_local_numbers(cluster, folder, rows, tmp_path, kind):
    if kind == "jsonl":
        source = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        named = [dict(r, id=f"d{r['id']}") for r in rows]
        source = write_parquet(tmp_path / "in.parquet", named)
    score(folder, source, tmp_path / "local.parquet", progress=None)
    written = score(
        folder, source, tmp_path / "ray.parquet", engine="ray", batch_size=4, progress=None
    )
    assert written == len(rows)
    assert_same(read_output(tmp_path / "ray.parquet"), read_output(tmp_path / "local.parquet"))
    assert not (tmp_path / "ray.parquet.tmp").exists()
    if kind == "jsonl":  # an output URI: a directory the workers write into
        uri = (tmp_path / "scores").as_uri()
        assert score(folder, source, uri, engine="ray", progress=None) == len(rows)
        assert_same(read_output(tmp_path / "scores"), read_output(tmp_path / "local.parquet"))


class CrashOnce:
    """A model whose process exits (as if killed) at its first forward call of the run: the
    marker file says it already happened."""

    def __init__(self, folder: Path, marker: Path):
        from seqkern import models

        self.model = models.load(folder)
        self.vocab_size = self.model.vocab_size
        self.marker = marker

    def forward(self, ids, cache=None):
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return self.model.forward(ids, cache)


def test_a_killed_worker_is_retried(cluster, folder, tmp_path):
    docs = corpus(48, seed=4, longest=30)
    source = write_jsonl(tmp_path / "in.jsonl", docs)
    score(folder, source, tmp_path / "local.parquet", progress=None)
    marker = tmp_path / "crashed"
    crash_once = functools.partial(CrashOnce, folder, marker)
    score(crash_once, source, tmp_path / "ray.parquet", engine="ray", batch_size=4, progress=None)
    assert marker.exists()  # a worker did die
    assert_same(read_output(tmp_path / "ray.parquet"), read_output(tmp_path / "local.parquet"))


def test_a_bad_row_stops_the_run(cluster, folder, tmp_path):
    output = tmp_path / "out.parquet"
    output.write_bytes(b"an earlier good output")
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "input_ids": [1, 2]}, {"id": 2}])
    with pytest.raises(InputError, match=r"in.jsonl: row 1 of a batch of 2 \(id 2\): has neither"):
        score(folder, source, output, engine="ray", progress=None)
    assert output.read_bytes() == b"an earlier good output"
    with pytest.raises(InputError, match="no such input file"):
        score(folder, tmp_path / "missing.jsonl", output, engine="ray", progress=None)
