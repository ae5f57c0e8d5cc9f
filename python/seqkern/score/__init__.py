"""Score a corpus: the log-likelihood and perplexity of every document under a model, in this
process or across a Ray cluster.

Input: JSON Lines or Parquet, one document per row with ``id`` (int or string) and either
``input_ids`` (a list of token ids) or ``text`` (tokenized with the model folder's
tokenizer.json). Output: Parquet with one row per document::

    id           the document's id
    n_tokens     its length in tokens
    logprob_sum  sum over i = 1 .. n-1 of log p(token_i | tokens 0 .. i-1), natural log, from
                 the logits in float64 with a stable log-softmax (the first token has no
                 context and is not scored)
    perplexity   exp(-logprob_sum / (n_tokens - 1)); null when n_tokens < 2 (then
                 logprob_sum is 0, an empty sum)

Example::

    from seqkern.score import score

    score("mamba-130m-hf", "corpus.jsonl", "scores.parquet")                 # this process
    score("mamba-130m-hf", "corpus.parquet", "scores.parquet", engine="ray")  # a Ray cluster

The local engine keeps the input's order and resumes: an interrupted run leaves part files in
``OUTPUT.parts/`` and the next run with the same model skips the documents they hold. The Ray
engine's output order is not the input's. Needs the ``score`` extra (pyarrow) for Parquet, the
``ray`` extra for Ray, and the ``models`` extra for model folders and tokenizers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, TextIO, Union

import numpy as np

from ._compute import perplexity, score_documents, token_logprobs
from ._input import InputError
from ._local import Progress, run_local
from ._model import ModelSource, Scorer, check_options, fingerprint, set_threads

__all__ = [
    "InputError",
    "Scorer",
    "perplexity",
    "score",
    "score_documents",
    "token_logprobs",
]

ENGINES = ("local", "ray")


def score(
    model: ModelSource,
    input: Union[str, Path],
    output: Union[str, Path],
    *,
    engine: str = "local",
    address: Optional[str] = None,
    batch_size: int = 8,
    max_tokens: int = 1024,
    tokenizer: Union[str, Path, None] = None,
    dtype: Any = np.float32,
    backend: str = "seqkern",
    threads: Optional[int] = None,
    actors: Optional[int] = None,
    restart: bool = False,
    progress: Optional[TextIO] = sys.stderr,
    part_size: int = 4096,
) -> int:
    """Scores every document of ``input`` into the Parquet file ``output``; returns the number
    of documents written.

    ``model``: a model folder (config.json, safetensors, tokenizer.json for text), a URI of one
    that pyarrow.fs opens (s3://, gs://, hdfs://, file://; copied once per machine), or a
    zero-argument callable that builds the model (with ``tokenizer`` the path of a
    tokenizer.json for text documents). The local engine also takes a loaded model.

    ``max_tokens``: tokens per forward call (rows x padded length); a forward call takes as
    many documents as fit whole (sorted by length within a window, right-padded: exact for a
    causal model), at most ``batch_size``; a longer document runs alone in pieces through the
    model's cache. Memory for the logits is about ``max_tokens x vocab x 4`` bytes.

    ``engine``: "local" (this process; resumable; keeps the input order) or "ray" (``address``
    joins a running cluster, else a local one is started; ``actors`` model replicas of
    ``threads`` CPUs each, by default as many 1-CPU actors as the cluster has CPUs).
    ``restart``: discard the parts of an interrupted local run instead of resuming.
    ``progress``: where progress lines go (None: nowhere). ``part_size``: documents per part
    file of the local engine (a part is also written at least once a minute).

    Bad input raises :class:`InputError` (a ValueError) naming the file, the row and the
    problem; ``output`` is then left as it was.
    """
    check_options(batch_size=batch_size, max_tokens=max_tokens, part_size=part_size)
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    options = {
        "tokenizer": tokenizer,
        "dtype": dtype,
        "backend": backend,
        "batch_size": int(batch_size),
        "max_tokens": int(max_tokens),
    }
    if engine == "ray":
        from ._ray import run_ray

        return run_ray(
            model,
            str(input),
            str(output),
            address=address,
            actors=actors,
            threads=threads or 1,
            progress=Progress(progress),
            **options,
        )
    if address is not None or actors is not None:
        raise ValueError("address and actors apply to engine='ray' only")
    source = Path(input)
    if not source.is_file():
        raise InputError(f"{source}: no such input file")
    set_threads(threads)
    scorer = Scorer(model, **options)
    return run_local(
        scorer,
        source,
        Path(output),
        model_fingerprint=fingerprint(model, dtype, backend),
        progress=Progress(progress),  # after loading: tokens/s counts scoring only
        restart=restart,
        window=min(max(256, 16 * int(batch_size)), part_size),
        part_size=part_size,
    )
