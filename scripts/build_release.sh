#!/usr/bin/env bash
# Builds the release artifacts into OUT_DIR (default: dist/) and checks them:
#   seqkern-<version>.tar.gz                                   the sdist
#   seqkern-<version>-cp39-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
# The wheel is built from the unpacked sdist (so the sdist is proven complete), with zig as
# the linker against glibc 2.17 symbols, so it installs on any x86-64 Linux with glibc >= 2.17
# and CPython >= 3.9 (one abi3 wheel for all versions). The build tools come from
# scripts/release-tools.txt, installed into a virtualenv of their own; a Rust toolchain
# (rustup's x86_64-unknown-linux-gnu target) must be on PATH.
#
# Usage: scripts/build_release.sh [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$root"

echo "== release tools (scripts/release-tools.txt) into $work/tools"
python3 -m venv "$work/tools"
# shellcheck disable=SC1091
source "$work/tools/bin/activate"   # maturin finds zig as `python -m ziglang` of this venv
pip install --quiet --disable-pip-version-check -r scripts/release-tools.txt

rm -f "$out"/seqkern-*.whl "$out"/seqkern-*.tar.gz
echo "== sdist"
maturin sdist --out "$out"
sdist="$(ls "$out"/seqkern-*.tar.gz)"

echo "== wheel (manylinux2014, abi3), built from the sdist"
tar -xzf "$sdist" -C "$work"
(cd "$work"/seqkern-*/ && maturin build --release --locked --strip --zig \
    --compatibility manylinux2014 --target x86_64-unknown-linux-gnu --out "$out")
wheel="$(ls "$out"/seqkern-*.whl)"

echo "== twine check"
twine check --strict "$sdist" "$wheel"

echo "== auditwheel show"
auditwheel show "$wheel" | tee "$work/audit.txt"
# auditwheel wraps its lines: join them before looking for the tag it settles on.
if ! tr '\n' ' ' <"$work/audit.txt" | grep -q 'consistent with the following platform tag: "manylinux_2_17_x86_64"'; then
    echo "FAIL: auditwheel does not confirm manylinux_2_17_x86_64" >&2
    exit 1
fi
case "$(basename "$wheel")" in
    *-cp39-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl) ;;
    *) echo "FAIL: unexpected wheel tags: $(basename "$wheel")" >&2; exit 1 ;;
esac

echo "== contents"
python3 "$root/scripts/check_dist_contents.py" "$wheel" "$sdist"

echo "== built"
ls -l "$sdist" "$wheel"
