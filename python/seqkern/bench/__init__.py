"""Benchmarks: side-by-side timings of the Rust kernels against their NumPy references.

``python -m seqkern.bench.ratios`` prints, for one fixed shape per kernel, the median time of
seqkern and of the NumPy reference measured in the same run and their ratio. Each family
registers its cases in a module ``seqkern.bench.cases_<family>`` (see :mod:`.cases`).
"""
