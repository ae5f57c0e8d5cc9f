"""Every fitted slope of several ``results.json`` side by side, with their spread.

``seqkern-bench --compare A/results.json B/results.json ...`` (or ``python -m
seqkern.bench.compare ...``) prints a Markdown table: one row per slope (each sweep series,
and each model's decode, prefill, generation and cache slopes), one column per run, then the
spread (max - min) and the largest distance from the median. It checks that repeated runs on
one machine agree; it measures nothing itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

MODEL_SLOPES = ("decode", "prefill", "generation", "cache")


def slopes(results: dict[str, Any]) -> dict[str, tuple[Optional[float], str]]:
    """``{name: (slope, fitted range)}`` for every slope of one results document, in report
    order."""
    found: dict[str, tuple[Optional[float], str]] = {}
    for s in results.get("sweeps", []):
        if s["status"] != "unavailable":
            name = f"sweep {s['kernel']} ({s['impl']})"
            found[name] = (s["slope"], _span(s.get("slope_lengths", [])))
    for r in results.get("models", {}).get("architectures", []):
        for key in MODEL_SLOPES:
            slope = r["slopes"][key]
            found[f"model {r['name']} {key}"] = (slope["slope"], _span(slope["lengths"]))
    return found


def _span(lengths: list[int]) -> str:
    return f"{lengths[0]}–{lengths[-1]}" if lengths else ""


def compare(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per slope: ``name``, ``ranges`` (the fitted ranges seen), ``values`` (None
    where a run has no such slope), ``spread`` (max - min) and ``from_median`` (the largest
    |value - median|)."""
    rows: dict[str, dict[str, Any]] = {}
    for i, document in enumerate(documents):
        for name, (value, span) in slopes(document).items():
            row = rows.setdefault(
                name, {"name": name, "ranges": [], "values": [None] * len(documents)}
            )
            row["values"][i] = value
            if span and span not in row["ranges"]:
                row["ranges"].append(span)
    for row in rows.values():
        present = [v for v in row["values"] if v is not None]
        row["spread"] = max(present) - min(present) if present else None
        middle = statistics.median(present) if present else None
        row["from_median"] = max(abs(v - middle) for v in present) if present else None
    return list(rows.values())


def markdown(paths: list[str], documents: list[dict[str, Any]], limit: float = 0.15) -> str:
    """The comparison as a Markdown table, and a closing line on the largest spread."""
    rows = compare(documents)
    head = ["slope", "fitted over", *(f"run {i + 1}" for i in range(len(paths))),
            "max − min", "max \\|x − median\\|"]  # fmt: skip
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    for row in rows:
        cells = [_fmt(v) for v in row["values"]]
        flag = " ⚠" if row["from_median"] is not None and row["from_median"] > limit else ""
        lines.append(
            f"| {row['name']} | {', '.join(row['ranges']) or '—'} | " + " | ".join(cells)
            + f" | {_fmt(row['spread'])} | {_fmt(row['from_median'])}{flag} |"
        )  # fmt: skip
    spreads = [r for r in rows if r["spread"] is not None]
    lines.append("")
    for i, (path, document) in enumerate(zip(paths, documents)):
        machine = document.get("machine", {})
        load_text = "".join(
            f", load {when} " + " ".join(f"{x:.2f}" for x in machine[key])
            for when, key in (
                ("at start", "load_average_at_start"),
                ("at end", "load_average_at_end"),
            )
            if machine.get(key)
        )
        lines.append(
            f"run {i + 1}: {path} ({document.get('created', '?')}, "
            f"{document.get('elapsed_seconds', 0):.0f} s{load_text})"
        )
    if spreads:
        worst = max(spreads, key=lambda r: r["from_median"])
        widest = max(spreads, key=lambda r: r["spread"])
        over = [r for r in spreads if r["from_median"] > limit]
        gaps = [r["name"] for r in spreads if None in r["values"]]
        missing = f" Missing in some runs: {', '.join(gaps)}." if gaps else ""
        lines += [
            "",
            f"Largest max − min: {widest['spread']:.3f} ({widest['name']}); largest distance "
            f"from the median: {worst['from_median']:.3f} ({worst['name']}); "
            f"{len(over)} of {len(spreads)} slopes more than ±{limit:g} from their median."
            + missing,
        ]
    return "\n".join(lines) + "\n"


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.3f}"


def main(argv: Optional[list[str]] = None, stream: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(
        prog="seqkern-bench --compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("results", nargs="+", help="results.json files (or their directories)")
    parser.add_argument(
        "--limit", type=float, default=0.15, help="flag slopes further than this from their median"
    )
    args = parser.parse_args(argv)
    paths = [str(Path(p) / "results.json") if Path(p).is_dir() else p for p in args.results]
    documents = [json.loads(Path(p).read_text()) for p in paths]
    stream.write(markdown(paths, documents, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
