"""The schema of ``results.json`` and a validator for it (no dependency beyond the stdlib).

A schema is a Python type (``str``, ``int``, ``float``, ``bool``), ``None`` (JSON null), a
tuple of alternatives (each any schema), ``[item_schema]`` for a list, or ``{key: schema}``
for an object whose keys must all be present (extra keys are allowed, so the format can grow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SCHEMA_ID = "seqkern-bench/3"

NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, None)

POINT = {"length": int, "seconds": NUMBER, "samples": [NUMBER]}
SKIP = {"length": int, "reason": str}
SERIES = {
    "kernel": str,
    "impl": str,
    "model": str,
    "shape": str,
    "status": str,
    "note": str,
    "points": [POINT],
    "skipped": [SKIP],
    "rounds": int,
    "fit_from": int,
    "slope": OPTIONAL_NUMBER,
    "slope_lengths": [int],
    "slope_low": OPTIONAL_NUMBER,
    "slope_high": OPTIONAL_NUMBER,
}
CROSSOVER = {
    "kernel": str,
    "impl": str,
    "against": str,
    "kind": str,
    "length": OPTIONAL_NUMBER,
}
TERNARY_ROW = {
    "in_features": int,
    "out_features": int,
    "tokens": int,
    "format": str,
    "bits_per_weight": NUMBER,
    "weight_bytes": NUMBER,
    "seqkern_seconds": NUMBER,
    "numpy_seconds": NUMBER,
    "speedup": NUMBER,
    "seqkern_gbps": NUMBER,
    "numpy_gbps": NUMBER,
}
CASE_ROW = {
    "family": str,
    "kernel": str,
    "shape": str,
    "target": str,
    "seqkern_seconds": NUMBER,
    "numpy_seconds": NUMBER,
    "speedup": NUMBER,
}
SECTION = {"status": str, "note": str}

SLOPE = {
    "slope": OPTIONAL_NUMBER,
    "low": OPTIONAL_NUMBER,
    "high": OPTIONAL_NUMBER,
    "lengths": [int],
}
DECODE_POINT = {"context": int, "seconds": NUMBER, "samples": [NUMBER], "cache_bytes": int}
MODEL = {
    "name": str,
    "label": str,
    "kind": str,
    "model_type": str,
    "config": dict,
    "depth": str,
    "weights": str,
    "status": str,
    "note": str,
    "parameters": (int, None),
    "decode": [DECODE_POINT],
    "prefill": [POINT],
    "generation": [{"tokens": int, "seconds": NUMBER}],
    "direct": ({"tokens": int, "seconds": NUMBER, "integrated_seconds": OPTIONAL_NUMBER}, None),
    "skipped": [{"what": str, "length": int, "reason": str}],
    "decode_line": ({"intercept_seconds": NUMBER, "seconds_per_token": NUMBER}, None),
    "slopes": {"decode": SLOPE, "prefill": SLOPE, "generation": SLOPE, "cache": SLOPE},
}
MODEL_CROSSOVER = {
    "model": str,
    "against": str,
    "decode_kind": str,
    "decode_context": OPTIONAL_NUMBER,
    "generation_kind": str,
    "generation_tokens": OPTIONAL_NUMBER,
}
PEER_ROW = {
    "model": str,
    "prompt": int,
    "context": int,
    "prefill_seconds": NUMBER,
    "decode_seconds": NUMBER,
    "seqkern_prefill_seconds": OPTIONAL_NUMBER,
    "seqkern_decode_seconds": OPTIONAL_NUMBER,
    "prefill_ratio": OPTIONAL_NUMBER,
    "decode_ratio": OPTIONAL_NUMBER,
}
MODELS = {
    **SECTION,
    "plan": {
        "contexts": [int],
        "prompts": [int],
        "decode_samples": int,
        "prefill_repeats": int,
        "prefill_max_repeats": int,
        "prefill_seconds": NUMBER,
        "direct_tokens": int,
        "decode_fit_from": int,
        "prefill_fit_from": int,
        "statistic": str,
        "prefill_statistic": str,
        "tiny": bool,
    },
    "architectures": [MODEL],
    "crossovers": [MODEL_CROSSOVER],
    "peers": {**SECTION, "rows": [PEER_ROW]},
}

SCHEMA: dict[str, Any] = {
    "schema": str,
    "created": str,
    "command": str,
    "elapsed_seconds": NUMBER,
    "settings": {
        "quick": bool,
        "lengths": [int],
        "repeats": int,
        "sampling": {
            "statistic": str,
            "rounds": int,
            "max_rounds": int,
            "series_seconds": NUMBER,
            "round_call_seconds": NUMBER,
            "round_calls": int,
        },
        "max_call_seconds": NUMBER,
        "max_bytes": OPTIONAL_NUMBER,
        "sections": [str],
        "seed": int,
    },
    "machine": {
        "cpu_model": str,
        "cpus_available": int,
        "seqkern_version": str,
        "seqkern_profile": str,
        "simd": str,
        "simd_available": str,
        "seqkern_threads": int,
        "numpy_version": str,
        "numpy_blas": dict,
        "blas_environment": {"in_effect": dict, "unset_for_this_run": dict},
    },
    "sweeps": [SERIES],
    "crossovers": [CROSSOVER],
    "ternary": {**SECTION, "rows": [TERNARY_ROW]},
    "fixed_shape": {**SECTION, "rows": [CASE_ROW]},
    "models": MODELS,
}


def validate(document: Any, schema: Any = None, path: str = "$") -> list[str]:
    """Every way ``document`` departs from ``schema`` (default: the report's), as
    ``path: problem`` strings; empty when it conforms."""
    schema = SCHEMA if schema is None else schema
    if isinstance(schema, dict):
        if not isinstance(document, dict):
            return [f"{path}: expected an object, got {type(document).__name__}"]
        errors = []
        for key, sub in schema.items():
            if key not in document:
                errors.append(f"{path}: missing key {key!r}")
            else:
                errors.extend(validate(document[key], sub, f"{path}.{key}"))
        return errors
    if isinstance(schema, list):
        if not isinstance(document, list):
            return [f"{path}: expected a list, got {type(document).__name__}"]
        return [
            e for i, item in enumerate(document) for e in validate(item, schema[0], f"{path}[{i}]")
        ]
    options = schema if isinstance(schema, tuple) else (schema,)
    if any(_matches(document, option) for option in options):
        return []
    names = ", ".join(_name(o) for o in options)
    return [f"{path}: expected {names}, got {type(document).__name__} {document!r:.60}"]


def _name(option: Any) -> str:
    if option is None:
        return "null"
    if isinstance(option, (dict, list)):
        return f"{type(option).__name__} {option!r:.40}"
    return option.__name__


def _matches(value: Any, option: Any) -> bool:
    if isinstance(option, (dict, list)):
        return not validate(value, option)
    if option is None:
        return value is None
    if option is float:
        return isinstance(value, float) and math.isfinite(value)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, option)


def write_json(document: dict[str, Any], path: Path) -> None:
    """Validates ``document`` and writes it as indented JSON."""
    errors = validate(document)
    if errors:
        raise ValueError("results do not match the schema: " + "; ".join(errors[:5]))
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
