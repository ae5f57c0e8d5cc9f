"""pytest-benchmark suites. Plain runs have benchmarking disabled (they only check that the
benchmarks still run); measure with ``pytest benches --benchmark-enable``."""
