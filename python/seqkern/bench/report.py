"""The benchmark report: linear versus quadratic, measured.

``seqkern-bench [--quick] [--out DIR]`` (or ``python -m seqkern.bench``) sweeps the sequence
length for every recurrent kernel and for causal attention, seqkern and NumPy side by side,
fits the log-log slopes, finds the crossover lengths, times the ternary kernel against NumPy
float32 matmul, times every registered kernel against its NumPy reference at one fixed
shape, and times whole models against the context (decode, prefill, cache bytes, generation;
see :mod:`seqkern.bench.model_scaling`). It writes ``report.md``, ``results.json`` and, when
matplotlib is installed (the ``bench`` extra), ``scaling.png``, ``speedup.png`` and
``models.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, TextIO

import seqkern

from . import compare, machine, model_scaling, peers, render, sweeps, ternary_bench
from .analysis import crossover
from .cases import all_cases
from .ratios import measure_case
from .results import SCHEMA_ID, write_json
from .timing import keep_freed_memory

SECTIONS = ("sweep", "ternary", "cases", "models")
QUICK_LONGEST, FULL_LONGEST, SHORTEST = 4096, 32768, 128
QUICK_SWEEP_LONGEST = 16384
"""The quick sweep goes past QUICK_LONGEST so that the recurrences have three lengths from
:data:`sweeps.RECURRENCE_FIT_FROM` on to fit their slopes over."""
QUICK_PROMPTS, FULL_PROMPTS = (256, 1024), (128, 4096)
QUICK_SAMPLING = sweeps.Sampling(rounds=5, max_rounds=10, series_seconds=1.5)
FULL_SAMPLING = sweeps.Sampling(rounds=5, max_rounds=15, series_seconds=20.0)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(choices)}, got {text!r}"
            )
        return names

    return parse


def _shape_list(text: str) -> list[tuple[int, int]]:
    try:
        return [ternary_bench.parse_shape(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    kernel_names = tuple(k.name for k in sweeps.KERNELS)
    p = argparse.ArgumentParser(
        prog="seqkern-bench",
        description="Sweeps sequence length for the recurrent kernels and causal attention "
        "(seqkern and NumPy side by side), fits log-log slopes and crossovers, times the "
        "ternary kernel against NumPy float32 matmul and one fixed shape per kernel, and whole "
        "models against the context; writes report.md, results.json and (with matplotlib) "
        "scaling.png, speedup.png and models.png.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"sweep lengths {SHORTEST}..{QUICK_SWEEP_LONGEST}, model contexts {SHORTEST}.."
        f"{QUICK_LONGEST}, 3 rounds at least, 0.75 s per sweep call at most (under 3 minutes on 2 "
        "cores)",
    )
    p.add_argument("--out", type=Path, default=Path("seqkern-report"), help="output directory")
    p.add_argument("--lengths", type=_int_list, help="sweep lengths, e.g. 128,512,2048")
    p.add_argument("--max-length", type=int, help="longest sweep length (geometric from 128)")
    p.add_argument(
        "--repeats",
        type=int,
        help="interleaved rounds per sweep point (default: 3 quick, 5 full, and more while a "
        "series has spent under 1.5 s quick, 20 s full), prefill samples, timed rounds of the "
        "other sections",
    )
    p.add_argument(
        "--max-call-seconds",
        type=float,
        help="skip points predicted to take longer per call (0.75 s quick, 30 s full)",
    )
    p.add_argument(
        "--memory-fraction",
        type=float,
        default=0.4,
        help="skip NumPy references estimated to need more than this share of the memory "
        "available at start (default 0.4)",
    )
    p.add_argument(
        "--sections",
        type=_name_list(SECTIONS),
        default=list(SECTIONS),
        help="what to run: sweep,ternary,cases,models (default all)",
    )
    p.add_argument(
        "--models",
        type=_name_list(model_scaling.NAMES),
        default=list(model_scaling.NAMES),
        help="models of the models section (default all: " + ",".join(model_scaling.NAMES) + ")",
    )
    p.add_argument(
        "--model-contexts",
        type=_int_list,
        help=f"decode contexts of the models section (geometric {SHORTEST}..{QUICK_LONGEST} "
        f"quick, ..{FULL_LONGEST} full)",
    )
    p.add_argument(
        "--model-prompts",
        type=_int_list,
        help="prefill lengths of the models section (geometric "
        f"{QUICK_PROMPTS[0]}..{QUICK_PROMPTS[1]} quick, {FULL_PROMPTS[0]}..{FULL_PROMPTS[1]} full)",
    )
    p.add_argument(
        "--tiny-models",
        action="store_true",
        help="tiny shapes (hidden 32-64, 2 layers) for the models section: checks that it runs",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="also time transformers' own CPU implementation of the models (needs torch and "
        "transformers; skipped with the reason otherwise)",
    )
    p.add_argument(
        "--kernels",
        type=_name_list(kernel_names),
        default=list(kernel_names),
        help="sweep only these kernels",
    )
    p.add_argument(
        "--ternary-shapes",
        type=_shape_list,
        default=ternary_bench.SHAPES,
        help="ternary weight shapes IN x OUT (default 4096x4096,2560x6912,6912x2560)",
    )
    p.add_argument(
        "--ternary-tokens", type=_int_list, default=ternary_bench.TOKENS, help="M values"
    )
    p.add_argument("--ternary-formats", help="quantisation formats (default i2 quick, i2,t1 full)")
    p.add_argument("--threads", type=int, help="seqkern threads (default: all cores)")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.add_argument("--seed", type=int, default=0, help="random seed of the inputs")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="RESULTS",
        help="measure nothing: print every fitted slope of these results.json files (or "
        "report directories) side by side, with the spread of each across them",
    )
    p.add_argument(
        "--keep-blas-env",
        action="store_true",
        help="do not relaunch without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE",
    )
    return p


@dataclass
class Settings:
    """The resolved command-line settings."""

    quick: bool
    out: Path
    lengths: list[int]
    repeats: int
    sampling: sweeps.Sampling
    max_call_seconds: float
    max_bytes: Optional[float]
    sections: list[str]
    kernels: list[str]
    ternary_shapes: list[tuple[int, int]]
    ternary_tokens: list[int]
    ternary_formats: list[str]
    plots: bool
    seed: int
    models: list[str]
    model_plan: model_scaling.Plan
    peers: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        longest = args.max_length or (QUICK_SWEEP_LONGEST if args.quick else FULL_LONGEST)
        lengths = sorted(set(args.lengths or sweeps.geometric_lengths(SHORTEST, longest)))
        formats = args.ternary_formats or ("i2" if args.quick else "i2,t1")
        repeats = max(1, args.repeats or (3 if args.quick else 5))
        sampling = QUICK_SAMPLING if args.quick else FULL_SAMPLING
        if args.repeats:  # exactly that many rounds
            sampling = sweeps.Sampling(repeats, repeats, 0.0)
        return cls(
            quick=args.quick,
            out=args.out,
            lengths=lengths,
            repeats=repeats,
            sampling=sampling,
            max_call_seconds=args.max_call_seconds or (0.75 if args.quick else 30.0),
            max_bytes=sweeps.memory_limit(args.memory_fraction),
            sections=[s for s in SECTIONS if s in args.sections],
            kernels=args.kernels,
            ternary_shapes=args.ternary_shapes,
            ternary_tokens=args.ternary_tokens,
            ternary_formats=[f.strip() for f in formats.split(",") if f.strip()],
            plots=not args.no_plots,
            seed=args.seed,
            models=args.models,
            model_plan=_model_plan(args),
            peers=args.peers,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "lengths": self.lengths,
            "repeats": self.repeats,
            "sampling": self.sampling.to_json(),
            "max_call_seconds": self.max_call_seconds,
            "max_bytes": self.max_bytes,
            "sections": self.sections,
            "seed": self.seed,
            "kernels": self.kernels,
            "ternary_shapes": [list(s) for s in self.ternary_shapes],
            "ternary_tokens": self.ternary_tokens,
            "ternary_formats": self.ternary_formats,
            "models": self.models,
            "peers": self.peers,
        }


def _model_plan(args: argparse.Namespace) -> model_scaling.Plan:
    """The contexts, prompt lengths, samples and fitting ranges of the models section: quick
    runs fit the decode slopes from context 512 (four doublings: one disturbed point moves a
    slope little), full runs over the longer half; the prefill slopes over the three longest
    prompts, where the time is nearest its linear regime (at short prompts the fixed cost of
    reading every weight matrix once is a large part of it)."""
    quick = args.quick
    longest = QUICK_LONGEST if quick else FULL_LONGEST
    contexts = sorted(set(args.model_contexts or sweeps.geometric_lengths(SHORTEST, longest)))
    shortest, most = QUICK_PROMPTS if quick else FULL_PROMPTS
    prompts = sorted(set(args.model_prompts or sweeps.geometric_lengths(shortest, most)))
    repeats = max(1, args.repeats or (3 if quick else 5))
    return model_scaling.Plan(
        contexts=contexts,
        prompts=prompts,
        decode_samples=10 if quick else 16,
        prefill_repeats=repeats,
        prefill_max_repeats=repeats if args.repeats else (8 if quick else 9),
        prefill_seconds=5.0 if quick else 60.0,
        direct_tokens=min(16 if quick else 64, contexts[-1]),
        decode_fit_from=contexts[len(contexts) // 2 - 1] if quick else _half(contexts),
        prefill_fit_from=prompts[-3] if len(prompts) >= 3 else prompts[0],
        max_call_seconds=args.max_call_seconds or (30.0 if quick else 120.0),
        max_bytes=sweeps.memory_limit(args.memory_fraction),
        tiny=args.tiny_models,
    )


def _half(lengths: list[int]) -> int:
    """The first length of the longer half (as the sweeps' fits use)."""
    return lengths[len(lengths) // 2] if len(lengths) > 1 else lengths[0]


class Progress:
    """Prints ``[done/total  elapsed] message`` lines as the run advances."""

    def __init__(self, total: int, stream: TextIO):
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.start = time.perf_counter()

    def __call__(self, message: str, steps: int = 1) -> None:
        self.done += steps
        elapsed = time.perf_counter() - self.start
        print(
            f"[{self.done:>4}/{self.total}  {elapsed:6.1f} s] {message}",
            file=self.stream,
            flush=True,
        )


def main(argv: Optional[list[str]] = None, stream: TextIO = sys.stderr) -> int:
    """Runs the report in this process (see ``seqkern.bench.__main__.cli`` for the command,
    which first drops the OpenBLAS CPU overrides)."""
    args = build_parser().parse_args(argv)
    if args.compare:
        return compare.main(args.compare, sys.stdout if stream is sys.stderr else stream)
    if args.threads is not None:
        seqkern.set_num_threads(args.threads)
    settings = Settings.from_args(args)
    started = time.perf_counter()
    # Outputs of tens of MB would otherwise come from fresh mmaps at some lengths and not at
    # others, putting a page-fault step into the sweeps and noise into prefill.
    reused = keep_freed_memory()
    record = machine.describe()
    record["allocator_keeps_freed_memory"] = reused
    print(_banner(record, settings), file=stream, flush=True)
    runner = sweeps.SweepRunner(
        [k for k in sweeps.KERNELS if k.name in settings.kernels],
        settings.lengths,
        settings.sampling,
        sweeps.Limits(settings.max_call_seconds, settings.max_bytes),
        progress=lambda message, steps: None,
        seed=settings.seed,
    )
    cases = _registered_cases() if "cases" in settings.sections else ([], "")
    progress = Progress(_total_steps(settings, runner, cases[0]), stream)
    runner.progress = progress
    results: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "seqkern-bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": settings.to_json(),
        "machine": record,
        "sweeps": [],
        "crossovers": [],
        "ternary": {"status": "not run", "note": "", "rows": []},
        "fixed_shape": {"status": "not run", "note": "", "rows": []},
        "models": _models_not_run(settings),
    }
    if "sweep" in settings.sections:
        series = [s.to_json() for s in runner.run()]
        results["sweeps"] = series
        results["crossovers"] = crossovers(series)
    if "ternary" in settings.sections:
        results["ternary"] = ternary_bench.run(
            settings.ternary_shapes,
            settings.ternary_tokens,
            settings.ternary_formats,
            settings.repeats,
            progress,
            settings.seed,
        )
    if "cases" in settings.sections:
        results["fixed_shape"] = _fixed_shape(cases, settings.repeats, progress)
    if "models" in settings.sections:
        results["models"] = _models(settings, progress)
    results["elapsed_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = machine.load_average()
    written = write_outputs(results, settings.out, settings.plots)
    print(
        f"wrote {', '.join(written)} to {settings.out} in {results['elapsed_seconds']:.0f} s",
        file=stream,
        flush=True,
    )
    return 0


def _banner(record: dict[str, Any], settings: Settings) -> str:
    return (
        f"seqkern-bench: seqkern {record['seqkern_version']} ({record['seqkern_profile']}), "
        f"SIMD {record['simd']}, {record['seqkern_threads']} threads, {record['cpu_model']}, "
        f"numpy {record['numpy_version']} with {machine.blas_summary(record['numpy_blas'])}; "
        f"lengths {settings.lengths[0]}..{settings.lengths[-1]}, {settings.repeats} repeats"
    )


def _registered_cases() -> tuple[list[Any], str]:
    """The fixed-shape cases, or none and the reason when the registry fails to load."""
    try:
        return all_cases(), ""
    except Exception as exc:  # noqa: BLE001 - a broken family module is reported
        return [], f"loading the case registry failed: {type(exc).__name__}: {exc}"


def _total_steps(settings: Settings, runner: sweeps.SweepRunner, cases: list[Any]) -> int:
    total = 0
    if "sweep" in settings.sections:
        total += runner.steps
    if "ternary" in settings.sections:
        total += ternary_bench.steps(
            settings.ternary_shapes, settings.ternary_tokens, settings.ternary_formats
        )
    if "cases" in settings.sections:
        total += len(cases)
    if "models" in settings.sections:
        total += model_scaling.steps(settings.model_plan, settings.models)
        total += peers.steps(settings.models) if settings.peers else 0
    return total


def _models_not_run(settings: Settings) -> dict[str, Any]:
    return {
        "status": "not run",
        "note": "",
        "plan": settings.model_plan.to_json(),
        "architectures": [],
        "crossovers": [],
        "peers": {"status": "not run", "note": "", "rows": []},
    }


def _models(settings: Settings, progress: Progress) -> dict[str, Any]:
    """The models section: every architecture against the context, then the peers."""
    started = time.perf_counter()
    runner = model_scaling.ModelRunner(
        settings.model_plan, settings.models, progress, seed=settings.seed
    )
    records = runner.run()
    section = _models_not_run(settings)
    measured = [r for r in records if r["status"] == "ok"]
    notes = [f"{r['name']}: {r['note']}" for r in records if r["status"] != "ok"]
    section.update(
        status="ok" if measured else "error",
        note="; ".join(notes),
        architectures=records,
        crossovers=model_scaling.crossovers(records),
        elapsed_seconds=time.perf_counter() - started,
    )
    if settings.peers:
        section["peers"] = peers.run(settings.model_plan, settings.models, records, progress)
    else:
        section["peers"] = {
            "status": "not run",
            "note": "not asked for (--peers times transformers' own implementation)",
            "rows": [],
        }
    return section


def crossovers(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every recurrence and implementation with timings, where it becomes cheaper than
    causal attention in the same implementation."""
    by_key = {(s["kernel"], s["impl"]): s for s in series}
    found = []
    for s in series:
        attention = by_key.get((sweeps.ATTENTION.name, s["impl"]))
        if s["kernel"] == sweeps.ATTENTION.name or attention is None:
            continue
        if not s["points"] or not attention["points"]:
            continue
        points = [(p["length"], p["seconds"]) for p in s["points"]]
        reference = [(p["length"], p["seconds"]) for p in attention["points"]]
        c = crossover(points, reference)
        found.append(
            {
                "kernel": s["kernel"],
                "impl": s["impl"],
                "against": sweeps.ATTENTION.name,
                "kind": c.kind,
                "length": c.length,
            }
        )
    return found


def _fixed_shape(cases: tuple[list[Any], str], repeats: int, progress: Progress) -> dict[str, Any]:
    registered, load_error = cases
    rows, errors = [], [load_error] if load_error else []
    for case in registered:
        try:
            row = measure_case(case, repeats)
        except Exception as exc:  # noqa: BLE001 - one failing case does not stop the report
            errors.append(f"{case.kernel}: {type(exc).__name__}: {exc}")
            progress(f"case     {case.kernel}: failed ({exc})")
            continue
        rows.append(row)
        progress(
            f"case     {case.kernel:<24} seqkern {row['seqkern_seconds'] * 1e3:9.3f} ms, "
            f"numpy {row['numpy_seconds'] * 1e3:9.3f} ms, {row['speedup']:.1f}x"
        )
    status = "ok" if rows or not errors else "error"
    return {"status": status, "note": "; ".join(errors), "rows": rows}


def write_outputs(results: dict[str, Any], out: Path, plots: bool) -> list[str]:
    """Writes results.json, the plots (if asked and matplotlib is there) and report.md;
    returns the file names."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    images = render.write_plots(results, out) if plots else {}
    render.write_markdown(results, out / "report.md", images)
    return ["report.md", "results.json", *images.values()]
