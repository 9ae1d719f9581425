"""The name of the cache argument: transformers 5.24 renamed the keyword
argument and output field `past_key_values` to `cache` (the old name still
works there, with a deprecation warning, until 5.40). obcache.hf supports
both, so it reads whichever the caller used and passes the one the installed
transformers declares."""
import inspect
from typing import Any, Dict, Optional

from torch import nn

NAMES = ("cache", "past_key_values")


def cache_kw(module: nn.Module) -> str:
    """The keyword `module.forward` takes its cache by."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def cache_of(kwargs: Dict[str, Any]) -> Optional[Any]:
    """The cache a forward call was given (under either name), or None."""
    for name in NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def output_cache(out) -> Optional[Any]:
    """The cache a model output carries (`out.cache`, or `out.past_key_values`
    before 5.24)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def set_cache(kwargs: Dict[str, Any], module: nn.Module, cache) -> None:
    """Hand `cache` to a forward call of `module` under the name it declares."""
    for name in NAMES:
        kwargs.pop(name, None)
    kwargs[cache_kw(module)] = cache
