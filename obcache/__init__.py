"""obcache: second-order (Optimal Brain Damage) KV-cache eviction for PyTorch.

Importing obcache loads the compiled ops into torch.ops.obcache.*; the Python
functions here are typed wrappers with docstrings and shapes.
"""
from obcache._loader import build_info, cuda_kernels_built
from obcache.ops import *  # noqa: F401,F403  (the public op wrappers)
from obcache.ops import __all__ as _ops_all

__version__ = "0.1.0"
__all__ = ["build_info", "cuda_kernels_built", *_ops_all]
