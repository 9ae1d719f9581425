#!/usr/bin/env bash
# Run where a package index is reachable, before carrying the checkout to a
# GPU machine that has none (the `device` machines here): puts beside it what
# bench/gpu.sh then uses, in folders git ignores:
#   .gtest-src    a GoogleTest source tree (from /usr/src/googletest, Debian's
#                 googletest package), for a machine without libgtest-dev;
#   .gpu-wheels   the pure-Python wheels the tests need at the tested
#                 versions: transformers 5.24.0 (scripts/install.sh's pin;
#                 obcache.hf needs >= 5.24) and gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${GTEST_SOURCE_FROM:-/usr/src/googletest}
if ! [ -f "$src/CMakeLists.txt" ]; then
  echo "gpu_prepare.sh: no GoogleTest source tree at $src (apt-get install googletest, or set GTEST_SOURCE_FROM)" >&2
  exit 1
fi
rm -rf .gtest-src .gpu-wheels
cp -r "$src" .gtest-src
python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu-wheels "transformers==5.24.0" gguf
du -sh .gtest-src .gpu-wheels
