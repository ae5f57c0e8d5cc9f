"""Reading documents: JSON Lines or Parquet, streamed, each row checked and named on error.

A row is ``{"id": ..., "input_ids": [...]}`` or ``{"id": ..., "text": "..."}``. Ids are ints or
strings (one kind per corpus: the first document's decides); token ids are checked against the
model's vocabulary; text is tokenized with the model folder's tokenizer.json.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

__all__ = ["Document", "InputError", "check_row", "read_rows", "require_pyarrow", "tokenize"]


class InputError(ValueError):
    """A document that cannot be scored, or an input file that cannot be read; the message names
    the file and the row."""


def require_pyarrow(what: str) -> Any:
    """pyarrow (and pyarrow.parquet), or a clear ImportError saying which extra brings it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"{what} needs pyarrow: pip install 'seqkern[score]' (or 'seqkern[ray]')"
        ) from error
    return pyarrow


@dataclass
class Document:
    """One checked row: its position in the input, its id, and its tokens or its text."""

    row: int
    where: str  # "line 12" / "row 11": how messages name the row
    id: Union[int, str]
    input_ids: Optional[np.ndarray] = None
    text: Optional[str] = None


def input_format(path: Path) -> str:
    """Either "jsonl" or "parquet", from the suffix (.jsonl, .json, .ndjson, optionally .gz;
    .parquet, .pq) or, failing that, from the Parquet magic bytes."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if last in (".parquet", ".pq"):
        return "parquet"
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise InputError(f"{path}: cannot read the input ({error.strerror or error})") from None
    return "parquet" if magic == b"PAR1" else "jsonl"


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        handle = opener(path, "rb")
    except OSError as error:
        raise InputError(f"{path}: cannot read the input ({error.strerror or error})") from None
    with handle:
        line_number = 0
        while True:
            try:
                raw = handle.readline()
                line = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError, EOFError) as error:
                raise InputError(f"{path}: line {line_number + 1}: cannot read ({error})") from None
            if not raw:
                return
            line_number += 1
            if not line.strip():
                continue
            try:
                yield f"line {line_number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}: line {line_number}: not valid JSON ({error})") from None


def _parquet_rows(path: Path, batch_rows: int = 1024) -> Iterator[tuple[str, Any]]:
    require_pyarrow("reading Parquet input")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        names = set(file.schema_arrow.names)
        columns = [c for c in ("id", "input_ids", "text") if c in names]
        row = 0
        for batch in file.iter_batches(batch_size=batch_rows, columns=columns):
            for record in batch.to_pylist():
                yield f"row {row}", record
                row += 1
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{path}: cannot read the Parquet input ({error})") from None


def read_rows(path: Union[str, Path]) -> Iterator[tuple[str, Any]]:
    """(where, raw row) for each document of a JSON Lines or Parquet file, streamed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such input file")
    if input_format(path) == "parquet":
        return _parquet_rows(path)
    return _jsonl_rows(path)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_row(
    source: str, where: str, row: int, record: Any, vocab_size: int, id_kind: Optional[type]
) -> Document:
    """A :class:`Document` from a raw row, or an :class:`InputError` naming the row and the
    problem. ``id_kind``: int or str, the kind every id must have (None: any of the two)."""
    place = f"{source}: {where}"
    if not isinstance(record, dict):
        raise InputError(f"{place}: expected a JSON object, got {type(record).__name__}")
    doc_id = record.get("id")
    if doc_id is None:
        raise InputError(f"{place}: missing 'id'")
    if _is_int(doc_id):
        doc_id = int(doc_id)
    elif not isinstance(doc_id, str):
        raise InputError(f"{place}: 'id' must be an int or a string, got {type(doc_id).__name__}")
    if id_kind is not None and not isinstance(doc_id, id_kind):
        raise InputError(
            f"{place} (id {doc_id!r}): 'id' is a {type(doc_id).__name__} but earlier ids are "
            f"{id_kind.__name__}s; use one kind for the whole corpus"
        )
    place = f"{place} (id {doc_id!r})"
    ids, text = record.get("input_ids"), record.get("text")
    if ids is not None and text is not None:
        raise InputError(f"{place}: has both 'input_ids' and 'text'; give one")
    if ids is None and text is None:
        raise InputError(f"{place}: has neither 'input_ids' nor 'text'")
    if text is not None:
        if not isinstance(text, str):
            raise InputError(f"{place}: 'text' must be a string, got {type(text).__name__}")
        return Document(row, where, doc_id, text=text)
    return Document(row, where, doc_id, input_ids=check_ids(place, ids, vocab_size))


def check_ids(place: str, ids: Any, vocab_size: int) -> np.ndarray:
    """Token ids as int64, each in [0, vocab_size); InputError naming ``place`` otherwise."""
    if not isinstance(ids, (list, tuple, np.ndarray)):
        raise InputError(f"{place}: 'input_ids' must be a list of ints, got {type(ids).__name__}")
    if not all(_is_int(token) for token in ids):
        bad = next(token for token in ids if not _is_int(token))
        raise InputError(f"{place}: 'input_ids' must be a list of ints, found {bad!r}")
    array = np.asarray(ids, dtype=np.int64).reshape(-1)
    outside = np.flatnonzero((array < 0) | (array >= vocab_size))
    if outside.size:
        at = int(outside[0])
        raise InputError(
            f"{place}: token id {int(array[at])} at position {at} is outside the model's "
            f"vocabulary [0, {vocab_size})"
        )
    return array


def tokenize(source: str, docs: list[Document], tokenizer: Any, vocab_size: int) -> None:
    """Fills ``input_ids`` of the text documents (one batched call to the tokenizer)."""
    texts = [doc for doc in docs if doc.input_ids is None]
    if not texts:
        return
    if tokenizer is None:
        doc = texts[0]
        raise InputError(
            f"{source}: {doc.where} (id {doc.id!r}): has 'text' but the model folder has no "
            "tokenizer.json; give 'input_ids' instead"
        )
    encodings = tokenizer.encode_batch([doc.text for doc in texts])
    for doc, encoding in zip(texts, encodings):
        place = f"{source}: {doc.where} (id {doc.id!r})"
        doc.input_ids = check_ids(place, encoding.ids, vocab_size)
        doc.text = None
