"""Turns the results document into ``report.md`` and, with matplotlib, the two plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .analysis import Crossover
from .machine import blas_summary
from .sweeps import ATTENTION_FIT_FROM, INPUT_BLOCK, RECURRENCE_FIT_FROM

SCALING_PNG = "scaling.png"
SPEEDUP_PNG = "speedup.png"


# --- formatting helpers


def ms(seconds: Optional[float]) -> str:
    """Milliseconds with 3 significant digits (at least 2 decimals below 1 ms)."""
    if seconds is None:
        return "—"
    value = seconds * 1e3
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default r
    after the first column)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def series_label(series: dict[str, Any]) -> str:
    return f"{series['kernel']} ({series['impl']})"


# --- report.md


def write_markdown(results: dict[str, Any], path: Path, plots: dict[str, str]) -> None:
    """Writes the report; ``plots`` maps plot names to the files written (may be empty)."""
    lines = _header(results)
    lines += _machine(results)
    if "sweep" in results["settings"]["sections"]:
        lines += _sweeps(results, plots.get(SCALING_PNG))
    if "ternary" in results["settings"]["sections"]:
        lines += _ternary(results["ternary"])
    if "cases" in results["settings"]["sections"]:
        lines += _fixed_shape(results["fixed_shape"], plots.get(SPEEDUP_PNG))
    if "models" in results["settings"]["sections"]:
        from . import render_models

        lines += render_models.section(results["models"], plots.get(render_models.MODELS_PNG))
    lines += _method(results)
    path.write_text("\n".join(lines) + "\n")


def _header(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    return [
        "# seqkern benchmark report",
        "",
        f"`{results['command']}` · seqkern {m['seqkern_version']} ({m['seqkern_profile']}) · "
        f"SIMD {m['simd']} · {m['seqkern_threads']} threads · {m['cpu_model']} · "
        f"{results['created']} · took {results['elapsed_seconds']:.0f} s",
        "",
    ]


def _load(load: Optional[list[float]]) -> str:
    return "?" if load is None else ", ".join(f"{x:.2f}" for x in load)


def _machine(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    env = m["blas_environment"]
    if env["unset_for_this_run"]:
        pairs = ", ".join(f"{k}={v}" for k, v in env["unset_for_this_run"].items())
        blas_env = f"{pairs} unset for this run (they make OpenBLAS assume another CPU)"
    elif env["in_effect"]:
        blas_env = ", ".join(f"{k}={v}" for k, v in env["in_effect"].items()) + " in effect"
    else:
        blas_env = "no OpenBLAS CPU overrides"
    memory = m.get("memory_total_bytes")
    load = m.get("load_average_at_start")
    rows = [
        ["CPU", f"{m['cpu_model']}, {m['cpus_available']} CPUs available"],
        ["Memory", "unknown" if memory is None else f"{memory / 2**30:.1f} GiB"],
        [
            "seqkern",
            f"{m['seqkern_version']}, {m['seqkern_profile']} build, SIMD path {m['simd']} "
            f"(best available: {m['simd_available']}), {m['seqkern_threads']} threads",
        ],
        ["NumPy", f"{m['numpy_version']}, BLAS {blas_summary(m['numpy_blas'])}"],
        ["BLAS environment", blas_env],
        ["Python", f"{m.get('python', '?')} on {m.get('platform', '?')}"],
        ["Load average (1, 5, 15 min) at start", _load(load)],
        ["Load average at the end", _load(m.get("load_average_at_end"))],
    ]
    return ["## Machine", "", *table(["", ""], rows, "ll"), ""]


def _sweeps(results: dict[str, Any], plot: Optional[str]) -> list[str]:
    series = results["sweeps"]
    settings = results["settings"]
    lengths = settings["lengths"]
    lines = [
        "## Linear versus quadratic: time per call against sequence length",
        "",
        "One sequence-mixing layer of a model of about 1.4B parameters (d_model 2048), "
        "batch 1, float32; seqkern and its NumPy reference run on the same inputs.",
        "",
    ]
    kernels: dict[str, dict[str, Any]] = {}
    for s in series:
        kernels.setdefault(s["kernel"], s)
    lines += table(
        ["kernel", "model", "shape"],
        [[f"`{k}`", s["model"], s["shape"]] for k, s in kernels.items()],
        "lll",
    )
    lines.append("")
    if plot:
        lines += [f"![Time per call against sequence length, log-log]({plot})", ""]
    measured = [s for s in series if s["points"]]
    if measured:
        lines += [
            "Milliseconds per call, the fastest of its samples (taken in interleaved rounds "
            "over the lengths; see Method); the slope is the least-squares fit of log t against "
            "log L over the lengths given in brackets (about 1 for a scan, 2 for attention): "
            f"from L = {RECURRENCE_FIT_FROM:,} for the recurrences, where every call's data is "
            "past the L3 cache (see Method), and "
            f"from L = {ATTENTION_FIT_FROM:,} for attention, or over the three longest measured "
            "lengths when fewer reach there; its 5–95 % bootstrap interval in square brackets.",
            "",
        ]
        rows = []
        for s in measured:
            by_length = {p["length"]: p["seconds"] for p in s["points"]}
            fitted = s["slope_lengths"]
            slope = "—"
            if s["slope"] is not None:
                spread = ""
                if s.get("slope_low") is not None:
                    spread = f" [{s['slope_low']:.2f}, {s['slope_high']:.2f}]"
                slope = f"**{s['slope']:.2f}**{spread} ({fitted[0]}–{fitted[-1]})"
            rows.append([series_label(s), *(ms(by_length.get(n)) for n in lengths), slope])
        lines += table(["series", *(f"L={n}" for n in lengths), "slope"], rows)
        lines.append("")
    lines += _crossovers(results["crossovers"])
    lines += _not_measured(series)
    return lines


def _crossovers(crossovers: list[dict[str, Any]]) -> list[str]:
    if not crossovers:
        return []
    by_kernel: dict[str, dict[str, str]] = {}
    for c in crossovers:
        phrase = Crossover(c["kind"], c["length"]).describe()
        by_kernel.setdefault(c["kernel"], {})[c["impl"]] = phrase
    rows = [[f"`{k}`", v.get("seqkern", "—"), v.get("numpy", "—")] for k, v in by_kernel.items()]
    return [
        "Crossover: the sequence length above which each recurrence is cheaper than causal "
        "attention (interpolated log-log between the measured lengths around it).",
        "",
        *table(
            ["recurrence", "seqkern vs seqkern attention", "NumPy vs NumPy attention"], rows, "lll"
        ),
        "",
    ]


def _not_measured(series: list[dict[str, Any]]) -> list[str]:
    notes = []
    missing: dict[str, list[dict[str, Any]]] = {}
    for s in series:
        if s["status"] == "unavailable":
            missing.setdefault(s["kernel"], []).append(s)
    for kernel, gone in missing.items():
        which = "" if len(gone) > 1 else f" ({gone[0]['impl']})"
        reasons = "; ".join(s["note"] for s in gone)
        notes.append(f"- `{kernel}`{which}: not available in this build ({reasons}).")
    for s in series:
        if s["status"] == "error":
            notes.append(f"- {series_label(s)}: failed, {s['note']}.")
        if s["skipped"]:
            first = min(p["length"] for p in s["skipped"])
            notes.append(
                f"- {series_label(s)}: skipped for L ≥ {first}, {s['skipped'][0]['reason']}."
            )
    if not notes:
        return []
    return ["Not measured:", "", *notes, ""]


def _ternary(section: dict[str, Any]) -> list[str]:
    lines = ["## Ternary matmul (BitNet b1.58) against NumPy float32 matmul", ""]
    if section["status"] == "unavailable":
        return [*lines, f"Not available in this build ({section['note']}).", ""]
    if section["status"] == "not run":
        return [*lines, "Not run.", ""]
    lines += [
        "`bitlinear(x, quantize_weights(W))` against `x @ W.T` on the same float32 W "
        "(out_features, in_features); M tokens of float32 activations. Effective bandwidth: "
        "bytes of the weight matrix in the format used, divided by the time per call.",
        "",
    ]
    rows = [
        [
            f"{r['in_features']} → {r['out_features']}",
            str(r["tokens"]),
            r["format"],
            f"{r['bits_per_weight']:.2f}",
            ms(r["seqkern_seconds"]),
            ms(r["numpy_seconds"]),
            f"**{r['speedup']:.1f}×**",
            f"{r['seqkern_gbps']:.1f}",
            f"{r['numpy_gbps']:.1f}",
        ]
        for r in section["rows"]
    ]
    header = [
        "shape (in → out)",
        "M",
        "format",
        "bits/weight",
        "seqkern ms",
        "NumPy f32 ms",
        "speedup",
        "seqkern GB/s",
        "NumPy GB/s",
    ]
    lines += table(header, rows, "lrlrrrrrr")
    if section["note"]:
        lines += ["", f"Failures: {section['note']}"]
    return [*lines, ""]


def _fixed_shape(section: dict[str, Any], plot: Optional[str]) -> list[str]:
    lines = ["## Speedups against the NumPy references at one fixed shape per kernel", ""]
    if section["status"] != "ok" and not section["rows"]:
        return [*lines, f"Not measured: {section['note'] or section['status']}.", ""]
    if plot:
        lines += [f"![Speedup over the NumPy reference]({plot})", ""]
    rows = [
        [
            f"`{r['kernel']}`",
            r["shape"],
            ms(r["seqkern_seconds"]),
            ms(r["numpy_seconds"]),
            f"**{r['speedup']:.1f}×**",
            r["target"] or "",
        ]
        for r in section["rows"]
    ]
    lines += table(
        ["kernel", "shape", "seqkern ms", "NumPy ms", "speedup", "target"], rows, "llrrrl"
    )
    if section["note"]:
        lines += ["", f"Failures: {section['note']}"]
    return [*lines, ""]


def _method(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    memory = (
        "no memory limit (unknown available memory)"
        if s["max_bytes"] is None
        else f"{s['max_bytes'] / 2**30:.1f} GiB for a NumPy reference"
    )
    return [
        "## Method",
        "",
        *_sweep_method(s),
        "- A point is skipped when its time, extrapolated from the fastest samples of the "
        f"previous points, exceeds "
        f"{s['max_call_seconds']:g} s per call, or its memory estimate exceeds {memory}; "
        "longer lengths of that series are skipped too.",
        "- The crossover is where log(t_recurrence / t_attention) changes sign for the last "
        "time, interpolated linearly in log L; when it has not changed sign by the longest "
        "common length, the two fitted power laws are extrapolated.",
        "- The report command relaunches itself without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE "
        "(when set, they make OpenBLAS use kernels for another CPU) unless given "
        "`--keep-blas-env`; the machine table says what was in effect.",
        "- Lengths: " + ", ".join(str(n) for n in s["lengths"]) + ".",
        *_models_method(results),
        "",
    ]


def _sweep_method(settings: dict[str, Any]) -> list[str]:
    """How the sweep points are sampled and the slopes fitted."""
    m = settings["sampling"]
    more = (
        f", more (up to {m['max_rounds']}) while the series has spent under "
        f"{m['series_seconds']:g} s, or under {1.5 * m['series_seconds']:g} s while the last round "
        "still lowered a minimum by over 5 % (it has not settled)"
        if m["max_rounds"] > m["rounds"]
        else ""
    )
    return [
        "- Sweep points: for each kernel and implementation, a first pass in increasing length "
        "decides which lengths run, warms each up (0.1 s of calls; none for calls predicted "
        f"over 0.5 s); then interleaved rounds over all its lengths, {m['rounds']} at least"
        f"{more}. In each round a point's calls repeat back to back until they fill "
        f"{m['round_call_seconds'] * 1e3:g} ms (at most {m['round_calls']} calls; at most 3 "
        "samples in all for calls predicted over 5 s). A slow moment of a shared machine thus "
        "lands on every length alike, and each point is the **minimum** of its samples (the "
        "work is deterministic, so noise only adds). The slope's interval is the 5th–95th "
        "percentile over 200 bootstrap resamplings of each fitted point's samples; the "
        "fixed-shape and ternary timings are medians of rounds that repeat fast calls for at "
        f"least 50 ms. Inputs longer than {INPUT_BLOCK} positions repeat a random block of "
        f"{INPUT_BLOCK} along the sequence (no kernel's cost depends on the values).",
        f"- Fitting ranges: the recurrences from L = {RECURRENCE_FIT_FROM:,}, where every "
        "call's data is past the 32 MiB L3 cache; below, the time steps up once where it "
        "leaves the cache, and a fit across that step measures the step, not the growth. The "
        "run asks glibc's allocator to keep freed memory: otherwise outputs of 32 MiB or more "
        "come from fresh mmaps whose pages each call faults in, a 3–4× step in one doubling "
        "whose size depends on the host at that moment. Past the L3 step the time is linear "
        f"again. Attention from L = {ATTENTION_FIT_FROM:,}, where its quadratic term "
        "dominates. A series cut short by the time limit is fitted over its three longest "
        "lengths.",
    ]


def _models_method(results: dict[str, Any]) -> list[str]:
    if "models" not in results["settings"]["sections"]:
        return []
    from . import render_models

    return render_models.method(results["models"])


# --- plots


def write_plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """Writes scaling.png and speedup.png when matplotlib is importable; returns the files
    written by name (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    written = {}
    sections = results["settings"]["sections"]
    if "sweep" in sections:
        _scaling_plot(plt, results["sweeps"], out / SCALING_PNG)
        written[SCALING_PNG] = SCALING_PNG
    if "cases" in sections or "ternary" in sections:
        _speedup_plot(plt, results, out / SPEEDUP_PNG)
        written[SPEEDUP_PNG] = SPEEDUP_PNG
    if "models" in sections:
        from . import render_models

        render_models.write_plot(plt, results["models"], out / render_models.MODELS_PNG)
        written[render_models.MODELS_PNG] = render_models.MODELS_PNG
    return written


def _scaling_plot(plt: Any, series: list[dict[str, Any]], path: Path) -> None:
    """Time per call against L (log-log) beside time per token (flat: linear in L)."""
    fig, (ax, per_token) = plt.subplots(1, 2, figsize=(15, 5.5))
    kernels = list(dict.fromkeys(s["kernel"] for s in series))
    colors = plt.get_cmap("tab10")
    lengths: set[int] = set()
    for s in series:
        if not s["points"]:
            continue
        color = colors(kernels.index(s["kernel"]) % 10)
        xs = [p["length"] for p in s["points"]]
        ys = [p["seconds"] * 1e3 for p in s["points"]]
        slope = "" if s["slope"] is None else f", slope {s['slope']:.2f}"
        style = dict(
            color=color,
            linestyle="-" if s["impl"] == "seqkern" else "--",
            marker="o" if s["impl"] == "seqkern" else "s",
            markersize=4,
        )
        ax.loglog(xs, ys, label=f"{s['kernel']} {s['impl']}{slope}", **style)
        per_token.loglog(xs, [y * 1e3 / n for n, y in zip(xs, ys)], **style)
        lengths.update(xs)
    for a in (ax, per_token):
        if lengths:
            ticks = sorted(lengths)
            a.set_xticks(ticks, [str(n) for n in ticks])
            a.minorticks_off()
        a.set_xlabel("sequence length L")
        a.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("time per call (ms)")
    ax.set_title("One layer, batch 1, float32: seqkern (solid) and NumPy (dashed)")
    per_token.set_ylabel("time per token, µs (flat: linear in L)")
    per_token.set_title("The same, divided by L")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no sweep measured", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _speedup_plot(plt: Any, results: dict[str, Any], path: Path) -> None:
    cases = results["fixed_shape"]["rows"]
    ternary = results["ternary"]["rows"]
    panels = (1 if cases else 0) + (1 if ternary else 0)
    # Each bar carries a two-line label: about 0.3 inch per bar keeps them apart.
    height = max(4.5, 0.3 * len(cases) + 1.0)
    fig, axes = plt.subplots(
        1, max(panels, 1), figsize=(6.5 * max(panels, 1), height), squeeze=False
    )
    axes = list(axes[0])
    if cases:
        _case_bars(axes.pop(0), cases)
    if ternary:
        _ternary_lines(axes.pop(0), ternary)
    if not panels:
        axes[0].text(0.5, 0.5, "no speedups measured", ha="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _case_bars(ax: Any, rows: list[dict[str, Any]]) -> None:
    labels = [f"{r['kernel']}\n{r['shape']}" for r in rows]
    values = [r["speedup"] for r in rows]
    positions = range(len(rows))
    ax.barh(positions, values, color="tab:blue")
    ax.set_yticks(list(positions), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(0.5, min(values) / 2), max(2.0, max(values)) * 4)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for y, v in zip(positions, values):
        ax.text(v, y, f" {v:.1f}×", va="center", fontsize=7)
    ax.set_xlabel("speedup over the NumPy reference (×, log scale)")
    ax.set_title("One fixed shape per kernel")


def _ternary_lines(ax: Any, rows: list[dict[str, Any]]) -> None:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = f"{r['in_features']}→{r['out_features']} {r['format']}"
        groups.setdefault(key, []).append(r)
    for key, group in groups.items():
        group.sort(key=lambda r: r["tokens"])
        ax.plot([r["tokens"] for r in group], [r["speedup"] for r in group], marker="o", label=key)
    ax.set_xscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("tokens M")
    ax.set_ylabel("speedup over NumPy float32 matmul (×)")
    ax.set_title("bitlinear against x @ W.T")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
