"""The Ray engine: ``ray.data`` reads the input on the cluster, ``map_batches`` runs a pool of
actors that each load the model once; the driver streams the results (four numbers a document)
into one Parquet file, renamed into place when complete, so no filesystem has to be shared for
the output; or, for an output URI, the workers ``write_parquet`` there.

Failures: Ray Data creates the actors of a pool with ``max_restarts=-1`` and
``max_task_retries=-1`` (its default, which this engine keeps), so a worker process that dies
(killed, out of memory, node lost) is restarted and its batch is run again; Ray Data keeps only
the output of batches that completed, so every document appears once.
An error raised by the scoring code itself (a bad row) is not retried: it stops the run and is
raised on the driver with its message.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ._input import InputError, check_row, input_format, require_pyarrow
from ._local import Progress, output_schema, to_table
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
    output: str,
    *,
    address: Optional[str],
    actors: Optional[int],
    threads: int,
    progress: Progress,
    **options: Any,
) -> int:
    """Scores ``source`` on a Ray cluster into ``output``; returns the number of documents.

    A local ``output`` path is written by the driver from the stream of results (one file,
    renamed into place when complete; no filesystem needs to be shared for it). A URI
    (s3://bucket/scores/) is a directory that the workers write into with ``write_parquet``.
    """
    ray = require_ray()
    require_pyarrow("the Ray engine")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address) if address else ray.init()
    progress.start = time.perf_counter()  # tokens/s counts from a running cluster
    try:
        if actors is None:
            actors = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        dataset = _dataset(ray, source).map_batches(
            RayScorer,
            fn_constructor_kwargs={"model": model, "threads": threads, **options},
            batch_format="pyarrow",
            batch_size=4 * options["batch_size"],
            # From one actor up to ``actors``: a pool that took every CPU at once would leave
            # none for the read tasks that feed it (Parquet's file listing needs one).
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
            num_cpus=threads,
        )
        try:
            if "://" in output:
                dataset.write_parquet(output, ray_remote_args={"num_cpus": 0})
                return ray.data.read_parquet(output).count()  # from the files' metadata
            return _write(dataset, Path(output), progress)
        except Exception as error:
            bad = _input_error(error)
            if bad is not None:
                raise bad from None
            raise
    finally:
        if started:
            ray.shutdown()


def _write(dataset: Any, output: Path, progress: Progress) -> int:
    """Streams the results into ``output`` through a temporary file and a rename."""
    import pyarrow.parquet as pq

    tmp = output.with_name(output.name + ".tmp")
    writer = None
    try:
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            if writer is None:
                id_kind = int if str(batch.schema.field("id").type).startswith("int") else str
                schema = output_schema(id_kind)
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(batch.cast(schema))
            progress.update(batch.num_rows, int(np.sum(batch.column("n_tokens"))))
        if writer is None:  # no documents
            writer = pq.ParquetWriter(tmp, output_schema(str))
        writer.close()
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    progress.finish()
    return progress.docs
