"""Context reconstruction (KVzip): score a cached context by the attention it
receives while the model re-reads it.

After the context (Lc tokens) is prefilled, the model reads
"Repeat the previous context:" followed by the context again, on top of the
context's cache. Every query of that pass (the reconstruction queries) has
to find in the cache what it is about to repeat, so the context tokens they
look at are the ones a later, unknown question may need. Each layer's
scores come from `torch.ops.obcache.saliency` with
k, v = context + reconstruction keys and q_window = the reconstruction
queries (the last T positions, causal); the first Lc columns are the
context's scores.

Long contexts are reconstructed in chunks: each chunk is the repeat prompt
followed by the next `chunk_size` context tokens, read at positions
Lc, Lc + 1, ... right after the context; its queries score the whole
context, the per-chunk scores are accumulated (sum, or max, as the method
says), and the chunk's own keys are dropped (the layer length is set back to
Lc) before the next chunk, so memory is bounded by Lc + prompt + chunk. A
chunk's queries see the context and their own chunk only, not the chunks
before (KVzip's trade: chunked scores are not the unchunked ones).

The context is held in a StaticCache of Lc + prompt + chunk rows: each
chunk writes its keys into rows [Lc, Lc + T) in place, and select and
compact_ then act on the narrowed views k[:, :, :Lc] without copying the
context cache. Only the kept rows are copied out, into the DynamicCache the
CompressedContext holds.

Head-adaptive budgets (AdaKV, `select_adaptive`) leave the heads of a layer
with different lengths; the cache is padded to the longest head and each
head's padded tail is masked in attention by `head_mask` (installed by
`obcache.hf.Compression`'s attention pre-hook for every later read).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from obcache.hf.cache_arg import cache_kw
from obcache.hf.hooks import _layer_kv, _now, _ops, _set_length, base_model
from obcache.hf.queries import QueryTap, attention_modules, recompute_queries

__all__ = ["REPEAT_PROMPT", "ScoreSpec", "repeat_prompt_ids", "score_context", "evict_context", "head_mask",
           "check_head_masking"]

# The prompt between the context and its repetition. Plain text (the
# contexts here are plain text, not chat turns); the KVzip paper's is
# "Repeat the previous context exactly." inside the model's chat template.
REPEAT_PROMPT = "\n\nRepeat the previous context:\n"

_PROMPT_CACHE: Dict[Tuple[str, str], torch.Tensor] = {}


@dataclass(frozen=True)
class ScoreSpec:
    """One score computed from the reconstruction queries: the saliency
    `score`, `query_reduce` over the queries (and across chunks), and
    `group_reduce` over the G query heads of a KV head."""

    score: str
    query_reduce: str = "sum"
    group_reduce: str = "sum"


def repeat_prompt_ids(model: nn.Module, tokenizer=None, prompt: str = REPEAT_PROMPT) -> torch.Tensor:
    """int64 [1, P]: `prompt` tokenised (no special tokens) with `tokenizer`,
    or with the tokenizer saved next to the model's weights
    (`model.name_or_path`, e.g. what `obcache.hf.load_model` loaded).
    ValueError saying to pass `repeat_ids` when neither is available."""
    if tokenizer is None:
        path = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
        key = (path, prompt)
        if key in _PROMPT_CACHE:
            return _PROMPT_CACHE[key]
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path) if path else None
        except (OSError, ValueError):
            tokenizer = None
        if tokenizer is None:
            raise ValueError(
                f"reconstruction methods need the repeat prompt's tokens: pass repeat_ids (int64 [1, P]) or "
                f"tokenizer; no tokenizer found next to the model (name_or_path={path!r})"
            )
        ids = _encode(tokenizer, prompt)
        _PROMPT_CACHE[key] = ids
        return ids
    return _encode(tokenizer, prompt)


def _encode(tokenizer, prompt):
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids], dtype=torch.long)


def _check_repeat(repeat_ids, B):
    if not isinstance(repeat_ids, torch.Tensor) or repeat_ids.dim() != 2 or repeat_ids.dtype != torch.long:
        raise ValueError(f"repeat_ids must be an int64 tensor [1 or B, P], got {_describe(repeat_ids)}")
    if repeat_ids.shape[0] not in (1, B):
        raise ValueError(f"repeat_ids must have 1 or B={B} rows, got {repeat_ids.shape[0]}")
    return repeat_ids.expand(B, -1)


def _describe(x):
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return repr(x)


def _accumulate(old, new, reduce):
    if old is None:
        return new
    return old + new if reduce == "sum" else torch.maximum(old, new)


def _commutes(spec):
    """True when reducing over the group inside each chunk and then over the
    chunks equals reducing over every query first: sum of sums, max of maxes.
    Otherwise (max over queries, sum over the group; or the reverse) each
    query head of a group is accumulated on its own and the group reduced at
    the end."""
    return (spec.query_reduce, spec.group_reduce) in (("sum", "sum"), ("sum", "mean"), ("max", "max"))


def _group(acc, reduce):
    """[B, H_kv, G, Lc] per-member scores -> [B, H_kv, Lc]."""
    return {"sum": acc.sum(2), "mean": acc.mean(2), "max": acc.amax(2)}[reduce]


def score_context(
    model: nn.Module,
    cache,
    context_ids: torch.Tensor,
    repeat_ids: torch.Tensor,
    specs: Sequence[ScoreSpec],
    *,
    chunk_size: Optional[int] = None,
) -> Dict[ScoreSpec, List[torch.Tensor]]:
    """Scores of the cached context from the reconstruction pass.

    Args:
        model: the causal LM (or its base model) that filled `cache`.
        cache: a cache holding exactly the context's Lc rows in every layer
            (a StaticCache with room for Lc + P + chunk rows, or a
            DynamicCache); after this call it holds those Lc rows again.
        context_ids: int64 [B, Lc], the context (no padding).
        repeat_ids: int64 [1 or B, P], the repeat prompt's tokens.
        specs: the scores wanted; all come from the same pass.
        chunk_size: context tokens per reconstruction chunk (None: the whole
            context in one pass).

    Returns:
        spec -> per layer float32 [B, H_kv, Lc]: the saliency of the
        context keys under every reconstruction query (each query's softmax
        over the context and its own chunk's keys, causal), reduced over the
        queries of all chunks (`query_reduce`), then over the query heads of
        each group (`group_reduce`).
    """
    B, Lc = context_ids.shape
    repeat_ids = _check_repeat(repeat_ids, B).to(context_ids.device)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    base = base_model(model)
    attention = attention_modules(base)
    scores: Dict[ScoreSpec, List[Optional[torch.Tensor]]] = {s: [None] * len(attention) for s in specs}
    ops = _ops()

    def hook(module, args, kwargs, output):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        pe = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        li = module.layer_idx
        layer = cache.layers[li]
        k, v, n = _layer_kv(layer, f"(layer {li} of {type(model).__name__})")
        with torch.no_grad():
            # [B, H_q, T, D]: the chunk's queries, the last T rows of k
            q = recompute_queries(module, hs, pe, projected=tap.take(module))
            G = q.shape[1] // k.shape[1]
            for spec in specs:
                kw = dict(scale=module.scaling, causal=True, query_reduce=spec.query_reduce)
                if single or _commutes(spec):
                    s = ops.saliency(k, v, q, spec.score, group_reduce=spec.group_reduce, **kw)[:, :, :Lc]
                else:
                    # query heads g, G + g, 2G + g, ... read KV heads 0, 1, 2, ...: member g of each group
                    s = torch.stack([ops.saliency(k, v, q[:, g::G], spec.score, group_reduce="sum", **kw)[:, :, :Lc]
                                     for g in range(G)], 2)  # [B, H_kv, G, Lc]
                scores[spec][li] = _accumulate(scores[spec][li], s, spec.query_reduce)
            # Drop the chunk's keys: the next chunk (and the caller) sees the context only.
            _set_length(layer, Lc)
        return None

    step = Lc if chunk_size is None else chunk_size
    single = step >= Lc
    tap = QueryTap(attention)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in attention]
    try:
        with torch.no_grad():
            for s in range(0, Lc, step):
                ids = torch.cat([repeat_ids, context_ids[:, s:s + step]], 1)
                pos = (Lc + torch.arange(ids.shape[1], device=ids.device)).unsqueeze(0).expand(B, -1)
                base(input_ids=ids, position_ids=pos, use_cache=True, **{cache_kw(base): cache})
    finally:
        tap.remove()
        for h in handles:
            h.remove()
    for spec in specs:
        if not (single or _commutes(spec)):
            scores[spec] = [_group(s, spec.group_reduce) for s in scores[spec]]
    return scores


def evict_context(cache, scores: List[torch.Tensor], budget: int, *, sink: int, recent: int, pool_kernel: int,
                  pool: str, adaptive: bool = False, floor: float = 0.2):
    """Select and compact every layer of `cache` in place from per-layer
    scores [B, H_kv, Lc] (what `score_context` returns for one spec).

    Uniform budgets: `select` keeps `budget` rows per KV head. Adaptive
    (AdaKV): `select_adaptive` keeps H_kv * budget rows per layer and batch
    row, each head at least `floor` of the even share; rows are padded to the
    longest head. Acts on the narrowed views k[:, :, :Lc] of each layer (no
    copy of the context cache) and sets each layer's length to its kept rows.

    Returns per layer (indices int64 [B, H_kv, L], -1 past a head's length;
    lengths int64 [B, H_kv] or None for uniform budgets).
    """
    ops = _ops()
    out = []
    for li, layer in enumerate(cache.layers):
        k, v, n = _layer_kv(layer, f"(layer {li})")
        s = scores[li]
        if s.shape[-1] != n:
            raise ValueError(f"layer {li} holds {n} rows but its scores cover {s.shape[-1]}")
        if adaptive:
            idx, lengths = ops.select_adaptive(s, budget * s.shape[1], floor=floor, sink=sink, recent=recent,
                                               pool_kernel=pool_kernel, pool=pool)
            ops.compact_(k, v, idx, lengths)
        else:
            idx, lengths = ops.select(s, budget, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool), None
            ops.compact_(k, v, idx)
        _set_length(layer, idx.shape[-1])
        out.append((idx, lengths))
    return out


# --------------------------------------------------------------------------
# heads of different lengths


_MASKABLE = ("sdpa", "eager")


def check_head_masking(model: nn.Module) -> None:
    """NotImplementedError unless the model's attention takes a per-head mask.

    Heads of different lengths are masked by handing each attention module a
    4D mask [B, H_q, T, S] (SDPA and eager attention broadcast it over heads
    as they are). Flash-attention and flex-attention paths take no dense
    per-head mask (flash kernels take only causal + per-sequence lengths,
    shared by every head; flex takes a BlockMask built once per model call),
    so masking one head's padded tail there would need patching model code.
    """
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if impl not in _MASKABLE:
        raise NotImplementedError(
            f"head-adaptive (adakv+) methods need attention that takes a per-head mask (sdpa or eager), got "
            f"attn_implementation={impl!r}: its kernels accept only causal/per-sequence masking shared by all "
            "heads, so each head's padded tail cannot be masked without patching model code"
        )


def head_mask(lengths: torch.Tensor, width: int, n_past: int, T: int, groups: int,
              additive_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Attention mask [B, H_q, T, n_past + T] for T new queries over a layer
    whose heads hold different lengths.

    Rows [lengths[b, h], width) of KV head h are padding (left by
    select_adaptive + compact_); the T new tokens sit at columns
    n_past .. n_past + T - 1 (causal among themselves). Query head j reads
    KV head j // groups. Bool (True = attend) for SDPA, or additive
    (0 / dtype min) when `additive_dtype` is given (eager attention).
    """
    dev = lengths.device
    S = n_past + T
    col = torch.arange(S, device=dev)
    dead = (col >= lengths[..., None]) & (col < width)  # [B, H_kv, S]
    dead = dead.repeat_interleave(groups, 1)[:, :, None, :]  # [B, H_q, 1, S]
    causal = col[None, :] <= (n_past + torch.arange(T, device=dev))[:, None]  # [T, S]
    allowed = causal[None, None] & ~dead
    if additive_dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=additive_dtype, device=dev).masked_fill(
        ~allowed, torch.finfo(additive_dtype).min)


def timed(device):
    """A stopwatch after the device's queued work: call it again for seconds."""
    t0 = _now(device)
    return lambda: _now(device) - t0
