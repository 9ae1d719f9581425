#!/usr/bin/env bash
# One command on a GPU machine: build obcache from source with its CUDA
# kernels, run the CUDA parity tests (pytest + the GoogleTest test_cuda_*
# binaries), then time saliency / select / compact_ / evict /
# projected_value_norm against the reference and the kvpress-style baseline
# with CUDA events
# (bench/bench_gpu.py; table on stdout, JSON in bench/out/gpu.json).
#
#   bash bench/gpu.sh [bench_gpu.py options, e.g. --ns 4096 32768 --repeats 100]
#
# Environment: CUDA_HOME (default /usr/local/cuda when it has nvcc, else the
# folder above the bin/ of the nvcc on PATH), TORCH_CUDA_ARCH_LIST
# (default 9.0), PYTHON (default .venv/bin/python when present, else python3),
# JOBS (build parallelism, default nproc), GTEST_SOURCE (a GoogleTest source
# tree for a machine without libgtest-dev; default .gtest-src when present),
# SKIP_BUILD=1 / SKIP_TESTS=1 to skip those steps.
#
# WHEELS: a folder of wheels installed first, without an index (default
# .gpu-wheels when present). bench/gpu_prepare.sh makes .gtest-src and
# .gpu-wheels for a GPU machine with no package index and no GoogleTest (the
# `device` machines here: carry both folders).
#
# A failed test step does not stop the timings (a GPU machine may be lent for
# minutes only); the script then exits 1 after them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME=/usr/local/cuda
  if ! [ -x "$CUDA_HOME/bin/nvcc" ] && command -v nvcc >/dev/null; then
    CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
fi
export CUDA_HOME
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if [ -z "${PYTHON:-}" ]; then
  # scripts/install.sh's venv, else the python3 that holds torch
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS=${WHEELS:-}
if [ -z "$WHEELS" ] && [ -d .gpu-wheels ]; then WHEELS=.gpu-wheels; fi
GTEST_SOURCE=${GTEST_SOURCE:-}
if [ -z "$GTEST_SOURCE" ] && [ -f .gtest-src/CMakeLists.txt ]; then GTEST_SOURCE=$PWD/.gtest-src; fi
JOBS=${JOBS:-$(nproc)}
arch=${TORCH_CUDA_ARCH_LIST//+PTX/}  # "8.0;9.0" -> CMake's "80;90"
arch=${arch//./}
arch=${arch// /;}

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: torch sees no CUDA device; nothing to do here (the CPU benchmarks: bench/bench_evict.py," \
       "bench/bench_saliency.py)" >&2
  exit 2
fi

if [ -n "$WHEELS" ]; then
  echo "== wheels from $WHEELS (no index)"
  "$PYTHON" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
fi

# The GoogleTest test_cuda_* binaries (only those: the others need no GPU, and
# CI runs them) build beside the extension: both builds wait on nvcc's few
# large files, so together they take about as long as one.
gtest_build() {
  local tests=()
  for f in tests/cpp/test_cuda_*.cpp; do tests+=("$(basename "$f" .cpp)"); done
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DOBCACHE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DOBCACHE_GTEST_SOURCE="$GTEST_SOURCE" && cmake --build build-gpu -j"$JOBS" --target "${tests[@]}"
}
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  mkdir -p build-gpu
  gtest_build > build-gpu/gpu_sh_build.log 2>&1 &
  gtest_pid=$!
  trap 'kill "$gtest_pid" 2>/dev/null || true' EXIT  # a failed extension build stops it too
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== build (CUDA_HOME=$CUDA_HOME, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  MAX_JOBS=$JOBS "$PYTHON" -m pip install --no-build-isolation -e .
fi
"$PYTHON" -c "import obcache, sys; print(obcache.build_info()); sys.exit(0 if obcache.cuda_kernels_built() else 1)" \
  || { echo "gpu.sh: obcache has no CUDA kernels (build without CUDA_HOME?)" >&2; exit 1; }

failed=()
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== pytest: CUDA parity tests"
  "$PYTHON" -m pytest -q tests -k cuda || failed+=("pytest -k cuda")
  echo "== GoogleTest: test_cuda_* (nvcc-built kernels vs the CPU kernels)"
  if wait "$gtest_pid"; then
    ctest --test-dir build-gpu --output-on-failure -R '^test_cuda_' || failed+=("ctest test_cuda_*")
  else
    tail -n 30 build-gpu/gpu_sh_build.log
    failed+=("GoogleTest build (build-gpu/gpu_sh_build.log)")
  fi
fi

echo "== timings (CUDA events)"
"$PYTHON" bench/bench_gpu.py "$@"
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu.sh: timings done, but these test steps FAILED: ${failed[*]}" >&2
  exit 1
fi
