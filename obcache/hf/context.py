"""Query-agnostic use: compress a context once, then ask it questions.

The serving pattern where the question is not known when the context is
read: the context is prefilled and evicted using its own last `window`
tokens as the scoring queries; each question is then answered on a copy of
the compressed cache, with the true positions (context length + i).
"""
import copy
from typing import Optional, Union

import torch
from torch import nn

from obcache.hf.hooks import Compression, state_of

__all__ = ["CompressedContext", "compress_context"]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # generate's convention: the position of a token is the number of real
    # tokens before it in its row (left padding does not count).
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


class CompressedContext:
    """A prefilled, compressed context; ask it any number of questions.

    Attributes:
        model: the model.
        cache: the compressed cache (DynamicCache), H_kv heads, `budget`
            tokens per head (fewer if the context was shorter).
        context_length: tokens of the context (its padded width); the first
            question token is read at this column.
        attention_mask: int64 [B, context_length], 0 for left padding.
        last_logits: [B, V] logits after the last context token.
        options: the compress options (method, budget, window, ...) used.
    """

    def __init__(self, model, cache, attention_mask, last_logits, options):
        self.model, self.cache = model, cache
        self.attention_mask = attention_mask
        self.context_length = int(attention_mask.shape[1])
        self.last_logits = last_logits
        self.options = options

    @property
    def past_key_values(self):
        """The compressed cache (alias of `cache`)."""
        return self.cache

    @property
    def cache_length(self) -> int:
        """Tokens per KV head the compressed cache holds."""
        return int(self.cache.get_seq_length())

    def _hooks(self):
        # Positions and masks of the compacted cache; no eviction of what is
        # read next, except decode-time eviction when it was asked for.
        return Compression(self.model, evict_reads=False, **self.options)

    def _mask(self, n: int, device) -> torch.Tensor:
        am = self.attention_mask.to(device)
        return torch.cat([am, am.new_ones(am.shape[0], n)], 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of reading ids [B, T] right after the context
        (teacher forcing), on a copy of the cache."""
        cache = copy.deepcopy(self.cache)
        am = self._mask(ids.shape[1], ids.device)
        with torch.no_grad(), self._hooks():
            pos = _positions(am)[:, -ids.shape[1]:]
            return self.model(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=cache,
                              use_cache=True).logits

    def generate(self, question_ids: Optional[torch.Tensor] = None, max_new_tokens: int = 32, **generate_kwargs):
        """Answer a question on a copy of the compressed cache.

        Args:
            question_ids: int64 [B, Tq] tokens read after the context (None or
                empty: continue the context, starting from the argmax of
                `last_logits`).
            max_new_tokens: tokens to generate.
            **generate_kwargs: passed to `model.generate` (do_sample, eos_token_id, ...).

        Returns:
            int64 [B, new]: the generated tokens only (new <= max_new_tokens).
        """
        device = self.last_logits.device
        head = None
        if question_ids is None or question_ids.numel() == 0:
            head = self.last_logits.argmax(-1, keepdim=True)
            question_ids, max_new_tokens = head, max_new_tokens - 1
            if max_new_tokens <= 0:
                return head
        question_ids = question_ids.to(device)
        cache = copy.deepcopy(self.cache)
        am = self._mask(question_ids.shape[1], device)
        with torch.no_grad(), self._hooks():
            out = self.model.generate(input_ids=question_ids, attention_mask=am, past_key_values=cache,
                                      max_new_tokens=max_new_tokens, **generate_kwargs)
        new = out[:, question_ids.shape[1]:]
        return new if head is None else torch.cat([head, new], 1)


def compress_context(
    model: nn.Module,
    context_ids: torch.Tensor,
    method: str,
    budget: Union[int, float],
    *,
    window: int = 32,
    sink: int = 4,
    pool_kernel: int = 7,
    pool: str = "max",
    chunk_size: Optional[int] = None,
    decode_budget: Optional[int] = None,
    attention_mask: Optional[torch.Tensor] = None,
) -> CompressedContext:
    """Prefill `context_ids` and evict its cache once (query-agnostic: the
    context's own last `window` tokens are the scoring queries).

    ```python
    ctx = obcache.hf.compress_context(model, context_ids, method="snapkv+obc-key", budget=0.2)
    answer = ctx.generate(question_ids, max_new_tokens=16)   # new tokens only
    ```

    Args:
        model, method, budget, window, sink, pool_kernel, pool, chunk_size,
            decode_budget: as in `obcache.hf.compress` (budget fractions are
            of the context length).
        context_ids: int64 [B, N] context tokens (left-padded when B > 1).
        attention_mask: optional [B, N], 0 for padding.

    Returns:
        A `CompressedContext` holding the compressed cache (tensors compacted
        into storage of the budget's size) and the context length.
    """
    if context_ids.dim() != 2:
        raise ValueError(f"context_ids must have 2 dims [B, N], got {context_ids.dim()}")
    options = dict(method=method, budget=budget, window=window, sink=sink, pool_kernel=pool_kernel, pool=pool,
                   chunk_size=chunk_size, decode_budget=decode_budget)
    am = torch.ones_like(context_ids) if attention_mask is None else attention_mask.to(context_ids.device).long()
    if am.shape != context_ids.shape:
        raise ValueError(f"attention_mask must have the shape of context_ids {tuple(context_ids.shape)}, "
                         f"got {tuple(am.shape)}")
    with torch.no_grad(), Compression(model, **options):
        out = model(input_ids=context_ids, attention_mask=am, position_ids=_positions(am), use_cache=True,
                    logits_to_keep=1)
    cache = out.past_key_values
    # In-place compaction leaves the kept rows at the front of prompt-sized
    # storage; keep only them.
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and not hasattr(layer, "max_cache_len"):
            layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
    assert state_of(cache) is not None
    return CompressedContext(model, cache, am, out.logits[:, -1], options)
