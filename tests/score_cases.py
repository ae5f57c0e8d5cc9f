"""Tiny model folders and corpora for the seqkern.score tests (local and Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seqkern.models.testing import random_tensors, write_folder

VOCAB = 61  # odd on purpose

CONFIG = {
    "model_type": "mamba",
    "vocab_size": VOCAB,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "state_size": 4,
    "conv_kernel": 4,
    "expand": 2,
    "time_step_rank": "auto",
    "use_bias": False,
    "use_conv_bias": True,
    "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True,
}

WORDS = ["[UNK]"] + [f"w{i}" for i in range(VOCAB - 1)]


def write_tokenizer(path: Path) -> None:
    """A word-level tokenizer.json over WORDS (id = index), split on whitespace."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(path))


def model_folder(folder: Path, tokenizer: bool = True) -> Path:
    """A random tiny Mamba written as a model folder (with tokenizer.json)."""
    write_folder(folder, CONFIG, random_tensors(CONFIG, seed=3))
    if tokenizer:
        write_tokenizer(folder / "tokenizer.json")
    return folder


def corpus(count: int, seed: int = 0, longest: int = 70) -> list[dict]:
    """Documents of many lengths (0, 1, 2, odd, long), as input_ids."""
    rng = np.random.default_rng(seed)
    lengths = [0, 1, 2, 3, longest] + list(rng.integers(0, longest, count))
    return [
        {"id": i, "input_ids": rng.integers(0, VOCAB, n).tolist()}
        for i, n in enumerate(lengths[:count])
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON Lines (a row that is a string is written as it is)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    """Rows as a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(key for row in rows for key in row))
    pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in rows]), path)
    return path


def read_output(path: Path) -> dict[str, list]:
    """The output columns as lists."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def by_hand(model, ids: list[int]) -> float:
    """sum_{i>=1} log softmax(logits[i-1])[ids[i]] from one call model(ids), in float64, with
    NumPy's logaddexp (a different formula from the scorer's)."""
    if len(ids) < 2:
        return 0.0
    logits = model(np.array([ids]))[0].astype(np.float64)
    logz = np.logaddexp.reduce(logits[:-1], axis=1)
    return float(np.sum(logits[np.arange(len(ids) - 1), ids[1:]] - logz))
