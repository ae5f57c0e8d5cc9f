"""``python -m seqkern``: what was built and what it runs on, to paste into a bug report."""

from __future__ import annotations

import platform
import sys

import numpy as np

import seqkern


def main() -> None:
    """Prints the version, ``build_info()``, the CPU features the dispatch saw, and the
    interpreter, NumPy and platform."""
    print(f"seqkern {seqkern.__version__} ({seqkern.__file__})")
    for key, value in seqkern.build_info().items():
        print(f"  {key}: {value}")
    print(f"  cpu_features: {' '.join(seqkern.cpu_features()) or '(none detected)'}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"numpy {np.__version__}")
    print(f"platform {platform.platform()}")


if __name__ == "__main__":
    main()
