"""BitNet b1.58 at the bitnet-b1.58-2B-4T shapes (random weights): decode per token at several
contexts, prefill, and the int8 head, each beside its floor.

- decode: one token after a context of C tokens, with the float32 head and with ``head="int8"``;
  the floor is the model's own layers alone (its bitlinear calls per layer back to back on one
  row, made as the model makes them: each with the RMS norm before it, q/k/v in one call, o,
  gate/up in one call, down; plus the head's GEMV), and the attention part is the 30
  attention calls alone with the bytes of cache they read.
- prefill: a prompt of T tokens (all logits) against the same layers alone on T rows.
- head: the 128256 x 2560 GEMV in int8 (seqkern; int8 or float activations) beside float32
  (NumPy), ms and GB/s.

The decode cache is filled with constant keys and values instead of running a C-token
prefill first (a step's cost does not depend on the values). Usage: ``python -m
seqkern.bench.bitnet [--layers 30] [--prefill-layers 4] [--contexts 512,2048,8192]
[--prompt 512] [--repeats 5] [--json PATH]``. With fewer layers than 30, the per-token figures
are also scaled to 30 layers (the head counted once), and the output says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

import seqkern

from .. import ternary
from ..attention import causal_attention
from ..models import bitnet
from ..models.testing import RandomCheckpoint, _from_checkpoint

# bitnet-b1.58-2B-4T (config.json of microsoft/bitnet-b1.58-2B-4T).
CONFIG: dict[str, Any] = dict(
    model_type="bitnet",
    vocab_size=128256,
    hidden_size=2560,
    intermediate_size=6912,
    num_hidden_layers=30,
    num_attention_heads=20,
    num_key_value_heads=5,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    hidden_act="relu2",
    tie_word_embeddings=True,
    quantization_config=dict(quant_method="bitnet", quantization_mode="offline"),
)
FULL_LAYERS = 30


def build(layers: int, seed: int = 0) -> bitnet.BitNetLM:
    """The model with ``layers`` layers: random packed ternary projections (codes uniform in
    {-1, 0, 1}, weight_scale 0.25), random float32 norms and embedding."""
    rng = np.random.default_rng(seed)
    config = dict(CONFIG, num_hidden_layers=layers)
    checkpoint = RandomCheckpoint(seed)
    h, f, d = config["hidden_size"], config["intermediate_size"], 128
    shapes = {
        "self_attn.q_proj": (20 * d, h),
        "self_attn.k_proj": (5 * d, h),
        "self_attn.v_proj": (5 * d, h),
        "self_attn.o_proj": (h, 20 * d),
        "mlp.gate_proj": (f, h),
        "mlp.up_proj": (f, h),
        "mlp.down_proj": (h, f),
    }
    for i in range(layers):
        for name, (n, k) in shapes.items():
            key = f"model.layers.{i}.{name}.weight"
            fields = rng.integers(0, 3, (4, n // 4, k), dtype=np.uint8)
            packed = fields[0] | (fields[1] << 2) | (fields[2] << 4) | (fields[3] << 6)
            checkpoint.tensors[key] = packed
            checkpoint.tensors[key + "_scale"] = np.array([0.25], np.float32)
    return _from_checkpoint(config, checkpoint, np.float32, "seqkern")


def with_int8_head(model: bitnet.BitNetLM) -> bitnet.BitNetLM:
    """The same model (weights shared) with its head stored as int8."""
    twin = copy.copy(model)
    twin.head = "int8"
    twin.lm_head_int8 = ternary.Int8Weight.from_float(model.lm_head)
    return twin


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def decode_step(model: bitnet.BitNetLM, context: int) -> Callable[[], Any]:
    """One token after ``context`` cached tokens (the cache is rewound before each call)."""
    cache = model.new_cache(1)
    model._reserve(cache, context + 1)
    cache["k"].fill(0.01)
    cache["v"].fill(0.01)
    token = np.array([[7]])

    def run() -> Any:
        cache.seq_len = context
        return model.forward(token, cache)

    return run


def layers_alone(model: bitnet.BitNetLM, rows: int) -> Callable[[], None]:
    """The model's bitlinear calls back to back on ``rows`` rows, made as the model makes them
    (each with the RMS norm before it; q/k/v in one call, o, gate/up in one call, down), then
    its head."""
    rng = np.random.default_rng(0)
    calls = [
        ([layer.proj[name] for name in names], getattr(layer, norm))
        for layer in model.layers
        for names, norm in (
            (bitnet.PROJECTIONS[:3], "input_norm"),
            (("o_proj",), "attn_sub_norm"),
            (("gate_proj", "up_proj"), "post_norm"),
            (("down_proj",), "ffn_sub_norm"),
        )
    ]
    inputs = {
        k: rng.standard_normal((rows, k)).astype(np.float32)
        for k in {group[0].in_features for group, _ in calls} | {model.hidden_size}
    }

    def run() -> None:
        for group, norm in calls:
            ternary._bitlinear_many(inputs[group[0].in_features], group, None, norm, model.eps)
        x = inputs[model.hidden_size]
        if model.lm_head_int8 is not None:
            ternary.int8_matmul(x, model.lm_head_int8)
        else:
            x @ model.lm_head.T

    return run


def attention_alone(model: bitnet.BitNetLM, context: int) -> tuple[Callable[[], None], int]:
    """The model's attention calls of one decode step alone, and the cache bytes they read."""
    cache = model.new_cache(1)
    model._reserve(cache, context + 1)
    cache["k"].fill(0.01)
    cache["v"].fill(0.01)
    q = np.random.default_rng(0).standard_normal((1, model.heads, 1, 128)).astype(np.float32)
    end = context + 1

    def run() -> None:
        for i in range(model.num_layers):
            causal_attention(q, cache["k"][i][:, :, :end], cache["v"][i][:, :, :end])

    read = 2 * model.num_layers * model.kv_heads * end * model.head_dim * 4
    return run, read


