"""The registry of benchmark cases.

A family adds a module ``seqkern.bench.cases_<family>`` defining ``CASES``, a list of
:class:`Case`. ``make(rng)`` builds the inputs once and returns the two calls to time.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np

Calls = tuple[Callable[[], object], Callable[[], object]]


@dataclass(frozen=True)
class Case:
    """One kernel at one shape: seqkern's call and the NumPy reference's call."""

    family: str
    kernel: str
    shape: str
    make: Callable[[np.random.Generator], Calls]
    target: str = ""


def all_cases() -> list[Case]:
    """Every registered case, in module-name order."""
    from . import __path__ as package_path

    cases: list[Case] = []
    for info in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        if info.name.startswith("cases_"):
            module = importlib.import_module(f"{__package__}.{info.name}")
            cases.extend(module.CASES)
    return cases
