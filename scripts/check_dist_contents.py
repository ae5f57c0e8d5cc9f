"""Checks what a release wheel and sdist hold: the package and its metadata, the license, and
nothing else (no tests, caches, build leftovers). Prints the sizes.

Usage: python scripts/check_dist_contents.py WHEEL SDIST
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from pathlib import PurePosixPath

# What the wheel may hold, besides the dist-info directory's standard files.
WHEEL_PACKAGE = re.compile(r"seqkern/([A-Za-z_][\w/]*\.pyi?|py\.typed|_native\.abi3\.so)")
WHEEL_DIST_INFO = re.compile(
    r"seqkern-[^/]+\.dist-info/"
    r"(METADATA|WHEEL|RECORD|entry_points\.txt|licenses/LICENSE|sboms/[\w.-]+\.json)"
)
# What the sdist may hold: the build files and these source trees.
SDIST_TOP = {"PKG-INFO", "Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "LICENSE"}
SDIST_TREES = {
    "rust": (".rs",),
    "python": (".py", ".pyi", ".typed"),
    "tests": (".py", ".json", ".npz", ".safetensors"),  # tests/data: tiny checkpoints
    "benches": (".py",),
}
# Never in either: byte code, caches, editor and patch leftovers, build outputs, binaries in
# the sdist.
FORBIDDEN = re.compile(
    r"(__pycache__|\.pyc$|\.pyo$|\.orig$|\.rej$|~$|\.swp$|\.DS_Store|\.egg-info|"
    r"(^|/)target/|(^|/)dist/|\.pytest_cache|\.hypothesis|\.benchmarks|\.ruff_cache)"
)


def wheel_problems(path: str) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        so_size = sum(i.file_size for i in wheel.infolist() if i.filename.endswith(".so"))
    problems = [
        f"wheel: unexpected file {name}"
        for name in names
        if FORBIDDEN.search(name)
        or not (WHEEL_PACKAGE.fullmatch(name) or WHEEL_DIST_INFO.fullmatch(name))
        or "/tests/" in name
        or PurePosixPath(name).name.startswith(("test_", "conftest"))
    ]
    for required in ("seqkern/__init__.py", "seqkern/_native.abi3.so", "seqkern/py.typed"):
        if required not in names:
            problems.append(f"wheel: missing {required}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("wheel: missing the LICENSE file in .dist-info/licenses/")
    print(f"wheel: {len(names)} files, extension module {so_size / 1e6:.2f} MB uncompressed")
    return problems


def sdist_problems(path: str) -> list[str]:
    with tarfile.open(path) as sdist:
        names = [m.name for m in sdist.getmembers() if m.isfile()]
    problems = []
    for name in names:
        parts = PurePosixPath(name).parts[1:]  # below seqkern-<version>/
        rel = "/".join(parts)
        tree_ok = len(parts) > 1 and parts[0] in SDIST_TREES and rel.endswith(SDIST_TREES[parts[0]])
        if FORBIDDEN.search(rel) or not (rel in SDIST_TOP or tree_ok):
            problems.append(f"sdist: unexpected file {rel}")
    rels = {"/".join(PurePosixPath(n).parts[1:]) for n in names}
    problems += [f"sdist: missing {f}" for f in sorted(SDIST_TOP - rels)]
    print(f"sdist: {len(names)} files")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    wheel, sdist = argv
    problems = wheel_problems(wheel) + sdist_problems(sdist)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