def head_gemv(model: bitnet.BitNetLM, repeats: int) -> dict[str, float]:
    """The head's GEMV at batch 1, side by side: int8 codes with int8 activations (the model's
    ``head="int8"``: exact int32 sums, VNNI where available), int8 codes with float activations,
    and float32 (NumPy)."""
    x = np.random.default_rng(0).standard_normal((1, model.hidden_size)).astype(np.float32)
    weight = ternary.Int8Weight.from_float(model.lm_head)
    int8_s = median_seconds(lambda: ternary.int8_matmul(x, weight), repeats)
    float_act_s = median_seconds(
        lambda: ternary.int8_matmul(x, weight, activations="float"), repeats
    )
    float_s = median_seconds(lambda: x @ model.lm_head.T, repeats)
    return {
        "int8_ms": int8_s * 1e3,
        "int8_GBps": weight.nbytes / int8_s / 1e9,
        "int8_float_activations_ms": float_act_s * 1e3,
        "int8_float_activations_GBps": weight.nbytes / float_act_s / 1e9,
        "float32_ms": float_s * 1e3,
        "float32_GBps": model.lm_head.nbytes / float_s / 1e9,
    }


def scaled(seconds: float, head_seconds: float, layers: int) -> float:
    """A per-token time measured with ``layers`` layers, scaled to 30 (head counted once)."""
    return head_seconds + (seconds - head_seconds) * FULL_LAYERS / layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=30, help="layers for decode (30)")
    parser.add_argument("--prefill-layers", type=int, default=4, help="layers for prefill (4)")
    parser.add_argument("--contexts", default="512,2048,8192", help="decode contexts")
    parser.add_argument("--prompt", type=int, default=512, help="prefill length (512)")
    parser.add_argument("--repeats", type=int, default=5, help="calls per figure (5)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    info = seqkern.build_info()
    print(
        f"seqkern {info['version']}, SIMD {info['simd']}, {info['threads']} threads; "
        "bitnet-b1.58-2B-4T shapes, random weights, float32, batch 1"
    )
    results: dict[str, Any] = {"build_info": info, "layers": args.layers}
    model = build(args.layers)
    int8_model = with_int8_head(model)
    head = head_gemv(model, args.repeats)
    results["head"] = head
    print(
        f"head GEMV 128256 x 2560: int8 {head['int8_ms']:.1f} ms ({head['int8_GBps']:.1f} GB/s)"
        f", int8 with float activations {head['int8_float_activations_ms']:.1f} ms "
        f"({head['int8_float_activations_GBps']:.1f} GB/s)"
        f", float32 NumPy {head['float32_ms']:.1f} ms ({head['float32_GBps']:.1f} GB/s)"
    )
    head_s = {"float": head["float32_ms"] / 1e3, "int8": head["int8_ms"] / 1e3}
    decode = []
    for context in (int(c) for c in args.contexts.split(",")):
        row: dict[str, Any] = {"context": context}
        for name, m in (("float", model), ("int8", int8_model)):
            row[f"{name}_ms"] = median_seconds(decode_step(m, context), args.repeats) * 1e3
            row[f"{name}_floor_ms"] = median_seconds(layers_alone(m, 1), args.repeats) * 1e3
        run, read = attention_alone(model, context)
        attn_s = median_seconds(run, args.repeats)
        row["attention_ms"] = attn_s * 1e3
        row["attention_GBps"] = read / attn_s / 1e9
        if args.layers != FULL_LAYERS:
            for name in ("float", "int8"):
                row[f"{name}_ms_30_layers"] = (
                    scaled(row[f"{name}_ms"] / 1e3, head_s[name], args.layers) * 1e3
                )
        decode.append(row)
        print(
            f"decode @ {context}: float head {row['float_ms']:.1f} ms/token (layers alone "
            f"{row['float_floor_ms']:.1f} ms, x{row['float_ms'] / row['float_floor_ms']:.2f}); "
            f"int8 head {row['int8_ms']:.1f} ms/token (layers alone {row['int8_floor_ms']:.1f} "
            f"ms, x{row['int8_ms'] / row['int8_floor_ms']:.2f}); attention alone "
            f"{row['attention_ms']:.1f} ms at {row['attention_GBps']:.1f} GB/s of cache"
        )
    results["decode"] = decode
    small = build(args.prefill_layers)
    ids = np.random.default_rng(1).integers(0, CONFIG["vocab_size"], (1, args.prompt))
    prefill_s = median_seconds(lambda: small(ids), max(1, args.repeats // 2))
    floor_s = median_seconds(layers_alone(small, args.prompt), max(1, args.repeats // 2))
    results["prefill"] = {
        "prompt": args.prompt,
        "layers": args.prefill_layers,
        "seconds": prefill_s,
        "layers_alone_seconds": floor_s,
    }
    print(
        f"prefill {args.prompt} tokens with {args.prefill_layers} layers (all logits): "
        f"{prefill_s:.2f} s, layers alone {floor_s:.2f} s, x{prefill_s / floor_s:.2f}"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
