"""Plain NumPy references of every kernel: short, readable, float64-capable.

They are the test oracle and the baseline of the benchmark reports; each docstring states the
formula its kernel computes.
"""

from . import attention, mamba, rwkv, ternary

__all__ = ["attention", "mamba", "rwkv", "ternary"]
