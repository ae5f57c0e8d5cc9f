"""What the benchmarks ran on: CPU, SIMD path, threads, NumPy and its BLAS, seqkern's build."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Optional

import numpy as np

import seqkern

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""Variables that make OpenBLAS assume another CPU (and run slower); the report command
relaunches itself without them (see ``seqkern.bench.__main__``)."""
UNSET_MARKER = "SEQKERN_BENCH_UNSET_BLAS_ENV"
"""Set by the relaunch to the ``NAME=value`` pairs it removed, ``;``-separated."""


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_total_bytes() -> Optional[float]:
    """MemTotal from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def numpy_blas() -> dict[str, Any]:
    """NumPy's BLAS: name and version from ``numpy.show_config``, and the runtime view
    (library, version, threads, the CPU architecture it chose) from threadpoolctl when it is
    installed."""
    info: dict[str, Any] = {}
    try:
        config = np.show_config(mode="dicts")  # numpy >= 1.26
        blas = config.get("Build Dependencies", {}).get("blas", {})
        info["name"] = blas.get("name")
        info["version"] = blas.get("version")
        if blas.get("openblas configuration"):
            info["configuration"] = blas["openblas configuration"]
    except (TypeError, ValueError, AttributeError):
        info["name"] = None
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["runtime"] = None
        return info
    info["runtime"] = [
        {
            key: pool.get(key)
            for key in ("internal_api", "version", "num_threads", "architecture", "prefix")
        }
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    ]
    return info


def blas_environment() -> dict[str, Any]:
    """The OpenBLAS CPU overrides in effect now, and those the relaunch removed."""
    removed = {}
    for pair in filter(None, os.environ.get(UNSET_MARKER, "").split(";")):
        name, _, value = pair.partition("=")
        removed[name] = value
    return {
        "in_effect": {name: os.environ[name] for name in BLAS_ENV if name in os.environ},
        "unset_for_this_run": removed,
    }


def load_average() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages, or None where the OS does not say."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def describe() -> dict[str, Any]:
    """The machine record of ``results.json``."""
    info = seqkern.build_info()
    load = load_average()
    return {
        "cpu_model": cpu_model(),
        "cpus_available": cpu_count(),
        "memory_total_bytes": memory_total_bytes(),
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "seqkern_version": info["version"],
        "seqkern_profile": info["profile"],
        "simd": info["simd"],
        "simd_available": info["simd_available"],
        "seqkern_threads": info["threads"],
        "numpy_version": np.__version__,
        "numpy_blas": numpy_blas(),
        "blas_environment": blas_environment(),
    }


def blas_summary(blas: dict[str, Any]) -> str:
    """One line for the report: ``scipy-openblas 0.3.31 (openblas, SkylakeX, 2 threads)``."""
    text = " ".join(str(x) for x in (blas.get("name"), blas.get("version")) if x) or "unknown"
    runtime = blas.get("runtime")
    if runtime:
        pool = runtime[0]
        details = [
            str(pool["internal_api"]),
            str(pool.get("architecture") or "?"),
            f"{pool.get('num_threads')} threads",
        ]
        text += f" ({', '.join(details)})"
    elif runtime is None:
        text += " (install threadpoolctl for the runtime view)"
    return text
