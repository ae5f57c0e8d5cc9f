"""Whole checkpoints on seqkern's kernels: load, forward with a cache, generate.

``load(path)`` reads a transformers model folder (config.json + model.safetensors, or shards
with model.safetensors.index.json) and returns a :class:`CausalLM`. The sequence mixers and
convs (BitNet: the ternary projections and the attention) run in seqkern, the float linear
layers through NumPy's BLAS, everything else in vectorised NumPy. Needs the ``models`` extra
(``pip install 'seqkern[models]'``: safetensors, and tokenizers for text).

Example::

    import numpy as np
    from seqkern import models

    lm = models.load("mamba-130m-hf")
    logits = lm(np.array([[1, 2, 3]]))                 # (1, 3, vocab)
    logits, cache = lm.forward(np.array([[1, 2]]))     # a prompt in pieces ...
    logits, cache = lm.forward(np.array([[3]]), cache) # ... continues from the cache
    ids = lm.generate(np.array([[1, 2, 3]]), 20, temperature=0.8, top_p=0.9, seed=0)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Union

import numpy as np

from .checkpoint import Checkpoint, read_config, resolve_dtype
from .core import BACKENDS, Cache, CausalLM, Weights

__all__ = ["ARCHITECTURES", "Cache", "CausalLM", "load"]

# config.json model_type -> the module that builds it (``from_checkpoint(config, weights,
# backend)``).
ARCHITECTURES = {
    "mamba": "seqkern.models.mamba",
    "mamba2": "seqkern.models.mamba2",
    "bitnet": "seqkern.models.bitnet",
    "rwkv": "seqkern.models.rwkv4",
    "rwkv_x070": "seqkern.models.rwkv7",
}

# Single .safetensors files without a config, told by their keys: layout name -> the module
# that recognises it (``LAYOUT_KEYS``, ``missing_keys(checkpoint)``,
# ``config_from_checkpoint(checkpoint) -> config or None``).
FILE_LAYOUTS = {
    "RWKV-7 x070 (RWKV-LM)": "seqkern.models.rwkv7",
    "RWKV-4 (RWKV-LM)": "seqkern.models.rwkv4",
}

HEADS = ("float", "int8")
# Architectures whose output head can be stored as int8 (``head="int8"``).
INT8_HEADS = ("bitnet",)


def _check_options(backend: Any, head: Any) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if head not in HEADS:
        raise ValueError(f"head: expected one of {HEADS}, got {head!r}")


def _load_folder(folder: Path, dtype: np.dtype, backend: str, head: str) -> CausalLM:
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{folder / 'config.json'}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    missing = [
        key for key in ("vocab_size", "hidden_size", "num_hidden_layers") if key not in config
    ]
    if missing:
        raise ValueError(f"{folder / 'config.json'}: missing {', '.join(missing)}")
    module = importlib.import_module(ARCHITECTURES[model_type])
    weights = Weights(Checkpoint.from_folder(folder), dtype)
    if head == "float":
        return module.from_checkpoint(config, weights, backend)
    if model_type not in INT8_HEADS:
        raise ValueError(
            f"head: {head!r} is supported for model_type {', '.join(INT8_HEADS)}, "
            f"not {model_type!r}"
        )
    return module.from_checkpoint(config, weights, backend, head=head)


def _load_file(path: Path, dtype: np.dtype, backend: str, head: str) -> CausalLM:
    if head != "float":
        raise ValueError(
            f"head: {head!r} is supported for model_type {', '.join(INT8_HEADS)} "
            "folders, not for single files"
        )
    if path.suffix in (".pth", ".pt", ".ckpt"):
        raise ValueError(
            f"{path}: a torch checkpoint; convert it first with "
            f"python -m seqkern.models.convert {path} {path.with_suffix('.safetensors')}"
        )
    checkpoint = Checkpoint([path])
    expected = []
    for layout, name in FILE_LAYOUTS.items():
        module = importlib.import_module(name)
        config = module.config_from_checkpoint(checkpoint)
        if config is not None:
            return module.from_checkpoint(config, Weights(checkpoint, dtype), backend)
        missing = module.missing_keys(checkpoint)
        more = f", ... ({len(missing)} in all)" if len(missing) > 6 else ""
        expected.append(
            f"{layout}: {', '.join(module.LAYOUT_KEYS)} (missing here: "
            f"{', '.join(missing[:6])}{more})"
        )
    found = checkpoint.keys()
    shown = ", ".join(found[:8]) + (f", ... ({len(found)} keys)" if len(found) > 8 else "")
    raise ValueError(
        f"{path}: its tensors fit no supported layout (found {shown or 'no tensors'}); "
        f"expected {'; '.join(expected)} ({{i}} = every block), or a transformers model folder"
    )


def load(
    path: Union[str, Path],
    *,
    dtype: Any = np.float32,
    backend: str = "seqkern",
    head: str = "float",
) -> CausalLM:
    """A model from a transformers folder or a single .safetensors file, ready to run.

    ``dtype``: float32 or float64, the dtype every float weight is converted to and the model
    computes in (checkpoints stored as F32, F16 or BF16 all load). ``backend``: "seqkern" (the
    Rust kernels) or "numpy" (the same model on :mod:`seqkern.reference`: the oracle and the
    baseline). ``head``: "float", or "int8" to store the output head (or the tied embedding)
    as int8 with a scale per row and run its GEMV in Rust (4x less memory traffic; BitNet
    only). Supported ``model_type``: see :data:`ARCHITECTURES`. Every tensor is checked
    against the config's shapes before the model is returned; a bad folder raises
    FileNotFoundError / ValueError naming the file or key, and nothing is half-loaded.
    """
    dtype = resolve_dtype(dtype)
    _check_options(backend, head)
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, dtype, backend, head)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model folder or file")
    return _load_file(path, dtype, backend, head)
