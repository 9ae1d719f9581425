"""Loads the compiled extension obcache._C (which registers torch.ops.obcache.*)
and checks it was built against the torch that is running."""
import importlib

import torch

_REBUILD = "rebuild it: pip install --no-build-isolation -e . (after installing torch)"


def _load():
    try:
        meta = importlib.import_module("obcache._build_meta")
    except ImportError as e:
        raise ImportError(f"obcache's compiled extension is not built; {_REBUILD}") from e
    if meta.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"obcache was built against torch {meta.TORCH_VERSION} but torch {torch.__version__} "
            f"is installed; {_REBUILD}"
        )
    try:
        return importlib.import_module("obcache._C")
    except ImportError as e:
        raise ImportError(f"obcache._C failed to load ({e}); {_REBUILD}") from e


_C = _load()


def build_info() -> dict:
    """What the extension was built with: torch version, whether CUDA kernels
    are compiled, CUDA archs, compiler."""
    return dict(_C.build_info())


def cuda_kernels_built() -> bool:
    """True when the CUDA kernels are compiled in (a GPU is still needed to run them)."""
    return bool(_C.build_info()["cuda_kernels"])
