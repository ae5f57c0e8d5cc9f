"""Benchmarks: side-by-side timings of the Rust kernels against their NumPy references.

``seqkern-bench`` (``python -m seqkern.bench``, see :mod:`.report`) writes the full report:
sequence-length sweeps of the recurrent kernels against causal attention with slopes and
crossovers, the ternary kernel against NumPy float32 matmul, and one fixed shape per kernel.
``python -m seqkern.bench.ratios`` prints only the fixed-shape table. Each family registers its
fixed-shape cases in a module ``seqkern.bench.cases_<family>`` (see :mod:`.cases`).
"""
