"""The installed package: version, metadata, license, and ``python -m seqkern``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import seqkern

# What each SIMD path needs from the CPU (the dispatch must never pick a path without them).
PATH_NEEDS = {
    "scalar": set(),
    "avx2": {"avx2", "fma", "bmi2"},
    "avx512": {"avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512dq", "avx512vl"},
}


def test_version_is_the_installed_distributions():
    assert seqkern.__version__ == importlib.metadata.version("seqkern")
    assert seqkern.__version__ == seqkern.build_info()["version"]


def test_metadata_names_the_license_and_ships_its_text():
    dist = importlib.metadata.distribution("seqkern")
    assert dist.metadata["License-Expression"] == "MIT"
    text = dist.read_text("licenses/LICENSE")
    assert text is not None and text.startswith("MIT License")
    classifiers = dist.metadata.get_all("Classifier")
    for minor in range(9, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers


def test_cpu_features_cover_the_chosen_simd_path():
    features = seqkern.cpu_features()
    assert all(isinstance(f, str) for f in features)
    available = seqkern.build_info()["simd_available"]
    assert PATH_NEEDS[available] <= set(features), (available, features)
    # The dispatch picks the best path the features allow.
    best = max(
        (path for path, needs in PATH_NEEDS.items() if needs <= set(features)),
        key=lambda path: len(PATH_NEEDS[path]),
    )
    if seqkern.build_info()["target_arch"] == "x86_64":
        assert available == best


def test_python_m_seqkern_prints_the_build_and_the_cpu():
    done = subprocess.run(
        [sys.executable, "-m", "seqkern"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    info = seqkern.build_info()
    assert f"seqkern {seqkern.__version__}" in done.stdout
    assert f"simd_available: {info['simd_available']}" in done.stdout
    assert "cpu_features: " + " ".join(seqkern.cpu_features()) in done.stdout
    assert "numpy " in done.stdout
