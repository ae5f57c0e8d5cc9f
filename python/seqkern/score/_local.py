"""The local engine: one process, streamed input, part files for resuming, one merge at the end.

While it runs, ``OUTPUT.parts/`` holds ``part-<first row>-<end row>.parquet`` files (each written
to a temporary name and renamed, so a part on disk is always whole) and a ``manifest.json``
naming the model. A rerun reads the parts, checks that the input's first rows still have the
same ids, skips them and goes on. At the end the parts are merged into a temporary file that is
renamed over OUTPUT in one step: OUTPUT is either the old file or the complete new one, never a
partial file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TextIO

import numpy as np

from ._input import Document, InputError, check_row, read_rows, require_pyarrow
from ._model import Scorer

__all__ = ["Progress", "run_local", "write_table"]

_PART = re.compile(r"^part-(\d{12})-(\d{12})\.parquet$")
MANIFEST_VERSION = 1


def output_schema(id_kind: Optional[type]) -> Any:
    """The output's Arrow schema; ids are int64 or string."""
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64() if id_kind is int else pa.string()),
            ("n_tokens", pa.int64()),
            ("logprob_sum", pa.float64()),
            ("perplexity", pa.float64()),
        ]
    )


def to_table(columns: dict[str, Any], id_kind: Optional[type]) -> Any:
    """An Arrow table of result columns; a NaN perplexity (fewer than 2 tokens) becomes null."""
    import pyarrow as pa

    ppl = np.asarray(columns["perplexity"], np.float64)
    arrays = [
        pa.array(columns["id"]),
        pa.array(np.asarray(columns["n_tokens"], np.int64)),
        pa.array(np.asarray(columns["logprob_sum"], np.float64)),
        pa.array(ppl, mask=np.isnan(ppl)),
    ]
    return pa.Table.from_arrays(arrays, schema=output_schema(id_kind))


