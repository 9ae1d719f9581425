// The extension module obcache._C. Importing it runs the TORCH_LIBRARY
// registrations of every *_op.cpp file (each defines its own schema with
// TORCH_LIBRARY_FRAGMENT next to its checks and CPU kernel). The pybind11
// functions here are what a user or a bug report needs about the build.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/extension.h>

#include "torch/select_compact.h"

#ifndef OBCACHE_TORCH_VERSION
#define OBCACHE_TORCH_VERSION "unknown"
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = OBCACHE_TORCH_VERSION;
#ifdef OBCACHE_WITH_CUDA
  info["cuda_kernels"] = true;
  info["cuda_archs"] = OBCACHE_CUDA_ARCHS;
  info["torch_cuda_version"] = OBCACHE_TORCH_CUDA;
#else
  info["cuda_kernels"] = false;
  info["cuda_archs"] = "";
#endif
  info["compiler"] = __VERSION__;
  // Whether at::parallel_for (header-only) runs the CPU ops' rows on torch's
  // threads here: it needs the extension compiled with OpenMP (setup.py).
#ifdef INTRA_OP_PARALLEL
  info["intra_op_parallel"] = true;
#else
  info["intra_op_parallel"] = false;
#endif
  return info;
}

}  // namespace

// The namespace every op file adds its schemas to.
TORCH_LIBRARY(obcache, m) {}

// No op has a derivative. Registered so that autograd says so instead of
// passing tensors through: an output of inputs that require grad carries a
// node whose backward raises. compact_ and evict, which write k and v in
// place and return no alias of them, refuse a k or v that requires grad
// (writes_kv_autograd) and bump their versions themselves (bump_versions).
TORCH_LIBRARY_IMPL(obcache, Autograd, m) {
  for (const char* op :
       {"saliency", "select", "select_adaptive", "projected_value_norm", "_criticalkv_keep", "_rope_rotate_half"})
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  for (const char* op : {"compact_", "evict"})
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&obcache::writes_kv_autograd>());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "obcache compiled ops (registered under torch.ops.obcache)";
  m.def("build_info", &build_info,
        "Dict: torch version built against, whether CUDA kernels are compiled, CUDA archs, compiler, "
        "whether the CPU ops use torch's threads.");
}
