"""``python -m seqkern.bench`` and the ``seqkern-bench`` command: the benchmark report.

OpenBLAS reads OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE once, when NumPy is first imported; set,
they make it use kernels tuned for another CPU, so NumPy's timings would not be NumPy's. Since
NumPy is already loaded when this runs, the command relaunches itself once without those two
variables (for its own process only; the caller's environment is untouched) and records in
the report what it removed. ``--keep-blas-env`` keeps them.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from .machine import BLAS_ENV, UNSET_MARKER
from .report import main

__all__ = ["cli", "main"]


def _relaunch_without_blas_env(argv: list[str]) -> None:
    """Replaces this process by ``python -m seqkern.bench argv`` without the OpenBLAS CPU
    overrides, when they are set (POSIX only; elsewhere the run keeps them and says so)."""
    present = [name for name in BLAS_ENV if name in os.environ]
    asked_not_to = {"--keep-blas-env", "-h", "--help"} & set(argv)
    if not present or asked_not_to or UNSET_MARKER in os.environ:
        return
    if os.name != "posix":
        return
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    env[UNSET_MARKER] = ";".join(f"{name}={os.environ[name]}" for name in present)
    print(
        f"seqkern-bench: relaunching without {', '.join(present)} (they make OpenBLAS assume "
        "another CPU); --keep-blas-env keeps them",
        file=sys.stderr,
        flush=True,
    )
    os.execve(sys.executable, [sys.executable, "-m", "seqkern.bench", *argv], env)


def cli(argv: Optional[list[str]] = None) -> int:
    """The command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    _relaunch_without_blas_env(args)
    return main(args)


if __name__ == "__main__":
    sys.exit(cli())
