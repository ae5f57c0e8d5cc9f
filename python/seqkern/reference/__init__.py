"""Plain NumPy references of every kernel: short, readable, float64-capable.

They are the test oracle and the baseline of the benchmark reports; each docstring states the
formula its kernel computes.
"""

from . import mamba, ternary

__all__ = ["mamba", "ternary"]
