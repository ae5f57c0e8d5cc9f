"""The models section of ``report.md`` and its plot, ``models.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .analysis import Crossover
from .render import ms, table

MODELS_PNG = "models.png"


def _slope(s: dict[str, Any]) -> str:
    """``**0.03** [-0.01, 0.05] (512–4096)``: the fit, its bootstrap interval, its range."""
    if s["slope"] is None:
        return "—"
    lengths = s["lengths"]
    spread = "" if s["low"] is None else f" [{s['low']:.2f}, {s['high']:.2f}]"
    return f"**{s['slope']:.2f}**{spread} ({lengths[0]}–{lengths[-1]})"


def _mib(nbytes: Optional[float]) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:,.2f}"


def section(models: dict[str, Any], plot: Optional[str]) -> list[str]:
    """The Markdown of the models section."""
    lines = ["## Models: decoding cost against the context, recurrent and transformer", ""]
    if models["status"] == "not run":
        return [*lines, "Not run.", ""]
    archs = models["architectures"]
    plan = models["plan"]
    lines += [
        "Whole models at equal width and depth, so that only the sequence mixer differs: hidden "
        "768 and 24 residual sublayers each, every model at its published depth (Mamba and "
        "Mamba-2 stack 24 mixer blocks; RWKV-7 and the transformer 12 blocks of a mixer and an "
        "MLP, the convention that sets mamba-130m beside GPT-3 small), one vocabulary (50280) "
        "for all, random weights, batch 1, float32 activations. The transformer is BitNet b1.58 "
        "as released: its linear layers are ternary (2 bits a weight, int8 activations) where "
        "the recurrent models' are float32, so its cost per token at short contexts is lower "
        "for a reason other than its mixer, which moves the crossovers out; the costs of "
        "context (ms per 1k context, the slopes) belong to the mixers alone."
        + (" **Tiny shapes** (a check that the section runs, not a measurement)." if plan["tiny"]
           else ""),
        "",
    ]  # fmt: skip
    lines += table(
        ["model", "model_type", "depth", "linear weights", "parameters", "status"],
        [
            [
                r["label"],
                f"`{r['model_type']}`",
                r["depth"],
                r["weights"],
                "—" if r["parameters"] is None else f"{r['parameters'] / 1e6:.1f}M",
                r["status"] if not r["note"] else f"{r['status']}: {r['note']}",
            ]
            for r in archs
        ],
        "llllrl",
    )
    lines.append("")
    if plot:
        lines += [f"![Decode, generation, prefill and cache against the context]({plot})", ""]
    measured = [r for r in archs if r["decode"] or r["prefill"]]
    if measured:
        lines += _decode_table(measured, plan)
        lines += _cache_table(measured, plan)
        lines += _generation_table(measured, plan)
        lines += _prefill_table(measured, plan)
    lines += _crossover_lines(models["crossovers"], archs)
    lines += _not_measured(archs)
    lines += _peers(models["peers"])
    return lines


def _row(points: list[dict[str, Any]], key: str, columns: list[int], fmt) -> list[str]:
    by_key = {p[key]: p for p in points}
    return [fmt(by_key[c]) if c in by_key else "—" for c in columns]


def _decode_table(archs: list[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    contexts = plan["contexts"]
    rows = []
    for r in archs:
        line = r["decode_line"]
        per_k = "—" if line is None else f"{line['seconds_per_token'] * 1e6:+.2f}"
        cells = _row(r["decode"], "context", contexts, lambda p: ms(p["seconds"]))
        rows.append([r["label"], *cells, per_k, _slope(r["slopes"]["decode"])])
    return [
        f"Decode: milliseconds per token after a context of C tokens (minimum of "
        f"{plan['decode_samples']} single-token forwards). Flat means a constant cost per "
        "token; the slope is the log-log fit over the stated contexts with its 5–95 % bootstrap "
        "interval; ms per 1k context is the least-squares line t = a + b C, b in ms per 1000 "
        "tokens of context.",
        "",
        *table(
            ["model", *(f"C={c}" for c in contexts), "ms per 1k context", "log-log slope"], rows
        ),
        "",
    ]


def _cache_table(archs: list[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    contexts = plan["contexts"]
    rows = []
    for r in archs:
        slope = r["slopes"]["cache"]["slope"]
        cells = _row(r["decode"], "context", contexts, lambda p: _mib(p["cache_bytes"]))
        rows.append([r["label"], *cells, "—" if slope is None else f"{slope:.2f}"])
    return [
        "Cache or state held at context C, MiB (exact: `Cache.nbytes` of the cache decoded "
        "from; a KV cache allocates ahead, doubling its capacity, so its bytes grow in steps).",
        "",
        *table(["model", *(f"C={c}" for c in contexts), "log-log slope"], rows),
        "",
    ]


def _generation_table(archs: list[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    contexts = plan["contexts"]
    rows = []
    for r in archs:
        direct = r["direct"]
        check = "—"
        if direct and direct["integrated_seconds"] is not None:
            check = (
                f"{direct['seconds'] * 1e3:,.0f} ms measured, "
                f"{direct['integrated_seconds'] * 1e3:,.0f} ms integrated"
            )
        cells = _row(r["generation"], "tokens", contexts, lambda p: ms(p["seconds"]))
        rows.append([r["label"], *cells, _slope(r["slopes"]["generation"]), check])
    n = plan["direct_tokens"]
    return [
        "Generating N tokens from an empty cache, milliseconds: the sum of the per-token decode "
        "times at contexts 0 … N − 1 (linear between the measured contexts, the first "
        "context's time below it). Linear in N for a recurrent model, quadratic in the long "
        f"run for the transformer. The last column checks the integral against a direct "
        f"`generate` of N = {n} tokens (greedy, from a one-token prompt, the fastest of 3).",
        "",
        *table(["model", *(f"N={c}" for c in contexts), "log-log slope", f"N={n} direct"], rows),
        "",
    ]


def _prefill_table(archs: list[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    prompts = plan["prompts"]
    rows = []
    for r in archs:
        cells = _row(
            r["prefill"],
            "length",
            prompts,
            lambda p: f"{ms(p['seconds'])} ({p['seconds'] / p['length'] * 1e3:.2f})",
        )
        rows.append([r["label"], *cells, _slope(r["slopes"]["prefill"])])
    return [
        f"Prefill: milliseconds for a prompt of P tokens from an empty cache, all logits "
        f"(median of {_prefill_samples(plan)}), and in brackets milliseconds per prompt "
        "token (flat means linear).",
        "",
        *table(["model", *(f"P={p}" for p in prompts), "log-log slope"], rows),
        "",
    ]


def _prefill_samples(plan: dict[str, Any]) -> str:
    """How many samples each prefill point has: ``3 samples`` or ``3 to 6 samples``."""
    least, most = plan["prefill_repeats"], plan["prefill_max_repeats"]
    return f"{least} samples" if most <= least else f"{least} to {most} samples"


def _crossover_lines(crossovers: list[dict[str, Any]], archs: list[dict[str, Any]]) -> list[str]:
    if not crossovers:
        return []
    labels = {r["name"]: r["label"] for r in archs}
    rows = [
        [
            labels.get(c["model"], c["model"]),
            labels.get(c["against"], c["against"]),
            _describe(Crossover(c["decode_kind"], c["decode_context"]), "C"),
            _describe(Crossover(c["generation_kind"], c["generation_tokens"]), "N"),
        ]
        for c in crossovers
    ]
    return [
        "Where each recurrent model overtakes the transformer: the context from which it "
        "decodes a token faster, and the N from which generating N tokens from scratch is "
        "faster (interpolated linearly between measured points; beyond them, from the fitted "
        "decode lines t = a + b C: they meet at C*, the sums a N + b N² / 2 at N = 2 C*).",
        "",
        *table(["recurrent model", "against", "decode per token", "generating N tokens"], rows,
               "llll"),
        "",
    ]  # fmt: skip


def _describe(crossover: Crossover, symbol: str) -> str:
    """The crossover phrase, with ``symbol`` for the length and fitted lines, not slopes."""
    text = crossover.describe().replace("L ", f"{symbol} ")
    return text.replace("fitted slopes", "fitted decode lines")


def _not_measured(archs: list[dict[str, Any]]) -> list[str]:
    notes = [
        f"- {r['label']}: {'not available' if r['status'] == 'unavailable' else 'failed'}, "
        f"{r['note']}."
        for r in archs
        if r["status"] != "ok"
    ]
    for r in archs:
        for s in r["skipped"]:
            notes.append(f"- {r['label']}: {s['what']} at {s['length']} skipped, {s['reason']}.")
    return ["Not measured:", "", *notes, ""] if notes else []


def _peers(peers: dict[str, Any]) -> list[str]:
    lines = ["### Against transformers' own CPU implementation (`--peers`)", ""]
    if peers["status"] != "ok":
        return [*lines, f"Skipped: {peers['note'] or peers['status']}.", ""]
    rows = [
        [
            r["model"],
            f"{ms(r['prefill_seconds'])} / {ms(r['seqkern_prefill_seconds'])}",
            "—" if r["prefill_ratio"] is None else f"**{r['prefill_ratio']:.1f}×**",
            f"{ms(r['decode_seconds'])} / {ms(r['seqkern_decode_seconds'])}",
            "—" if r["decode_ratio"] is None else f"**{r['decode_ratio']:.1f}×**",
        ]
        for r in peers["rows"]
    ]
    first = peers["rows"][0]
    return [
        *lines,
        f"The same configs built by transformers (random weights, float32, eval, no gradients, "
        f"the same thread count): prefill of P = {first['prompt']} tokens and decode per token "
        f"at C = {first['context']} (the difference of two greedy `generate` calls). Ratio: "
        f"transformers' time over seqkern's. On a CPU transformers runs Mamba and Mamba-2 on "
        "its reference PyTorch paths (mamba_ssm and causal_conv1d are CUDA kernels), and its "
        "BitNet built from a config without quantization_config has float linear layers. "
        f"{peers['note']}.",
        "",
        *table(
            ["model", "prefill ms (transformers / seqkern)", "ratio",
             "decode ms (transformers / seqkern)", "ratio"],
            rows,
        ),
        "",
    ]  # fmt: skip


def method(models: dict[str, Any]) -> list[str]:
    """The models section's lines of the Method list."""
    plan = models["plan"]
    return [
        "- Models: every decode point is the fastest of its samples (the least disturbed run; "
        "the work is deterministic, so noise only adds), every prefill point the **median** of "
        "its samples (a call of a second or so on a shared machine is rarely undisturbed: the "
        "fastest is luck, the median the typical call, the same on a quiet machine), and the "
        "samples of all contexts of a "
        "model, and of all prompt lengths of all models, are taken in interleaved rounds, so "
        "that a burst of load on a shared machine touches every point alike instead of "
        "bending the curve at one. Decode at "
        "context C costs the same whatever the cache holds: a recurrent model decodes from the "
        "state of a 16-token prompt labelled C tokens, the transformer from a KV cache grown "
        "as a prefill grows it and holding C positions of random keys and values (a cache of "
        "another layout would be prefilled to C tokens in pieces); the rounds append a token "
        "each, so the last sample is at C + "
        f"{plan['decode_samples'] + 1}. The total time to generate N tokens is integrated from "
        "the per-token curve. Slopes: least squares of log t on log L, decode and generation "
        f"from C = {plan['decode_fit_from']}, prefill from P = {plan['prefill_fit_from']} (at "
        "shorter prompts the fixed cost of reading every weight matrix once is a large share "
        "of a prefill, so its curve has not reached its linear regime); the interval is the "
        "5th–95th percentile over 200 bootstrap resamplings of each point's samples. Prefill "
        f"takes {_prefill_samples(plan)} per prompt length in interleaved rounds: more "
        f"while the model's prefill rounds have taken under {plan['prefill_seconds']:g} s, or "
        f"under {1.5 * plan['prefill_seconds']:g} s while the last round still lowered a "
        "minimum by over 5 % (the minimum has not settled).",
    ]


