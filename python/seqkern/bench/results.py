"""The schema of ``results.json`` and a validator for it (no dependency beyond the stdlib).

A schema is a Python type (``str``, ``int``, ``float``, ``bool``), ``None`` (JSON null), a
tuple of alternatives, ``[item_schema]`` for a list, or ``{key: schema}`` for an object whose
keys must all be present (extra keys are allowed, so the format can grow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SCHEMA_ID = "seqkern-bench/1"

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
    "slope": OPTIONAL_NUMBER,
    "slope_lengths": [int],
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

SCHEMA: dict[str, Any] = {
    "schema": str,
    "created": str,
    "command": str,
    "elapsed_seconds": NUMBER,
    "settings": {
        "quick": bool,
        "lengths": [int],
        "repeats": int,
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
    names = ", ".join("null" if o is None else o.__name__ for o in options)
    return [f"{path}: expected {names}, got {type(document).__name__} {document!r:.60}"]


def _matches(value: Any, option: Any) -> bool:
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
