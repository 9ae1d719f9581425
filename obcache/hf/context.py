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
from obcache.hf.hooks import (STATE_ATTR, Compression, _check_args, _set_unhooked, get_method, resolve_budget,
                              state_of)

__all__ = ["CompressedContext", "ScoredContext", "compress_context", "score_by_reconstruction"]


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

    def _mask(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        """The context's mask and then ids' tokens (all real): ids' rows are
        read after the context rows of the same index."""
        am = self.attention_mask.to(ids.device)
        if ids.dim() != 2 or ids.shape[0] != am.shape[0]:
            raise ValueError(f"{name} must be int64 [B, T] with the context's batch size B = {am.shape[0]} (row b "
                             f"is read after context row b), got shape {tuple(ids.shape)}")
        return torch.cat([am, am.new_ones(am.shape[0], ids.shape[1])], 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of reading ids [B, T] right after the context
        (teacher forcing), on a copy of the cache."""
        cache = copy.deepcopy(self.cache)
        am = self._mask(ids, "ids")
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
        if "attention_mask" in generate_kwargs:
            raise ValueError("CompressedContext.generate makes the attention mask itself (the context's, then the "
                             "question's tokens, all real): the questions of a batch must be of one length, unpadded")
        device = self.last_logits.device
        head = None
        if question_ids is None or question_ids.numel() == 0:
            head = self.last_logits.argmax(-1, keepdim=True)
            question_ids, max_new_tokens = head, max_new_tokens - 1
            if max_new_tokens <= 0:
                return head
        question_ids = question_ids.to(device)
        cache = copy.deepcopy(self.cache)
        am = self._mask(question_ids, "question_ids")
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
    m = get_method(method)
    first = 0 if prefix_cache is None else _check_prefix(prefix_cache, context_ids, am, m, window)
    if m.reconstructs:
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


def why_no_prefix(method) -> Optional[str]:
    """Why a method row cannot compress on top of a plain prefill of the
    context's prefix (`compress_context(prefix_cache=...)`), or None when it can."""
    if method.reconstructs:
        return "re-reads the context (KVzip)"
    if method.queries == "prompt":
        return "scores with every prompt query"
    return None


def _check_prefix(cache, context_ids, am, method, window) -> int:
    """Tokens of the context `cache` already holds, after checking that
    reading the rest through the hooks compresses as the whole context would."""
    what = why_no_prefix(method)
    if what is not None:
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
    """compress_context for reconstruction methods: score the context with
    the reconstruction pass (`score_by_reconstruction`), then select and
    compact its cache in place (no copy: one context, one method)."""
    m = _check_args(**options)  # the checks and messages of compress()
    if query_reduce not in (None, "sum", "max"):
        raise ValueError(f"query_reduce must be None, 'sum' or 'max', got {query_reduce!r}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be a number in [0, 1], got {floor!r}")
    _check_unpadded(f"method={m.name!r}", am)
    if m.adaptive:
        reconstruct.check_head_masking(model)
    if not _evicts(m, options, context_ids.shape[1]):
        from transformers import DynamicCache

        # nothing to evict: a plain prefill (the hooks attach the state, as in compress)
        cache = DynamicCache(config=model.config)
        with torch.no_grad(), Compression(model, evict_reads=False, **options):
            out = model(input_ids=context_ids, attention_mask=am, position_ids=_positions(am),
                        **{cache_kw(model): cache}, use_cache=True, logits_to_keep=1)
        return CompressedContext(model, cache, am, out.logits[:, -1], options)
    spec = spec_of(m, query_reduce)
    read = score_by_reconstruction(model, context_ids, [spec], attention_mask=am, repeat_ids=repeat_ids,
                                   tokenizer=tokenizer, chunk=chunk)
    return compress_scored(model, read.cache, read.scores[spec], am, read.last_logits, options, floor=floor,
                           reconstruction_seconds=read.seconds)


def _evicts(method, options, Lc) -> bool:
    """Whether the budget drops tokens of an Lc-token context; ValueError when it is below sink + window."""
    budget = resolve_budget(options["budget"], Lc)
    recent = options["window"] if method.keep_recent else 0
    if budget < Lc and budget < options["sink"] + recent:
        raise ValueError(f"budget={options['budget']!r} gives {budget} tokens per KV head, fewer than sink + window = "
                         f"{options['sink']} + {recent}; lower sink or window, or raise the budget")
    return budget < Lc


def spec_of(method, query_reduce=None):
    """The reconstruction score a method row uses (`query_reduce` overrides its reduction over the queries)."""
    return reconstruct.ScoreSpec(method.score, query_reduce or method.query_reduce or "sum",
                                 method.group_reduce or "sum")


def _check_unpadded(who, am):
    if not bool(am.all()):
        raise NotImplementedError(
            f"{who}: reconstruction of left-padded batches is not supported; compress each context "
            "on its own (B=1) or pass rows of equal length"
        )


class ScoredContext:
    """A context read once and scored by the reconstruction pass with one or
    more score specs; `compress` evicts a copy with any method row whose
    score is among them, so several methods and budgets share one read.

    Attributes: cache (StaticCache, or DynamicCache for sliding-window
    models, holding the context rows first), attention_mask, last_logits
    [B, V], scores (ScoreSpec -> per layer float32 [B, H_kv, Lc]), seconds
    (wall time of the reconstruction pass), prefill_seconds.
    """

    def __init__(self, model, cache, attention_mask, last_logits, scores, seconds, prefill_seconds):
        self.model, self.cache, self.attention_mask = model, cache, attention_mask
        self.last_logits, self.scores = last_logits, scores
        self.seconds, self.prefill_seconds = seconds, prefill_seconds

    def compress(self, method, budget, *, window=32, sink=4, pool_kernel=7, pool="max", floor=0.2,
                 query_reduce=None, method_row=None) -> CompressedContext:
        """compress_context's result for this method and budget, on a copy of
        the context cache. method_row: a variant of the method's row to use
        instead (e.g. other pooling; `compress_scored`)."""
        from transformers import DynamicCache

        options = dict(method=method, budget=budget, window=window, sink=sink, pool_kernel=pool_kernel, pool=pool,
                       chunk_size=None, decode_budget=None)
        m = method_row or _check_args(**options)
        if not m.reconstructs:
            raise ValueError(f"method={method!r} does not score by reconstruction; use compress_context")
        if m.adaptive:
            reconstruct.check_head_masking(self.model)
        _evicts(m, options, self.attention_mask.shape[1])
        spec = spec_of(m, query_reduce)
        if spec not in self.scores:
            raise ValueError(f"method={method!r} needs the reconstruction score {spec}; this context was scored "
                             f"with {sorted(map(str, self.scores))}")
        Lc = self.attention_mask.shape[1]
        copy_ = DynamicCache(config=self.model.config)
        for li, layer in enumerate(self.cache.layers):
            copy_.update(layer.keys[:, :, :Lc].clone(), layer.values[:, :, :Lc].clone(), li)
        setattr(copy_, STATE_ATTR, copy.deepcopy(state_of(self.cache)))
        return compress_scored(self.model, copy_, self.scores[spec], self.attention_mask, self.last_logits, options,
                               floor=floor, reconstruction_seconds=self.seconds, method_row=method_row)


def score_by_reconstruction(model, context_ids, specs, *, attention_mask=None, repeat_ids=None, tokenizer=None,
                            chunk=None) -> ScoredContext:
    """Prefill `context_ids` [B, N] (no padding) into a cache with room for
    one reconstruction chunk and score it with every spec in `specs`
    (`reconstruct.score_context`; repeat_ids, tokenizer, chunk as in
    `compress_context`)."""
    from transformers import DynamicCache, StaticCache

    am = torch.ones_like(context_ids) if attention_mask is None else attention_mask
    _check_unpadded("score_by_reconstruction", am)
    repeat_ids = reconstruct.repeat_prompt_ids(model, tokenizer) if repeat_ids is None else repeat_ids
    Lc = context_ids.shape[1]
    step = Lc if chunk is None else min(int(chunk), Lc)
    cache = StaticCache(config=model.config, max_cache_len=Lc + repeat_ids.shape[1] + step)
    if not all(type(layer).__name__ == "StaticLayer" for layer in cache.layers):
        cache = DynamicCache(config=model.config)  # sliding-window layers: grow and shrink a DynamicCache instead
        # Such a layer keeps only its last sliding_window - 1 tokens: past that, the context's first tokens
        # would be dropped and the reconstruction's taken for them.
        windows = [w for w in (getattr(layer, "sliding_window", None) for layer in cache.layers) if w is not None]
        held = Lc + repeat_ids.shape[1] + step
        if windows and held > min(windows) - 1:
            raise NotImplementedError(
                f"{type(model).__name__} uses sliding-window attention (sliding_window={min(windows)}): scoring by "
                f"reconstruction holds {Lc} context + {repeat_ids.shape[1]} repeat-prompt + {step} chunk = {held} "
                f"tokens, which must stay under it; pass a smaller chunk or a shorter context")
    stop = reconstruct.timed(context_ids.device)
    # The prefill keeps everything; the hooks attach the state (positions) as in compress.
    with torch.no_grad(), Compression(model, "full", 1.0, evict_reads=False):
        out = model(input_ids=context_ids, attention_mask=am, position_ids=_positions(am), **{cache_kw(model): cache},
                    use_cache=True, logits_to_keep=1)
    prefill_s = stop()
    stop = reconstruct.timed(context_ids.device)
    scores = reconstruct.score_context(model, cache, context_ids, repeat_ids, list(specs), chunk_size=chunk)
    return ScoredContext(model, cache, am, out.logits[:, -1], scores, stop(), prefill_s)


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
    setattr(dense, STATE_ATTR, st)
    _set_unhooked(dense, True)  # as a cache the hooks evicted: read into only under them
    ev_s = stop()
    lengths = [lens for _, lens in kept] if m.adaptive else None
    return CompressedContext(model, dense, attention_mask, last_logits, options, eviction_seconds=ev_s,
                             reconstruction_seconds=reconstruction_seconds, lengths=lengths)
