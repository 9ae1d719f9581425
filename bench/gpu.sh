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
# Environment: CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST
# (default 9.0), PYTHON (default .venv/bin/python when present, else python), JOBS (build parallelism, default
# nproc), SKIP_BUILD=1 / SKIP_TESTS=1 to skip those steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi  # scripts/install.sh's venv
fi
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

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== build (CUDA_HOME=$CUDA_HOME, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  MAX_JOBS=$JOBS "$PYTHON" -m pip install --no-build-isolation -e .
fi
"$PYTHON" -c "import obcache, sys; print(obcache.build_info()); sys.exit(0 if obcache.cuda_kernels_built() else 1)" \
  || { echo "gpu.sh: obcache has no CUDA kernels (build without CUDA_HOME?)" >&2; exit 1; }

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== pytest: CUDA parity tests"
  "$PYTHON" -m pytest -q tests -k cuda
  echo "== GoogleTest: test_cuda_* (nvcc-built kernels vs the CPU kernels)"
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DOBCACHE_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DCMAKE_CUDA_ARCHITECTURES="$arch" >/dev/null
  cmake --build build-gpu -j"$JOBS" >/dev/null
  ctest --test-dir build-gpu --output-on-failure -R '^test_cuda_'
fi

echo "== timings (CUDA events)"
"$PYTHON" bench/bench_gpu.py "$@"
