"""Optional: transformers' own CPU implementation of the models section's architectures.

Only when torch and transformers are importable (never a dependency of seqkern): each model is
built by transformers from the same config (random weights, float32, eval, no gradients, torch
limited to seqkern's thread count) and timed at the section's shortest prompt (a forward with
all logits) and its shortest context (decode per token: the difference between ``generate``
calls of 1 + k and 1 new tokens, greedy, divided by k, so transformers' own cache handling runs).
Ratios are transformers' time over seqkern's at the same point.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

import seqkern

from .model_scaling import ARCHITECTURES, Architecture, Plan, config_of

DECODE_TOKENS = 8
REPEATS = 2

# model_type -> transformers' config and model classes (None: transformers has no such model).
CLASSES = {
    "mamba": ("MambaConfig", "MambaForCausalLM"),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM"),
    "bitnet": ("BitNetConfig", "BitNetForCausalLM"),
    "rwkv_x070": None,
}


def steps(names: Sequence[str]) -> int:
    """Progress steps: one per model (or one in all when skipped)."""
    return len(names)


def _skipped(note: str) -> dict[str, Any]:
    return {"status": "skipped", "note": note, "rows": []}


def _import_peers() -> tuple[Any, Any]:
    import torch
    import transformers

    return torch, transformers


def run(
    plan: Plan, names: Sequence[str], records: list[dict[str, Any]], progress: Callable
) -> dict[str, Any]:
    """The peers' rows (or the reason they were skipped)."""
    try:
        torch, transformers = _import_peers()
    except ImportError as exc:
        progress(f"peers    skipped: {exc} (torch and transformers are optional)", len(names))
        return _skipped(f"torch and transformers are not installed ({exc})")
    threads = int(seqkern.build_info()["threads"])
    torch.set_num_threads(threads)
    by_name = {r["name"]: r for r in records}
    rows, notes = [], []
    for arch in [a for a in ARCHITECTURES if a.name in names]:
        try:
            row = _measure(torch, transformers, arch, plan, by_name.get(arch.name))
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported
            row = None
            notes.append(f"{arch.name}: {type(exc).__name__}: {exc}")
        if isinstance(row, str):
            notes.append(f"{arch.name}: {row}")
            progress(f"peers    {arch.name:<12} skipped: {row}")
            continue
        if row is None:
            progress(f"peers    {arch.name:<12} failed: {notes[-1]}")
            continue
        rows.append(row)
        progress(
            f"peers    {arch.name:<12} transformers prefill {row['prefill_seconds'] * 1e3:.1f} ms, "
            f"decode {row['decode_seconds'] * 1e3:.1f} ms/token"
        )
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    note = "; ".join([f"{versions}, {threads} threads", *notes])
    return {"status": "ok" if rows else "skipped", "note": note, "rows": rows}


def _measure(torch: Any, transformers: Any, arch: Architecture, plan: Plan, record: Any):
    """One peer row, or a string saying why there is none."""
    config = config_of(arch, plan.tiny)
    classes = CLASSES.get(config["model_type"])
    if classes is None or not hasattr(transformers, classes[1]):
        return f"transformers {transformers.__version__} has no {arch.label} implementation"
    options = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = getattr(transformers, classes[0])(**options)
    torch.manual_seed(0)
    model = getattr(transformers, classes[1])(hf_config).float().eval()
    rng = np.random.default_rng(1)
    prompt, context = plan.prompts[0], plan.contexts[0]
    ids = torch.from_numpy(rng.integers(0, config["vocab_size"], (1, max(prompt, context))))
    with torch.no_grad():
        prefill = _best(lambda: model(ids[:, :prompt]))
        once = _best(lambda: _generate(model, ids[:, :context], 1))
        more = _best(lambda: _generate(model, ids[:, :context], 1 + DECODE_TOKENS))
    decode = max(more - once, 0.0) / DECODE_TOKENS
    ours_prefill = _at(record, "prefill", "length", prompt)
    ours_decode = _at(record, "decode", "context", context)
    return {
        "model": arch.name,
        "prompt": prompt,
        "context": context,
        "prefill_seconds": prefill,
        "decode_seconds": decode,
        "seqkern_prefill_seconds": ours_prefill,
        "seqkern_decode_seconds": ours_decode,
        "prefill_ratio": None if not ours_prefill else prefill / ours_prefill,
        "decode_ratio": None if not ours_decode else decode / ours_decode,
    }


def _generate(model: Any, ids: Any, new_tokens: int) -> Any:
    return model.generate(
        ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
        pad_token_id=0,
    )  # fmt: skip


def _best(fn: Callable[[], Any]) -> float:
    fn()
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)


def _at(record: Any, section: str, key: str, value: int) -> Any:
    if not record:
        return None
    return next((p["seconds"] for p in record[section] if p[key] == value), None)
