#!/usr/bin/env bash
# Runs every test: pytest (ops vs the float64 reference, the transformers
# integration, the eval harness) and the GoogleTest suite three times over:
# plain, with AddressSanitizer + UndefinedBehaviorSanitizer, and the emulated
# CUDA kernels under ThreadSanitizer. Expects scripts/install.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source .venv/bin/activate
JOBS=${JOBS:-2}

echo "== GoogleTest (plain, with the nvcc-built kernels when a CUDA toolkit is present)"
cuda_flags=()
if [ -x /usr/local/cuda/bin/nvcc ]; then
  cuda_flags=(-DOBCACHE_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
fi
cmake -S . -B build-cpp -DCMAKE_BUILD_TYPE=Release "${cuda_flags[@]}" >/dev/null
cmake --build build-cpp -j"$JOBS" >/dev/null
ctest --test-dir build-cpp --output-on-failure

echo "== GoogleTest under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DOBCACHE_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j"$JOBS" >/dev/null
ctest --test-dir build-asan --output-on-failure

echo "== Emulated CUDA kernels under ThreadSanitizer"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOBCACHE_SANITIZE=thread >/dev/null
cmake --build build-tsan -j"$JOBS" >/dev/null
# SimtTester.* checks the emulation's own race detector by provoking races on
# purpose, which TSan would (rightly) report; every other test runs.
for t in build-tsan/test_emu_* build-tsan/test_simt; do
  TSAN_OPTIONS="halt_on_error=1" "$t" --gtest_brief=1 --gtest_filter=-SimtTester.*
done

echo "== pytest"
python -m pytest -q tests "$@"