def write_table(table: Any, path: Path) -> None:
    """Writes ``table`` to ``path`` through a temporary file and a rename: ``path`` is never a
    partial file."""
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def merge_parts(parts: list[Path], output: Path, schema: Any) -> None:
    """Concatenates ``parts`` (in order) into ``output``, atomically (temporary file + rename)."""
    import pyarrow.parquet as pq

    tmp = output.with_name(output.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            writer.write_table(pq.read_table(part).cast(schema))
    os.replace(tmp, output)


class Progress:
    """Documents, tokens and tokens/s on a stream (stderr), at most once per ``interval``
    seconds (a line rewritten in place on a terminal), and a last line at the end."""

    def __init__(self, stream: Optional[TextIO], interval: Optional[float] = None):
        self.stream = stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (1.0 if self.tty else 10.0)
        self.start = time.perf_counter()
        self.last = self.start
        self.docs = self.tokens = self.skipped = 0

    def line(self) -> str:
        """The current state as one line."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        resumed = f" (+{self.skipped} from earlier runs)" if self.skipped else ""
        return (
            f"seqkern-score: {self.docs} documents{resumed}, {self.tokens} tokens, "
            f"{self.tokens / elapsed:.0f} tokens/s, {elapsed:.0f} s"
        )

    def update(self, docs: int, tokens: int) -> None:
        """Counts ``docs`` more documents of ``tokens`` tokens; prints when the interval is up."""
        self.docs += docs
        self.tokens += tokens
        now = time.perf_counter()
        if self.stream is not None and now - self.last >= self.interval:
            self.last = now
            end = "\r" if self.tty else "\n"
            self.stream.write(self.line() + end)
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (resuming, done)."""
        if self.stream is not None:
            self.stream.write(f"seqkern-score: {text}\n")
            self.stream.flush()

    def finish(self) -> None:
        """The last line."""
        if self.stream is not None:
            self.stream.write(self.line() + "\n")
            self.stream.flush()


@dataclass
class _Resume:
    parts: list[Path]
    done: int  # rows already scored
    ids: list[Any]  # their ids, in order
    id_kind: Optional[type]


def _read_parts(folder: Path, manifest: dict, restart: bool) -> _Resume:
    """The parts left by an earlier run with the same model, or a fresh folder."""
    import pyarrow.parquet as pq

    file = folder / "manifest.json"
    if folder.exists() and (restart or not file.is_file()):
        shutil.rmtree(folder)
    if folder.exists():
        old = json.loads(file.read_text())
        if old.get("model") != manifest["model"] or old.get("version") != MANIFEST_VERSION:
            raise ValueError(
                f"{folder}: holds parts of a run with another model or options; remove it, "
                "or pass restart=True (--restart) to start over"
            )
        manifest["id_kind"] = old.get("id_kind")
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob("*.tmp"):
        leftover.unlink()
    found = sorted(
        (int(m.group(1)), int(m.group(2)), folder / m.group(0))
        for m in (_PART.match(p.name) for p in folder.iterdir())
        if m
    )
    parts, ids, done = [], [], 0
    for first, end, path in found:
        if first != done:  # a gap: what follows cannot be trusted; redo from here
            path.unlink()
            continue
        parts.append(path)
        ids.extend(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        done = end
    kinds = {"int": int, "str": str}
    id_kind = kinds.get(manifest.get("id_kind") or "")
    manifest["id_kind"] = id_kind.__name__ if id_kind else None
    file.write_text(json.dumps(manifest))
    return _Resume(parts, done, ids, id_kind)


def _windows(
    source: str, rows: Iterator[tuple[str, Any]], resume: _Resume, window: int, vocab: int
) -> Iterator[list[Document]]:
    """Checked documents in windows of ``window``, after skipping (and checking the ids of) the
    rows already scored."""
    batch: list[Document] = []
    id_kind = resume.id_kind
    for row, (where, record) in enumerate(rows):
        if row < resume.done:
            seen = record.get("id") if isinstance(record, dict) else None
            if seen != resume.ids[row]:
                raise InputError(
                    f"{source}: {where}: id {seen!r}, but the parts of the earlier run have "
                    f"{resume.ids[row]!r} there: the input changed; start over with "
                    "restart=True (--restart)"
                )
            continue
        doc = check_row(source, where, row, record, vocab, id_kind)
        id_kind = type(doc.id)
        batch.append(doc)
        if len(batch) == window:
            yield batch
            batch = []
    if batch:
        yield batch


def run_local(
    scorer: Scorer,
    source: Path,
    output: Path,
    *,
    model_fingerprint: str,
    progress: Progress,
    restart: bool = False,
    window: int = 256,
    part_size: int = 4096,
    part_seconds: float = 60.0,
) -> int:
    """Scores ``source`` into ``output``; returns the number of documents in ``output``."""
    require_pyarrow("writing Parquet output")
    rows = read_rows(source)
    folder = output.with_name(output.name + ".parts")
    manifest = {"version": MANIFEST_VERSION, "model": model_fingerprint}
    resume = _read_parts(folder, manifest, restart)
    if resume.done:
        progress.note(f"resuming: {resume.done} documents already scored in {folder}")
    progress.skipped = resume.done
    id_kind = resume.id_kind
    pending: list[dict[str, Any]] = []
    first, flushed_at = resume.done, time.perf_counter()

    def flush() -> None:
        nonlocal first, flushed_at, id_kind
        count = sum(len(c["id"]) for c in pending)
        if not count:
            return
        columns = {k: np.concatenate([np.asarray(c[k]) for c in pending]) for k in pending[0]}
        columns["id"] = [i for c in pending for i in c["id"]]
        id_kind = type(columns["id"][0])
        if not resume.id_kind:
            resume.id_kind = id_kind
            manifest["id_kind"] = id_kind.__name__
            (folder / "manifest.json").write_text(json.dumps(manifest))
        part = folder / f"part-{first:012d}-{first + count:012d}.parquet"
        write_table(to_table(columns, id_kind), part)
        resume.parts.append(part)
        first += count
        pending.clear()
        flushed_at = time.perf_counter()

    for docs in _windows(str(source), rows, resume, window, scorer.vocab_size):
        columns = scorer.score(str(source), docs)
        pending.append(columns)
        progress.update(len(docs), int(np.sum(columns["n_tokens"])))
        waiting = sum(len(c["id"]) for c in pending)
        if waiting >= part_size or time.perf_counter() - flushed_at >= part_seconds:
            flush()
    flush()
    merge_parts(resume.parts, output, output_schema(id_kind))
    shutil.rmtree(folder)
    progress.finish()
    return first
