"""The Ray engine: ``ray.data`` reads the input on the cluster, ``map_batches`` runs a pool of
actors that each load the model once, ``write_parquet`` writes the results; the driver merges
the written files into one Parquet file (renamed into place when complete).

Failures: Ray Data creates the actors of a pool with ``max_restarts=-1`` and
``max_task_retries=-1`` (its default, which this engine keeps), so a worker process that dies
(killed, out of memory, node lost) is restarted and its batch is run again; Ray Data keeps only
the output of batches that completed, so every document appears once.
An error raised by the scoring code itself (a bad row) is not retried: it stops the run and is
raised on the driver with its message.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ._input import InputError, check_row, input_format, require_pyarrow
from ._local import Progress, merge_parts, output_schema, to_table
from ._model import ModelSource, Scorer, set_threads

__all__ = ["RayScorer", "require_ray", "run_ray"]


def require_ray() -> Any:
    """ray (with ray.data), or a clear ImportError saying which extra brings it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ImportError("engine='ray' needs Ray Data: pip install 'seqkern[ray]'") from error
    return ray


class RayScorer:
    """The ``map_batches`` class: loads the model once per actor, scores Arrow batches."""

    def __init__(self, model: ModelSource, threads: Optional[int], **options: Any):
        set_threads(threads)
        self.scorer = Scorer(model, **options)

    def __call__(self, batch: Any) -> Any:
        records = batch.to_pylist()
        docs = []
        for index, record in enumerate(records):
            source = str(record.pop("path", None) or "input")
            where = f"row {index} of a batch of {len(records)}"
            docs.append(check_row(source, where, index, record, self.scorer.vocab_size, None))
        columns = self.scorer.score(source, docs) if docs else None
        if columns is None:
            return to_table({"id": [], "n_tokens": [], "logprob_sum": [], "perplexity": []}, str)
        return to_table(columns, type(docs[0].id))


def _input_error(error: BaseException) -> Optional[InputError]:
    """The InputError that stopped a Ray run, found in the chain of exceptions Ray wraps it in
    (or, when Ray passed it on as text only, in their messages)."""
    seen, chain = set(), []
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, InputError) and not isinstance(error, ray_exceptions()):
            return InputError(*error.args)
        chain.append(str(error))
        error = getattr(error, "cause", None) or error.__cause__
    for text in chain:
        found = re.findall(r"InputError: (.+)", text)
        if found:
            return InputError(found[-1].strip())
    return None


def ray_exceptions() -> tuple:
    """Ray's own exception classes (a RayTaskError subclasses the error it wraps)."""
    import ray.exceptions

    return (ray.exceptions.RayError,)


def _dataset(ray: Any, source: str) -> Any:
    local = "://" not in source
    if local and not Path(source).is_file():
        raise InputError(f"{source}: no such input file")
    # Reading and writing are light next to the model: they take no CPU slot, so that the
    # actors can have every CPU without starving them.
    if input_format(Path(source)) == "parquet" if local else source.endswith((".parquet", ".pq")):
        return ray.data.read_parquet(source, include_paths=True, num_cpus=0)
    return ray.data.read_json(source, include_paths=True, num_cpus=0)


def run_ray(
    model: ModelSource,
    source: str,
    output: Path,
    *,
    address: Optional[str],
    actors: Optional[int],
    threads: int,
    progress: Progress,
    **options: Any,
) -> int:
    """Scores ``source`` on a Ray cluster into ``output``; returns the number of documents."""
    ray = require_ray()
    require_pyarrow("the Ray engine")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address) if address else ray.init()
    progress.start = time.perf_counter()  # tokens/s counts from a running cluster
    parts = output.with_name(output.name + ".ray-parts")
    try:
        if parts.exists():
            shutil.rmtree(parts)
        if actors is None:
            actors = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        dataset = _dataset(ray, source).map_batches(
            RayScorer,
            fn_constructor_kwargs={"model": model, "threads": threads, **options},
            batch_format="pyarrow",
            batch_size=max(options["batch_size"], 16),
            concurrency=actors,
            num_cpus=threads,
        )
        try:
            dataset.write_parquet(str(parts), ray_remote_args={"num_cpus": 0})
        except Exception as error:
            bad = _input_error(error)
            if bad is not None:
                raise bad from None
            raise
        return _merge(parts, output, progress)
    finally:
        if parts.exists():
            shutil.rmtree(parts, ignore_errors=True)
        if started:
            ray.shutdown()


def _merge(parts: Path, output: Path, progress: Progress) -> int:
    import pyarrow.parquet as pq

    files = sorted(parts.rglob("*.parquet"))
    kinds = {pq.read_schema(f).field("id").type for f in files}
    id_kind = int if kinds and all(str(k).startswith("int") for k in kinds) else str
    schema = output_schema(id_kind)
    merge_parts(files, output, schema)
    table = pq.read_table(output, columns=["n_tokens"])
    progress.docs, progress.tokens = table.num_rows, int(np.sum(table.column("n_tokens")))
    progress.finish()
    return table.num_rows
