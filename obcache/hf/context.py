"""Query-agnostic use: compress a context once, then ask it questions.

The serving pattern where the question is not known when the context is
read: the context is prefilled and evicted using its own last `window`
tokens as the scoring queries; each question is then answered on a copy of
the compressed cache, with the true positions (context length + i).

Reconstruction methods (`kvzip`, `kvzip+obc-key`, ...; queries
"reconstruction" in `obcache.methods`) score the context with a second pass
instead: the model re-reads the context behind a repeat prompt
(`obcache.hf.reconstruct`), and those queries score the context's keys.
"""
import copy
from typing import Optional, Union

import torch
from torch import nn

from obcache.hf import reconstruct
from obcache.hf.cache_arg import cache_kw, output_cache
from obcache.hf.hooks import Compression, _check_args, get_method, resolve_budget, state_of

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
        eviction_seconds: wall time spent evicting (scoring from the
            queries, selecting, compacting).
        reconstruction_seconds: wall time of the reconstruction pass
            (re-reading the context and scoring it; 0.0 for other methods):
            the extra prefill cost of KVzip-style methods.
        lengths: methods whose heads keep different numbers of tokens (AdaKV
            rows, `laprox`): per layer int64 [B, H_kv], the tokens each head
            kept (each layer is padded to its longest head; the padding is
            masked when questions are read); None otherwise.
    """

    def __init__(self, model, cache, attention_mask, last_logits, options, *, eviction_seconds=0.0,
                 reconstruction_seconds=0.0, lengths=None):
        self.model, self.cache = model, cache
        self.attention_mask = attention_mask
        self.context_length = int(attention_mask.shape[1])
        self.last_logits = last_logits
        self.options = options
        self.eviction_seconds = eviction_seconds
        self.reconstruction_seconds = reconstruction_seconds
        self.lengths = lengths

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
            return self.model(input_ids=ids, attention_mask=am, position_ids=pos, **{cache_kw(self.model): cache},
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
            out = self.model.generate(input_ids=question_ids, attention_mask=am, **{cache_kw(self.model): cache},
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
    repeat_ids: Optional[torch.Tensor] = None,
    tokenizer=None,
    reconstruction_chunk: Optional[int] = None,
    query_reduce: Optional[str] = None,
    floor: float = 0.2,
    prefix_cache=None,
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
        repeat_ids, tokenizer, reconstruction_chunk, query_reduce:
            reconstruction methods only (`kvzip`, `kvzip+obc-key`, ...):
            the repeat prompt's tokens int64 [1, P] (default:
            `reconstruct.REPEAT_PROMPT` tokenised with `tokenizer`, or the
            tokenizer saved next to the model); context tokens per
            reconstruction chunk (None: one pass); "sum" or "max" to
            override the method's reduction over the reconstruction queries.
        floor: AdaKV rows (`adakv+...`): the per-head floor (fraction of the
            even share `budget`).
        prefix_cache: a cache holding a plain prefill (no obcache hooks) of
            the first P tokens of `context_ids`, P <= N - window; it is
            extended with the rest and compressed in place (pass a copy to
            keep it). Eviction happens after the last read, so the result is
            that of compressing the whole context whenever the scoring
            queries lie in the rest: every row except those scoring with all
            prompt queries (`h2o...`) and reconstruction rows, which raise.
            Lets one prefill serve several methods or budgets (what `obcache
            eval` does), or a shared prompt prefix serve many contexts.

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
    first = 0 if prefix_cache is None else _check_prefix(prefix_cache, context_ids, am, get_method(method), window)
    if get_method(method).reconstructs:
        return _compress_by_reconstruction(model, context_ids, am, options, repeat_ids=repeat_ids,
                                           tokenizer=tokenizer, chunk=reconstruction_chunk,
                                           query_reduce=query_reduce, floor=floor)
    extra = {} if prefix_cache is None else {cache_kw(model): prefix_cache}
    with torch.no_grad(), Compression(model, floor=floor, **options) as handle:
        out = model(input_ids=context_ids[:, first:], attention_mask=am, position_ids=_positions(am)[:, first:],
                    use_cache=True, logits_to_keep=1, **extra)
    cache = output_cache(out)
    # In-place compaction leaves the kept rows at the front of prompt-sized
    # storage; keep only them.
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and not hasattr(layer, "max_cache_len"):
            layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
    st = state_of(cache)
    assert st is not None
    lengths = [st.head_tails[li][0] for li in range(len(cache.layers))] if st.head_tails else None
    return CompressedContext(model, cache, am, out.logits[:, -1], options, eviction_seconds=handle.eviction_seconds,
                             lengths=lengths)


def _check_prefix(cache, context_ids, am, method, window) -> int:
    """Tokens of the context `cache` already holds, after checking that
    reading the rest through the hooks compresses as the whole context would."""
    if method.reconstructs or method.queries == "prompt":
        what = "re-reads the context (KVzip)" if method.reconstructs else "scores with every prompt query"
        raise ValueError(f"prefix_cache: method={method.name!r} {what}, so it needs the whole context read "
                         "through the hooks; pass prefix_cache=None")
    if state_of(cache) is not None:
        raise ValueError("prefix_cache: this cache was already read under obcache hooks; pass a plain prefill "
                         "(model(prefix_ids, use_cache=True) without compress)")
    first, (B, N) = int(cache.get_seq_length()), context_ids.shape
    if not 0 < first <= N - window:
        raise ValueError(f"prefix_cache holds {first} tokens; it must hold 1..N - window = {N - window} tokens of "
                         f"the {N}-token context so that the scoring window is read through the hooks")
    rows = cache.layers[0].keys.shape[0]
    if rows != B:
        raise ValueError(f"prefix_cache has batch {rows}, context_ids has batch {B}")
    if not bool(am.all()):
        raise NotImplementedError("prefix_cache with a left-padded batch is not supported; pass rows without padding")
    return first


def _compress_by_reconstruction(model, context_ids, am, options, *, repeat_ids, tokenizer, chunk, query_reduce,
                                floor):
    """compress_context for reconstruction methods: prefill into a
    StaticCache with room for one reconstruction chunk, score the context
    with the reconstruction pass, select and compact each layer's first Lc
    rows in place, and copy the kept rows into a DynamicCache."""
    from transformers import DynamicCache, StaticCache

    m = _check_args(**options)  # the checks and messages of compress()
    if query_reduce not in (None, "sum", "max"):
        raise ValueError(f"query_reduce must be None, 'sum' or 'max', got {query_reduce!r}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be a number in [0, 1], got {floor!r}")
    if not bool(am.all()):
        raise NotImplementedError(
            f"method={m.name!r}: reconstruction of left-padded batches is not supported; compress each context "
            "on its own (B=1) or pass rows of equal length"
        )
    if m.adaptive:
        reconstruct.check_head_masking(model)
    B, Lc = context_ids.shape
    budget = resolve_budget(options["budget"], Lc)
    recent = options["window"] if m.keep_recent else 0
    evicting = budget < Lc
    if evicting and budget < options["sink"] + recent:
        raise ValueError(f"budget={options['budget']!r} gives {budget} tokens per KV head, fewer than sink + window = "
                         f"{options['sink']} + {recent}; lower sink or window, or raise the budget")
    if evicting:
        repeat_ids = reconstruct.repeat_prompt_ids(model, tokenizer) if repeat_ids is None else repeat_ids
        step = Lc if chunk is None else min(int(chunk), Lc)
        cache = StaticCache(config=model.config, max_cache_len=Lc + repeat_ids.shape[1] + step)
        static = all(type(layer).__name__ == "StaticLayer" for layer in cache.layers)
        if not static:  # sliding-window layers: grow and shrink a DynamicCache instead
            cache = DynamicCache(config=model.config)
    else:
        cache = DynamicCache(config=model.config)
    # The prefill keeps everything; the hooks attach the state (positions) as in compress.
    with torch.no_grad(), Compression(model, evict_reads=False, **options):
        out = model(input_ids=context_ids, attention_mask=am, position_ids=_positions(am), **{cache_kw(model): cache},
                    use_cache=True, logits_to_keep=1)
    if not evicting:
        return CompressedContext(model, cache, am, out.logits[:, -1], options)
    spec = reconstruct.ScoreSpec(m.score, query_reduce or m.query_reduce or "sum", m.group_reduce or "sum")
    stop = reconstruct.timed(context_ids.device)
    scores = reconstruct.score_context(model, cache, context_ids, repeat_ids, [spec], chunk_size=chunk)[spec]
    rec_s = stop()
    return compress_scored(model, cache, scores, am, out.logits[:, -1], options, floor=floor,
                           reconstruction_seconds=rec_s)


def compress_scored(model, cache, scores, attention_mask, last_logits, options, *, floor=0.2,
                    reconstruction_seconds=0.0, method_row=None) -> CompressedContext:
    """Evict a prefilled context cache from given per-layer scores and wrap it.

    `cache` holds the context's Lc rows per layer and its CacheState (a
    prefill inside `Compression(..., evict_reads=False)`); it is compacted in
    place (select or select_adaptive, then compact_ on the narrowed views)
    and the kept rows are copied into a new DynamicCache. scores: per layer
    float32 [B, H_kv, Lc] (`reconstruct.score_context`). options: as
    compress_context stores them (method, budget, window, sink, pool_kernel,
    pool, ...); the method's row says pooled / keep_recent / adaptive.
    Used by compress_context, and by benchmarks that score a context once
    and try several selections on copies of it (`method_row`: a
    `obcache.methods.Method` to use instead of the table's row, e.g. a
    variant with other pooling).
    """
    from transformers import DynamicCache

    m = method_row or get_method(options["method"])
    B, Lc = attention_mask.shape
    budget = resolve_budget(options["budget"], Lc)
    recent = options["window"] if m.keep_recent else 0
    stop = reconstruct.timed(last_logits.device)
    kept = reconstruct.evict_context(cache, scores, budget, sink=options["sink"], recent=recent,
                                     pool_kernel=options["pool_kernel"] if m.pooled else 0, pool=options["pool"],
                                     adaptive=m.adaptive, floor=floor)
    st = state_of(cache)
    dense = DynamicCache(config=model.config)
    for li, (layer, (idx, lens)) in enumerate(zip(cache.layers, kept)):
        n = idx.shape[-1]
        dense.update(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone(), li)
        st.positions[li] = st.positions[li].gather(-1, idx.clamp_min(0)).masked_fill(idx < 0, -1)
        if lens is not None:
            st.head_tails[li] = (lens, n)
    st.valid = torch.ones(B, kept[0][0].shape[-1], dtype=torch.bool, device=last_logits.device)
    st.evicted = True
    setattr(dense, "obcache_state", st)
    ev_s = stop()
    lengths = [lens for _, lens in kept] if m.adaptive else None
    return CompressedContext(model, dense, attention_mask, last_logits, options, eviction_seconds=ev_s,
                             reconstruction_seconds=reconstruction_seconds, lengths=lengths)