# --- the plot


def write_plot(plt: Any, models: dict[str, Any], path: Path) -> None:
    """Six panels: decode per token, generation total, cache bytes; prefill total, prefill per
    token, generation per token."""
    archs = [r for r in models["architectures"] if r["decode"] or r["prefill"]]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = plt.get_cmap("tab10")
    panels = [
        (axes[0][0], "decode", "context", lambda p: p["seconds"] * 1e3, False,
         "context C", "decode, ms per token", "Decode per token (flat: constant)"),
        (axes[0][1], "generation", "tokens", lambda p: p["seconds"], True,
         "tokens generated N", "seconds (log)", "Generating N tokens from scratch"),
        (axes[0][2], "decode", "context", lambda p: p["cache_bytes"] / 2**20, True,
         "context C", "MiB (log)", "Cache / state bytes"),
        (axes[1][0], "prefill", "length", lambda p: p["seconds"] * 1e3, True,
         "prompt length P", "ms (log)", "Prefill time"),
        (axes[1][1], "prefill", "length", lambda p: p["seconds"] / p["length"] * 1e3, False,
         "prompt length P", "ms per prompt token", "Prefill per token (flat: linear)"),
        (axes[1][2], "generation", "tokens", lambda p: p["seconds"] / p["tokens"] * 1e3, False,
         "tokens generated N", "ms per generated token", "Generation, mean per token"),
    ]  # fmt: skip
    for ax, key, x_key, y_of, log_y, x_label, y_label, title in panels:
        for i, r in enumerate(archs):
            points = r[key]
            if not points:
                continue
            xs = [p[x_key] for p in points]
            ax.plot(xs, [y_of(p) for p in points], marker="o", markersize=4,
                    color=colors(i % 10), label=r["label"])  # fmt: skip
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    if archs:
        axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Whole models, hidden 768, 24 sublayers, batch 1, float32 (random weights)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
