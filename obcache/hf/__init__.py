"""KV-cache eviction inside Hugging Face transformers models (5.x), with hooks
on the attention modules and the caches transformers already has.

```python
import obcache.hf
with obcache.hf.compress(model, method="snapkv+obc-key", budget=0.1):
    out = model.generate(**inputs, max_new_tokens=32)

ctx = obcache.hf.compress_context(model, context_ids, method="snapkv+obc-key", budget=0.2)
answer = ctx.generate(question_ids, max_new_tokens=16)
```
`methods()` lists the method names; `obcache.methods.METHODS` is the table.
"""
from obcache.hf.hooks import CacheState, Compression, compress, state_of
from obcache.hf.context import CompressedContext, ScoredContext, compress_context, score_by_reconstruction
from obcache.hf.models import load_model
from obcache.methods import methods

__all__ = ["compress", "compress_context", "score_by_reconstruction", "methods", "load_model", "Compression",
           "CompressedContext", "ScoredContext", "CacheState", "state_of"]
