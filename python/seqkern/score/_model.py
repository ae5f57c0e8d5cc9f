"""Where the model comes from: a local folder, a folder behind a filesystem URI (copied once per
process to local disk), or a callable that builds it; and the :class:`Scorer` that both engines
run (one per process, or one per Ray actor)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from ._compute import perplexity, score_documents
from ._input import Document, InputError, tokenize

__all__ = ["ModelSource", "Scorer", "fetch_folder"]

ModelSource = Union[str, Path, Callable[[], Any], Any]


def _is_uri(source: Any) -> bool:
    return isinstance(source, str) and "://" in source


def fetch_folder(uri: str) -> Path:
    """A local copy of the model folder at ``uri`` (s3://, gs://, hdfs://, file://: anything
    pyarrow.fs opens), made once per machine under the temp dir and reused."""
    from ._input import require_pyarrow

    require_pyarrow(f"reading the model from {uri}")
    import pyarrow.fs as pafs

    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / "seqkern-models" / key
    if (local / ".complete").is_file():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=local.parent))
    filesystem, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(path, staging.as_posix(), source_filesystem=filesystem)
    (staging / ".complete").write_text(uri)
    try:
        os.replace(staging, local)
    except OSError:  # another process on this machine finished first
        shutil.rmtree(staging, ignore_errors=True)
    return local


def resolve_folder(source: ModelSource) -> Optional[Path]:
    """The local model folder for a path or URI source; None for a callable or a model."""
    if _is_uri(source):
        return fetch_folder(source)
    if isinstance(source, (str, Path)):
        return Path(source)
    return None


def fingerprint(source: ModelSource, dtype: Any, backend: str) -> str:
    """What identifies the numbers a source gives: for a local folder, its config.json and the
    size and modification time of its weight files; otherwise the source's description."""
    parts: list[Any] = [str(np.dtype(dtype)), backend]
    if isinstance(source, (str, Path)) and not _is_uri(source) and Path(source).is_dir():
        folder = Path(source)
        config = folder / "config.json"
        parts.append(config.read_text() if config.is_file() else "")
        for file in sorted(folder.glob("*.safetensors*")):
            stat = file.stat()
            parts.append((file.name, stat.st_size, stat.st_mtime_ns))
    else:
        parts.append(_describe(source))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _describe(source: Any) -> str:
    """A description of a source that is the same in every process (no object addresses)."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, functools.partial):
        keywords = sorted(source.keywords.items())
        return f"{_describe(source.func)}(*{source.args!r}, **{keywords!r})"
    name = getattr(source, "__qualname__", None)
    if name is not None:
        return f"{getattr(source, '__module__', '')}.{name}"
    return repr(source)


def _load_tokenizer(file: Optional[Path]) -> Any:
    if file is None or not file.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise ImportError(
            f"reading {file} needs the tokenizers package: pip install 'seqkern[models]'"
        ) from error
    return Tokenizer.from_file(str(file))


def set_threads(threads: Optional[int]) -> None:
    """Kernel and BLAS threads for this process (None: leave as they are)."""
    if threads is None:
        return
    import seqkern

    seqkern.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass


class Scorer:
    """Loads a model (and its folder's tokenizer.json) once and scores batches of documents.

    ``model``: a model folder, a URI of one, a zero-argument callable returning a
    :class:`~seqkern.models.CausalLM`, or such a model itself. ``tokenizer``: a tokenizer.json
    path, for text documents when ``model`` is not a folder.
    """

    def __init__(
        self,
        model: ModelSource,
        *,
        tokenizer: Union[str, Path, None] = None,
        dtype: Any = np.float32,
        backend: str = "seqkern",
        batch_size: int = 8,
        max_tokens: int = 1024,
    ):
        from seqkern import models

        folder = resolve_folder(model)
        if folder is not None:
            self.model = models.load(folder, dtype=dtype, backend=backend)
        elif isinstance(model, models.CausalLM):
            self.model = model
        elif callable(model):
            self.model = model()
        else:
            raise TypeError(
                f"model: expected a folder, a URI, a callable or a CausalLM, got "
                f"{type(model).__name__}"
            )
        if tokenizer is None and folder is not None:
            tokenizer = folder / "tokenizer.json"
        self.tokenizer = _load_tokenizer(Path(tokenizer) if tokenizer is not None else None)
        if tokenizer is not None and self.tokenizer is None and folder is None:
            raise FileNotFoundError(f"tokenizer: no such file {tokenizer}")
        self.vocab_size = self.model.vocab_size
        self.batch_size = batch_size
        self.max_tokens = max_tokens

    def score(self, source: str, docs: list[Document]) -> dict[str, Any]:
        """Columns id, n_tokens, logprob_sum, perplexity for ``docs``, in their order."""
        tokenize(source, docs, self.tokenizer, self.vocab_size)
        tokens = [doc.input_ids for doc in docs]
        sums = score_documents(self.model, tokens, self.batch_size, self.max_tokens)
        n_tokens = np.array([len(t) for t in tokens], np.int64)
        return {
            "id": [doc.id for doc in docs],
            "n_tokens": n_tokens,
            "logprob_sum": sums,
            "perplexity": perplexity(n_tokens, sums),
        }


def check_options(**options: Any) -> None:
    """ValueError naming the option unless every one is an int >= 1."""
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


__all__ += ["InputError", "check_options", "fingerprint", "resolve_folder", "set_threads"]
