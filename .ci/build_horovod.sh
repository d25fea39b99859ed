#!/usr/bin/env bash
# Build a Horovod wheel against the torch installed in the given interpreter.
# Horovod 0.28.1 (its last release) hard-codes C++14, but torch >= 2.13 headers need C++17/20, and
# with a CUDA build of torch on a machine that has nvcc its CMake decides to build CUDA ops and fails.
# We patch both at build time (C++20; CPU build unless HOROVOD_GPU_OPERATIONS is set) and keep the wheel.
set -euo pipefail
VPY=$1; VERSION=$2; OUTDIR=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VPY" -m pip download -q --no-deps --no-binary :all: -d "$work" "horovod==$VERSION"
tar -xzf "$work"/horovod-"$VERSION".tar.gz -C "$work"
src="$work/horovod-$VERSION"
"$VPY" "$(dirname "$0")/patch_horovod.py" "$src"
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}
"$VPY" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" "$src"
mkdir -p "$OUTDIR"
for f in "$work"/dist/horovod-*.whl; do
  cp "$f" "$OUTDIR/.tmp.$(basename "$f")" && mv "$OUTDIR/.tmp.$(basename "$f")" "$OUTDIR/$(basename "$f")"
done
