"""``python -m seqkern.models.convert MODEL.pth OUT.safetensors``: a released RWKV .pth (a torch
state dict: BlinkDL's RWKV-7 x070 and RWKV-4 files) as one .safetensors file that
:func:`seqkern.models.load` reads.

Keys and shapes are kept exactly as in the .pth (no squeeze, no transpose, no folding of ln0
into the embedding): the loader expects RWKV-LM's own layout, e.g. ``blocks.{i}.att.x_r`` as
(1, 1, C) and ``blocks.{i}.att.r_k`` as (H, N). Float tensors keep their dtype: bfloat16 is
stored as BF16, float16 as F16, float32 as F32 (bit for bit). Tensors are written one at a
time, so memory stays near one tensor beyond the memory-mapped input. Needs torch (imported
only here, only to read the pickle); nothing else in seqkern does.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

__all__ = ["convert", "main", "write_raw_safetensors"]

# torch dtype name -> safetensors dtype name
_DTYPES = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int8": "I8",
    "torch.uint8": "U8",
}


def write_raw_safetensors(
    path: Path, header_items: list[tuple[str, str, tuple[int, ...], int]], blobs: Iterable[bytes]
) -> None:
    """Writes a .safetensors file from (key, dtype, shape, byte length) entries and then their
    data in the same order (one blob each), without holding more than one blob."""
    header: dict[str, Any] = {}
    offset = 0
    for key, kind, shape, size in header_items:
        header[key] = {"dtype": kind, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for (key, _, _, size), blob in zip(header_items, blobs):
            if len(blob) != size:
                raise ValueError(f"tensor {key!r}: expected {size} bytes, got {len(blob)}")
            handle.write(blob)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise SystemExit(
            "seqkern.models.convert: reading a .pth file needs torch (pip install torch; the "
            "CPU build is enough). Nothing else in seqkern needs it."
        ) from error
    return torch


def _tensors(state: Any, torch: Any) -> dict[str, Any]:
    """The tensors of a loaded .pth (a state dict, or a dict holding one under "state_dict")."""
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict (key -> tensor), got {type(state).__name__}")
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    others = sorted(set(state) - set(tensors))
    if others:
        print(
            f"skipping entries that are not tensors: {', '.join(map(str, others))}", file=sys.stderr
        )
    return tensors


def _blob(tensor: Any, torch: Any) -> bytes:
    """A tensor's bytes in C order (bfloat16 as its 16 raw bits per value)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


def convert(source: Path, target: Path) -> list[str]:
    """Converts ``source`` (.pth) to ``target`` (.safetensors); returns the keys written."""
    torch = _import_torch()
    try:
        state = torch.load(str(source), map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many kinds for an unreadable file
        raise ValueError(f"{source}: not a readable torch checkpoint ({error})") from error
    tensors = _tensors(state, torch)
    items = []
    for key in sorted(tensors):
        tensor = tensors[key]
        kind = _DTYPES.get(str(tensor.dtype))
        if kind is None:
            raise ValueError(f"tensor {key!r}: unsupported dtype {tensor.dtype}")
        size = tensor.numel() * tensor.element_size()
        items.append((key, kind, tuple(tensor.shape), size))

    def blobs() -> Iterator[bytes]:
        for key, _, _, _ in items:
            yield _blob(tensors[key], torch)

    write_raw_safetensors(target, items, blobs())
    return [key for key, _, _, _ in items]


def main(argv: Optional[list[str]] = None) -> int:
    """The command line: convert MODEL.pth OUT.safetensors."""
    parser = argparse.ArgumentParser(
        prog="python -m seqkern.models.convert",
        description="Convert a released RWKV .pth (torch state dict) to one .safetensors file "
        "that seqkern.models.load reads; keys, shapes and dtypes are kept as they are.",
    )
    parser.add_argument("source", type=Path, help="the .pth file")
    parser.add_argument("target", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.error(f"{args.source}: no such file")
    try:
        keys = convert(args.source, args.target)
    except ValueError as error:
        print(f"seqkern.models.convert: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(keys)} tensors to {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
