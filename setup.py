"""Builds obcache._C: a CUDAExtension when torch has CUDA and a CUDA toolkit
is found (no GPU needed), a CppExtension otherwise.

Install torch first, then `pip install --no-build-isolation -e .` (build
isolation would compile against a second, different torch).
Environment knobs:
  OBCACHE_FORCE_CPU=1     build the CPU kernels only, even with a CUDA torch.
  TORCH_CUDA_ARCH_LIST    CUDA archs (default "8.0;9.0").
  MAX_JOBS                parallel compile jobs (ninja).
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _want_cuda():
    if os.environ.get("OBCACHE_FORCE_CPU", "0") == "1":
        return False
    if torch.version.cuda is None:
        return False
    return cpp_extension.CUDA_HOME is not None and os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    )


def _write_build_meta(with_cuda):
    # Read by obcache/_loader.py before it loads _C, so a torch upgrade gives a
    # "rebuild" message instead of an undefined-symbol error.
    with open(os.path.join(ROOT, "obcache", "_build_meta.py"), "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write("TORCH_VERSION = %r\n" % torch.__version__)
        f.write("WITH_CUDA = %r\n" % with_cuda)


def _extension():
    with_cuda = _want_cuda()
    _write_build_meta(with_cuda)
    kernels = glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cpp"))
    bindings = glob.glob(os.path.join(ROOT, "csrc", "torch", "*.cpp"))
    cuda_bindings = [p for p in bindings if p.endswith("_cuda.cpp")]
    sources = kernels + [p for p in bindings if p not in cuda_bindings]
    # No -std flag: torch's build helper picks the standard its headers need.
    # -fno-trapping-math: see CMakeLists.txt (same flags for the extension and the C++ tests).
    cxx = ["-O3", "-fvisibility=hidden", "-fno-trapping-math"]
    # at::parallel_for is inline: without _OPENMP it runs its range serially
    # in this extension whatever torch.set_num_threads says. The libgomp it
    # links is the one torch has already loaded (same soname), so the thread
    # count torch sets is the one the kernels get.
    link = []
    if torch.backends.openmp.is_available():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    define = [("OBCACHE_TORCH_VERSION", '"%s"' % torch.__version__)]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += cuda_bindings + glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.cu"))
        define += [
            ("OBCACHE_WITH_CUDA", "1"),
            ("OBCACHE_CUDA_ARCHS", '"%s"' % os.environ["TORCH_CUDA_ARCH_LIST"]),
            ("OBCACHE_TORCH_CUDA", '"%s"' % torch.version.cuda),
        ]
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return cpp_extension.CUDAExtension(
            "obcache._C",
            _rel(sources),
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    return cpp_extension.CppExtension(
        "obcache._C",
        _rel(sources),
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define,
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )


setup(
    name="obcache",
    version="0.1.0",
    description="Second-order (Optimal Brain Damage) KV-cache eviction ops for PyTorch",
    packages=find_packages(include=["obcache", "obcache.*"]),
    python_requires=">=3.9",
    install_requires=["numpy", "tqdm"],
    extras_require={
        "hf": ["transformers>=5.24,<6", "accelerate", "gguf", "safetensors"],
        "test": ["pytest", "hypothesis"],
        "eval": ["matplotlib"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["obcache=obcache.__main__:main"]},
)
