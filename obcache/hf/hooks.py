"""`obcache.hf.compress`: KV-cache eviction inside a transformers model, with
hooks only (no model code is copied or patched).

Two kinds of hooks:

- on the base model (LlamaModel, Qwen3Model, ...), a forward pre-hook and
  hook: they attach the bookkeeping (`CacheState`) to the cache, keep RoPE
  positions true after eviction (`position_ids` = tokens read so far, never
  the shorter cache length), rebuild the 2D padding mask for the compacted
  cache, and split long inputs into chunks (`chunk_size`);
- on every decoder attention module, a forward hook: the layer's attention
  has just run exactly over everything cached plus the new tokens; the hook
  recomputes the scoring queries from the layer's input (`queries.py`) and
  calls `torch.ops.obcache.evict`, which compacts the layer's cache tensors
  in place ([B, H_kv, N, D]: KV is never expanded to the query heads). For
  the scores that read the window's attention output, the op is handed the
  one the layer just computed (o_proj's input, `outputs.py`).

How the cache stays consistent with transformers' own bookkeeping: the
cache reports its physical length (`get_seq_length`, mask sizes) as usual,
so attention masks are built for the compacted tensors; positions are
carried by `position_ids` (`generate` always passes them; the pre-hook adds
them otherwise). A StaticCache is compacted in place inside its
preallocated tensors and its write offset (`cumulative_length`) is set to
the budget, so nothing is reallocated.

Decode-time eviction (`decode_budget`) recomputes the scores at every step
from the most recent queries (the last `window` queries; the last one for
TOVA-style methods); scores are not accumulated across steps.

Heads of different lengths (AdaKV rows, LaProx): the layer's cache is
padded to its longest head ([B, H_kv, Lmax, D]: the memory held is Lmax
rows per head, not each head's own length) and `CacheState.head_tails`
records each head's length; the attention pre-hook then hands every later
attention call of that layer a per-head mask hiding the padded tails
(SDPA and eager attention only). LaProx's selection is global over the
layers, so its attention hooks only score (keeping the [B, H_kv, N] float32
scores of each layer) and the base model's forward hook selects and
compacts every layer once the whole prompt was read.
"""
import inspect
import numbers
import time
import weakref
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from obcache.hf.cache_arg import cache_of, set_cache
from obcache.hf.outputs import OutputTap
from obcache.hf.queries import QueryTap, attention_modules, recompute_queries
from obcache.methods import Method, get_method
from obcache.ops.saliency import O_SCORES
from obcache.policies import laprox_select
from obcache.policies.criticalkv_pruned import pruned_keep

__all__ = ["compress", "Compression", "CacheState", "resolve_budget", "base_model"]

STATE_ATTR = "obcache_state"


def _ops():
    """The op library the integration calls (the one place to switch it)."""
    return torch.ops.obcache


# --------------------------------------------------------------------------
# arguments


def _now(device) -> float:
    """Wall clock after the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def resolve_budget(budget: Union[int, float], n: int) -> int:
    """Tokens per KV head for a prompt of `n` tokens: a float in (0, 1] is a
    fraction of n (rounded, at least 1), an int is a token count (numpy
    scalars too: any numbers.Integral is a count, any other numbers.Real a
    fraction)."""
    if isinstance(budget, numbers.Integral):
        return int(budget)
    return max(1, int(round(float(budget) * n)))


def _check_args(method, budget, window, sink, pool_kernel, pool, chunk_size, decode_budget, floor=0.2):
    m = get_method(method)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be a number in [0, 1], got {floor!r}")
    if m.per_head_lengths and not m.reconstructs:
        for name, val in (("chunk_size", chunk_size), ("decode_budget", decode_budget)):
            if val is not None:
                raise ValueError(
                    f"{name}={val!r}: method={method!r} leaves heads with different lengths and evicts the prompt "
                    f"once, after the whole prompt was read; {name} is not supported with it"
                )
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be a float in (0, 1] or an int >= 1, got {budget!r}")
    if not isinstance(budget, numbers.Integral) and not 0.0 < budget <= 1.0:
        raise ValueError(f"budget as a fraction of the prompt must be in (0, 1], got {budget!r}")
    if isinstance(budget, numbers.Integral) and budget < 1:
        raise ValueError(f"budget in tokens per KV head must be >= 1, got {budget!r}")
    for name, val, lo in (("window", window, 1), ("sink", sink, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
    if isinstance(pool_kernel, bool) or not isinstance(pool_kernel, int) or pool_kernel < 0 or (
        pool_kernel > 1 and pool_kernel % 2 == 0
    ):
        raise ValueError(f"pool_kernel must be 0, 1 or an odd int, got {pool_kernel!r}")
    if pool not in ("max", "avg"):
        raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    if decode_budget is not None:
        if m.reconstructs:
            raise ValueError(
                f"decode_budget={decode_budget!r}: method={method!r} scores by context reconstruction, which "
                "decode-time eviction cannot rerun; use a window method for decode_budget"
            )
        if not m.evicts:
            raise ValueError(f"decode_budget={decode_budget!r} needs an evicting method, got method={method!r}")
        least = sink + (window if m.keep_recent else 0) + 1
        if isinstance(decode_budget, bool) or not isinstance(decode_budget, int) or decode_budget < least:
            raise ValueError(
                f"decode_budget must be an int >= sink + recent window + 1 = {least}, got {decode_budget!r}"
            )
    return m


# --------------------------------------------------------------------------
# cache layers


def _layer_kv(layer, where):
    """(k, v, n): views [B, H_kv, n, D] of the n rows the layer holds."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer

    if type(layer) is StaticLayer:  # preallocated; n rows written so far
        n = int(layer.cumulative_length)
        return layer.keys[:, :, :n], layer.values[:, :, :n], n
    if type(layer) in (DynamicLayer, DynamicSlidingWindowLayer):
        return layer.keys, layer.values, layer.keys.shape[-2]
    raise NotImplementedError(
        f"obcache.hf compacts DynamicCache and StaticCache layers (DynamicLayer, DynamicSlidingWindowLayer, "
        f"StaticLayer), got {type(layer).__name__} {where}"
    )


def _set_length(layer, n):
    """Make the layer hold its first n rows (after they were compacted in place)."""
    if isinstance(layer.cumulative_length if hasattr(layer, "cumulative_length") else None, torch.Tensor):
        layer.cumulative_length.fill_(n)  # static: same storage, the next write goes to row n
        return
    layer.keys = layer.keys[..., :n, :]
    layer.values = layer.values[..., :n, :]
    if hasattr(layer, "cumulative_length"):  # DynamicSlidingWindowLayer sizes its mask from it
        layer.cumulative_length = n


# --------------------------------------------------------------------------
# eviction of one layer (and LaProx's `_evict_global`): the places that call the ops


def _criticalkv_keep(k, v, q, budget, *, method, scale, wo, floor=None, o=None, **sel):
    """The tokens a `criticalkv` row keeps in one layer: those of
    criticalkv_keep with `budget` per head, or of adaptive_criticalkv_keep
    with `budget` for the layer and AdaKV's `floor` (then (indices,
    lengths)). Stage 2's critical score is computed exactly only where its
    picks depend on it (pruned_keep: the same tokens, ~3% of the
    o_proj-sized work). o: the window's attention output, or None (see
    evict_layer). sel: sink, recent, pool_kernel, pool."""
    base = _ops().saliency(k, v, q, method.score, group_reduce=method.group_reduce or "sum", scale=scale, o=o)
    return pruned_keep(base, v, wo, budget, floor=floor, **sel)


def evict_layer(k, v, q, budget, *, method: Method, sink, recent, pool_kernel, pool, scale, start=None, wo=None,
                o=None):
    """Compacts k, v [B, H_kv, N, D] in place to `budget` rows per (b, h).

    q: [B, H_q, W, D] scoring queries of the last W cached tokens (unused by
    `streaming`). start: optional int64 [B], first real (non-padding) row of
    each batch row; each row is scored on its own tokens only, and a row with
    at most `budget` real tokens keeps its last `budget` rows. wo: the
    layer's o_proj weight (`criticalkv` rows). o: [B, H_q, W, D] the
    attention output of q's queries over this cache, or None (the op then
    computes it; see the ops' `o`).
    Returns int64 [B, H_kv, budget]: the old row of each kept row, ascending.
    """
    ops = _ops()
    B, H, N, _ = k.shape
    pk = pool_kernel if method.pooled else 0
    if method.score is None:  # streaming: the newest tokens win the top-k
        scores = torch.arange(N, dtype=torch.float32, device=k.device).expand(B, H, N).contiguous()
        idx = ops.select(scores, budget, sink=sink, recent=0, pool_kernel=0, pool="max", start=start)
        ops.compact_(k, v, idx)
        return idx
    opts = dict(score=method.score, sink=sink, recent=recent, pool_kernel=pk, pool=pool, group_reduce="sum",
                scale=scale)

    def run(kb, vb, qb, ob):
        if method.selection != "criticalkv":
            return ops.evict(kb, vb, qb, budget, o=ob, **opts)
        idx = _criticalkv_keep(kb, vb, qb, budget, method=method, scale=scale, wo=wo, o=ob, sink=sink, recent=recent,
                               pool_kernel=pk, pool=pool)
        ops.compact_(kb, vb, idx)
        return idx

    if start is None or not bool(start.any()):
        return run(k, v, q, o)
    # Left padding: score each row on its own tokens (the ops' softmax would
    # otherwise count padding keys), on narrowed views of the cache.
    rows = []
    for b in range(B):
        s = int(start[b])
        kb, vb = k[b : b + 1], v[b : b + 1]
        if N - s <= budget:
            idx = torch.arange(N - budget, N, device=k.device).expand(1, H, budget).contiguous()
            ops.compact_(kb, vb, idx)
        else:
            W = min(q.shape[2], N - s)
            ob = None if o is None else o[b : b + 1, :, q.shape[2] - W :]
            idx = run(kb[:, :, s:], vb[:, :, s:], q[b : b + 1, :, q.shape[2] - W :], ob) + s
            if s:
                ops.compact_(kb, vb, torch.arange(s, s + budget, device=k.device).expand(1, H, budget).contiguous())
        rows.append(idx)
    return torch.cat(rows, 0)


def layer_scores(k, v, q, *, method: Method, scale, wo=None, o=None):
    """[B, H_kv, N] float32 scores of one layer (`laprox` needs wo; o as in
    evict_layer)."""
    return _ops().saliency(k, v, q, method.score, group_reduce=method.group_reduce or "sum", scale=scale,
                           wo=wo if method.needs_wo else None, o=o)


def evict_layer_adaptive(k, v, q, budget, *, method: Method, sink, recent, pool_kernel, pool, scale, floor,
                         wo=None, o=None):
    """AdaKV: compacts k, v [B, H_kv, N, D] in place keeping budget * H_kv
    rows per batch row over the layer's heads, each head at least `floor` of
    the even share (`select_adaptive`; `adaptive_criticalkv_keep` for
    `criticalkv` rows). Returns (indices int64 [B, H_kv, Lmax], -1 past a
    head's length; lengths int64 [B, H_kv]); rows >= lengths are padding.
    o as in evict_layer."""
    pk = pool_kernel if method.pooled else 0
    total = budget * k.shape[1]
    if method.selection == "criticalkv":
        idx, lengths = _criticalkv_keep(k, v, q, total, method=method, scale=scale, wo=wo, floor=floor, o=o,
                                        sink=sink, recent=recent, pool_kernel=pk, pool=pool)
    else:
        idx, lengths = _ops().select_adaptive(layer_scores(k, v, q, method=method, scale=scale, o=o), total,
                                              floor=floor, sink=sink, recent=recent, pool_kernel=pk, pool=pool)
    _ops().compact_(k, v, idx, lengths)
    return idx, lengths


# --------------------------------------------------------------------------
# bookkeeping


_UNKNOWN = object()  # CacheState.left_padding not yet found for this forward call


class CacheState:
    """What obcache keeps on a cache (as `cache.obcache_state`).

    columns: tokens read so far per row, padding included (the next
        token's column; its RoPE position when no position_ids are given).
    real: int64 [B], the real tokens (not padding) each row has read: the
        RoPE position its next token must have.
    valid: bool [B, n], False for cache rows holding left padding (only in
        rows that had fewer real tokens than the budget).
    positions: layer -> int64 [B, H_kv, n], the column each cache row came
        from (what eviction kept).
    evicted: True once any row was dropped (masks and positions need fixing).
    peak: the longest KV any attention call of this cache has seen.
    lengths: the cache length after each forward call.
    """

    def __init__(self, batch, n, device):
        self.columns = n
        self.valid = torch.ones(batch, n, dtype=torch.bool, device=device)
        self.real = torch.full((batch,), n, dtype=torch.int64, device=device)
        self.positions: Dict[int, torch.Tensor] = {}
        self.evicted = False
        self.peak = n
        self.lengths: List[int] = []
        self.queries: Dict[int, torch.Tensor] = {}  # recent queries per layer (decode eviction)
        # layer -> (lengths int64 [B, H_kv], width): heads of different
        # lengths (AdaKV, LaProx); rows [lengths, width) of each head are
        # padding, masked in every later attention call.
        self.head_tails: Dict[int, tuple] = {}
        # layer -> float32 [B, H_kv, N] scores of this read, waiting for a
        # selection over every layer (LaProx).
        self.scores: Dict[int, torch.Tensor] = {}
        # per forward call
        self.mode, self.target, self.first_column = "read", None, n
        self.valid_full = self.valid
        self.valid_out = None
        self._start = _UNKNOWN

    def set_valid_full(self, valid_full: torch.Tensor) -> None:
        """Start a forward call whose cache rows plus new tokens are
        valid_full (bool [B, n + T])."""
        self.valid_full = valid_full
        self._start = _UNKNOWN

    def left_padding(self) -> Optional[torch.Tensor]:
        """int64 [B]: the first real column of each batch row in this
        forward call's valid_full; None without left padding. Found once a
        call (a reduction and, on a GPU, a sync), not once a layer."""
        if self._start is _UNKNOWN:
            start = (~self.valid_full).sum(1)
            self._start = start if bool(start.any()) else None
        return self._start


def state_of(cache) -> Optional[CacheState]:
    """The CacheState of a cache, None when obcache has not seen it."""
    return getattr(cache, STATE_ATTR, None)


def base_model(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM (`model.model` of LlamaForCausalLM),
    or `model` itself when it is one."""
    if hasattr(model, "layers"):
        return model
    for name in ("model", "base_model"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module) and sub is not model and hasattr(sub, "layers"):
            return sub
    raise NotImplementedError(
        f"obcache.hf does not support {type(model).__name__}: cannot find its decoder layers "
        "(expected `model.model.layers`, as in LlamaForCausalLM)"
    )


_UNHOOKED = ("this cache was evicted by obcache.hf.compress, whose hooks have been removed: its rows are no longer "
             "the positions transformers would give them, so reading more tokens into it without the hooks would "
             "attend at wrong positions. Read into it inside obcache.hf.compress(...) (the same method and budget "
             "continue it), or start a new cache")


def _evicted_cache_update(*args, **kwargs):
    """Put in place of the update of an evicted cache once its hooks are
    removed (Compression.remove): every attention layer appends through it,
    so the first layer refuses before anything is written."""
    raise RuntimeError(_UNHOOKED)


def _set_unhooked(cache, unhooked: bool) -> None:
    if unhooked:
        cache.update = _evicted_cache_update
    elif cache.__dict__.get("update") is _evicted_cache_update:
        del cache.update


def _no_beam_search(beam_idx):
    """Put on every cache the hooks follow, in place of its reorder_cache:
    the eviction state (kept positions, padding, queries) is per batch row
    and would not follow the beams."""
    raise NotImplementedError("obcache.hf does not support beam search (num_beams > 1): the cache's eviction state "
                              "would not follow the beams")


def _no_crop(max_length):
    """Put in place of crop, as _no_beam_search: assisted and prompt-lookup
    decoding crop the cache to drop rejected draft tokens, which the eviction
    state (and an evicted cache's rows) would not follow."""
    raise NotImplementedError("obcache.hf does not support assisted or prompt-lookup decoding (assistant_model, "
                              "prompt_lookup_num_tokens): they crop the cache to drop rejected tokens, which the "
                              "eviction state would not follow")


# The transformers releases obcache.hf runs under, as setup.py's "hf" extra.
TRANSFORMERS_MIN, TRANSFORMERS_BELOW = "5.24", "6"


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _check_transformers_version():
    """The hooks read transformers 5's cache layers (DynamicLayer,
    StaticLayer.cumulative_length) and how its generate passes positions:
    another release fails here by name, not deep in a hook. Under 5.17 the
    hooks found the cache layers empty (the tests fail there), hence the
    floor of setup.py's "hf" extra."""
    from packaging.version import Version

    version = _transformers_version()
    if not Version(TRANSFORMERS_MIN) <= Version(version) < Version(TRANSFORMERS_BELOW):
        raise ImportError(
            f"obcache.hf needs transformers >= {TRANSFORMERS_MIN}, < {TRANSFORMERS_BELOW} (tested with 5.24.0), "
            f"found {version}: pip install 'transformers>={TRANSFORMERS_MIN},<{TRANSFORMERS_BELOW}'"
        )


def _padding_mask_2d(am, st, T):
    """A 2D [B, read + T] padding mask (True = a real token) over the tokens
    read and the T new ones, from what the model was given: the 2D mask
    itself, or the last query row of a prepared 4D mask (generate builds one
    for a StaticCache; bool True or float 0 = attend), or of the
    full-attention entry of a dict of them (what generate gives models with
    layer_types, Qwen2/3). None once an eviction has run: a 4D mask's
    columns are then the cache's rows, not what was read (with per-head
    lengths not even where the new tokens sit), and tokens after the first
    read are never padding (generate extends the mask with ones)."""
    if isinstance(am, dict):
        am = am.get("full_attention", next(iter(am.values()), None))
    if am is None or am.dim() == 2:
        return am
    if st is not None and st.evicted:
        return None
    last = am[:, 0, -1, :(st.columns if st is not None else 0) + T]
    return last == 0 if last.is_floating_point() else last.bool()


_READ_TWICE = ("generate(all_ids, past_key_values=cache) cuts all_ids at the cache's (evicted) length and would "
               "read tokens a second time; to ask several questions of one compressed context use "
               "obcache.hf.compress_context(...).generate(question_ids)")


def _check_continues_what_was_read(st, am, pos, T):
    """After an eviction the cache is shorter than what was read, so a caller
    that hands the whole history again (transformers' generate(all_ids,
    past_key_values=cache) keeps the ids past the cache's length) would read
    tokens twice at wrong positions: a 2D mask must span every token read so
    far plus the new ones, and the new tokens' positions must follow each
    row's real tokens read."""
    if not st.evicted:
        return
    if isinstance(am, torch.Tensor) and am.dim() == 2 and am.shape[1] != st.columns + T:
        raise ValueError(
            f"this cache was evicted: it holds {st.valid.shape[1]} of the {st.columns} tokens read so far, so the "
            f"attention_mask of {T} new tokens must span {st.columns} + {T} = {st.columns + T} columns, got "
            f"{am.shape[1]}. " + _READ_TWICE)
    if isinstance(pos, torch.Tensor) and pos.dim() == 2:
        first = pos[:, 0].to(st.real.device).expand(st.real.shape[0])
        if not torch.equal(first, st.real):
            raise ValueError(
                f"this cache was evicted after reading {st.real.tolist()} real tokens per row, so the next token's "
                f"position_ids must be those, got {first.tolist()}. " + _READ_TWICE)


def _check_left_padded(last, new_valid):
    """Padding must come first in every row: right padding would be scored,
    kept and attended as if it were text. The cache's rows were checked when
    they were read (eviction keeps their order), so only the new tokens and
    the cache's last column (`last`, [B, 0 or 1]) before them are."""
    valid = torch.cat([last, new_valid], 1)
    after_real = (valid[:, 1:] < valid[:, :-1]).any(1)
    if bool(after_real.any()):
        row = int(after_real.nonzero()[0])
        raise ValueError(f"attention_mask row {row} has padding after a real token: obcache.hf needs left padding "
                         "(tokenizer.padding_side = 'left', as obcache.hf.load_model sets it)")


def _first_output(out):
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


# --------------------------------------------------------------------------
# the handle


class Compression:
    """Hooks that evict a model's KV cache; returned by `compress`.

    Use as a context manager, or call `remove()`. Attributes: method (a
    `obcache.methods.Method`), budget, window, sink, pool_kernel, pool,
    chunk_size, decode_budget, floor, and eviction_seconds: wall time spent so far
    in eviction (recomputing the scoring queries, scoring, selecting,
    compacting), so callers can report its share of prefill time.
    """

    def __init__(self, model, method, budget, *, window=32, sink=4, pool_kernel=7, pool="max", chunk_size=None,
                 decode_budget=None, evict_reads=True, floor=0.2):
        _check_transformers_version()
        self.method = _check_args(method, budget, window, sink, pool_kernel, pool, chunk_size, decode_budget, floor)
        self.budget, self.window, self.sink, self.floor = budget, window, sink, floor
        self.pool_kernel, self.pool = pool_kernel, pool
        self.chunk_size, self.decode_budget, self.evict_reads = chunk_size, decode_budget, evict_reads
        self.model, self.base = model, base_model(model)
        self.attention = attention_modules(self.base)
        if self.method.per_head_lengths:
            from obcache.hf.reconstruct import check_head_masking

            check_head_masking(model)  # now, not at the first eviction (checked there again: it can change)
        if getattr(self.base, "_obcache_compression", None) is not None:
            raise RuntimeError(f"{type(model).__name__} is already inside obcache.hf.compress; remove that first")
        self._params = list(inspect.signature(self.base.forward).parameters)
        self._outer = None  # (mode, read_total) while a chunked call runs its chunks
        self._prefix = {}  # id(kwargs) -> (kwargs, hidden states of earlier chunks)
        self._handles = []
        self._caches = weakref.WeakSet()  # every cache the hooks have kept a state on
        self._queries = self._outputs = None
        self.eviction_seconds = 0.0
        try:
            self._queries = QueryTap(self.attention)
            if self.method.score in O_SCORES:
                self._outputs = OutputTap(self.attention)
            self._handles.append(self.base.register_forward_pre_hook(self._before, with_kwargs=True))
            self._handles.append(self.base.register_forward_hook(self._after, with_kwargs=True))
            for attn in self.attention:
                self._handles.append(attn.register_forward_pre_hook(self._before_attention, with_kwargs=True))
                self._handles.append(attn.register_forward_hook(self._after_attention, with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        self.base._obcache_compression = self

    @property
    def recent(self) -> int:
        """Tokens always kept at the end: the window, or 0 (TOVA-style rows)."""
        return self.window if self.method.keep_recent else 0

    def remove(self) -> None:
        """Remove every hook (idempotent). A cache they evicted refuses to be
        read into afterwards, until hooks of compress() read into it again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for cache in list(self._caches):
            _set_unhooked(cache, state_of(cache).evicted)
        self._caches.clear()
        if self._queries is not None:
            self._queries.remove()
        if self._outputs is not None:
            self._outputs.remove()
        self._prefix.clear()
        if getattr(self.base, "_obcache_compression", None) is self:
            del self.base._obcache_compression

    def __enter__(self):
        if not self._handles:
            raise RuntimeError("this Compression's hooks were removed (it left a `with` block, or remove() was "
                               "called); call obcache.hf.compress(...) again for new ones")
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    # -- base model hooks --------------------------------------------------

    def _before(self, module, args, kwargs):
        kwargs = dict(kwargs)
        for name, a in zip(self._params, args):
            kwargs[name] = a
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids")
        if x is None:
            return None
        B, T = x.shape[0], x.shape[1]
        cache = cache_of(kwargs)
        if cache is None:
            use = kwargs.get("use_cache")
            if use is False or (use is None and not getattr(module.config, "use_cache", True)):
                return None
            from transformers import DynamicCache

            cache = DynamicCache(config=module.config)
            set_cache(kwargs, module, cache)
        st = state_of(cache)
        if st is None:
            n = cache.get_seq_length()
            st = CacheState(B, int(n), x.device)
            setattr(cache, STATE_ATTR, st)
            cache.reorder_cache = _no_beam_search
            cache.crop = _no_crop
        _set_unhooked(cache, False)
        self._caches.add(cache)
        if self._outer is None:
            mode, read_total = ("read" if T > 1 else "decode"), st.columns + T
            target = resolve_budget(self.budget, read_total)
            if mode == "read" and self.evict_reads and self.method.reconstructs and target < read_total:
                raise ValueError(
                    f"method={self.method.name!r} scores the context by reconstructing it (KVzip), which only "
                    "obcache.hf.compress_context runs; compress() around generate cannot evict with it"
                )
            # Before the first layer (or chunk) appends to the cache, which an error in a layer would leave
            # half-read. (decode_budget was checked when the hooks were made.)
            if (mode == "read" and self.evict_reads and self.method.evicts and st.valid.shape[1] + T > target
                    and target < self.sink + self.recent):
                raise ValueError(
                    f"budget={self.budget!r} gives {target} tokens per KV head, fewer than sink + window = "
                    f"{self.sink} + {self.recent}; lower sink or window, or raise the budget")
            if self.chunk_size is not None and T > self.chunk_size:
                self._run_chunks(module, kwargs, T, mode, read_total)
                T = kwargs["inputs_embeds" if kwargs.get("inputs_embeds") is not None else "input_ids"].shape[1]
        else:
            mode, read_total = self._outer
        self._prepare(st, kwargs, T, mode, read_total)
        return (), kwargs

    def _run_chunks(self, module, kwargs, T, mode, read_total):
        """Feed all but the last chunk through `module` (the hooks evict after
        each), then narrow `kwargs` to the last chunk; `_after` puts the
        earlier chunks' hidden states back in front."""
        for name in ("output_hidden_states", "output_attentions"):
            if kwargs.get(name) or (kwargs.get(name) is None and getattr(module.config, name, False)):
                raise NotImplementedError(f"chunk_size joins the chunks' last hidden states only; {name} would cover "
                                          "the last chunk alone")
        key = "inputs_embeds" if kwargs.get("inputs_embeds") is not None else "input_ids"
        x, am, pos = kwargs[key], kwargs.get("attention_mask"), kwargs.get("position_ids")
        am2d = _padding_mask_2d(am, state_of(cache_of(kwargs)), T)
        bounds = list(range(0, T, self.chunk_size)) + [T]
        pieces = []

        def narrow(s, e):
            sub = dict(kwargs)
            sub[key] = x[:, s:e]
            sub["attention_mask"] = None if am2d is None else am2d[:, : am2d.shape[1] - T + e]
            if pos is not None:
                sub["position_ids"] = pos[..., s:e]
            return sub

        self._outer = (mode, read_total)
        try:
            for s, e in zip(bounds[:-2], bounds[1:-1]):
                pieces.append(_first_output(module(**narrow(s, e))))
        finally:
            self._outer = None
        kwargs.update(narrow(bounds[-2], T))
        self._prefix[id(kwargs)] = (kwargs, pieces)

    def _prepare(self, st, kwargs, T, mode, read_total):
        am = kwargs.get("attention_mask")
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs["input_ids"]
        _check_continues_what_was_read(st, am, kwargs.get("position_ids"), T)
        am2d = _padding_mask_2d(am, st, T)
        if am2d is not None:
            new_valid = am2d[:, am2d.shape[1] - T :].to(device=x.device, dtype=torch.bool)
        else:
            new_valid = torch.ones(x.shape[0], T, dtype=torch.bool, device=x.device)
        cached = st.valid.to(x.device)
        _check_left_padded(cached[:, -1:], new_valid)
        st.set_valid_full(torch.cat([cached, new_valid], 1))
        if st.evicted:
            # The cache is shorter than what was read: give the true positions
            # (what the model would use with the full cache) and a padding
            # mask laid out like the compacted cache.
            if kwargs.get("position_ids") is None:
                kwargs["position_ids"] = (st.columns + torch.arange(T, device=x.device)).unsqueeze(0)
            kwargs["attention_mask"] = None if bool(st.valid_full.all()) else st.valid_full
        st.valid_out = None
        st.scores.clear()  # LaProx scores of an earlier call that did not finish
        st.mode, st.first_column = mode, st.columns
        if mode == "read":
            st.target = resolve_budget(self.budget, read_total) if self.evict_reads else None
        else:
            st.target = self.decode_budget

    def _after(self, module, args, kwargs, output):
        cache = cache_of(kwargs)
        st = state_of(cache) if cache is not None else None
        if st is not None and st.scores:
            self._evict_global(cache, st)
        if st is not None:
            x = kwargs.get("inputs_embeds")
            if x is None:
                x = kwargs["input_ids"]
            st.columns += x.shape[1]
            st.real = st.real.to(st.valid_full.device) + st.valid_full[:, st.valid_full.shape[1] - x.shape[1]:].sum(1)
            st.valid = st.valid_out if st.valid_out is not None else st.valid_full
            st.lengths.append(int(st.valid.shape[1]))
        entry = self._prefix.pop(id(kwargs), None)
        if entry is not None and entry[0] is kwargs:
            h = torch.cat(entry[1] + [_first_output(output)], 1)
            if hasattr(output, "last_hidden_state"):
                output.last_hidden_state = h
            else:
                output = (h, *output[1:])
        return output

    def _evict_global(self, cache, st):
        """LaProx: one top-K over the scores every layer left in st.scores,
        then compact every layer (padded to its longest head)."""
        t0 = _now(st.valid.device)
        scores = [st.scores.pop(li) for li in range(len(self.attention))]
        kept = laprox_select(scores, st.target, sink=self.sink, recent=self.recent,
                             pool_kernel=self.pool_kernel if self.method.pooled else 0,
                             pool=self.method.pool or self.pool)
        for li, (idx, lengths) in enumerate(kept):
            layer = cache.layers[li]
            k, v, _ = _layer_kv(layer, f"(layer {li} of {type(self.model).__name__})")
            _ops().compact_(k, v, idx, lengths)
            self._keep(st, layer, li, st.positions[li], idx, lengths)
        self.eviction_seconds += _now(st.valid.device) - t0

    @staticmethod
    def _keep(st, layer, li, positions, idx, lengths):
        """Bookkeeping after a layer was compacted to heads of `lengths` rows."""
        width = idx.shape[-1]
        _set_length(layer, width)
        st.positions[li] = positions.gather(-1, idx.clamp_min(0)).masked_fill(idx < 0, -1)
        st.head_tails[li] = (lengths, width)
        st.valid_out = torch.ones(idx.shape[0], width, dtype=torch.bool, device=idx.device)
        st.evicted = True

    # -- attention hooks -----------------------------------------------------

    def _before_attention(self, module, args, kwargs):
        """Heads of different lengths (AdaKV): hand this layer's attention a
        per-head mask that hides each head's padded tail."""
        cache = cache_of(kwargs)
        st = state_of(cache) if cache is not None else None
        if st is None or module.layer_idx not in st.head_tails:
            return None
        from obcache.hf.reconstruct import check_head_masking, head_mask

        check_head_masking(self.model)
        lengths, width = st.head_tails[module.layer_idx]
        hs = kwargs.get("hidden_states", args[0] if args else None)
        layer = cache.layers[module.layer_idx]
        _, _, n = _layer_kv(layer, f"(layer {module.layer_idx} of {type(self.model).__name__})")
        eager = getattr(self.model.config, "_attn_implementation", "eager") == "eager"
        mask = head_mask(lengths.to(hs.device), width, n, hs.shape[1], module.num_key_value_groups,
                         additive_dtype=hs.dtype if eager else None)
        rows = layer.keys.shape[-2]  # a StaticLayer's attention reads all its preallocated rows
        if rows > mask.shape[-1]:
            fill = torch.finfo(mask.dtype).min if mask.is_floating_point() else False
            mask = torch.nn.functional.pad(mask, (0, rows - mask.shape[-1]), value=fill)
        kwargs = dict(kwargs)
        if "attention_mask" not in kwargs and len(args) > 2:
            args = (*args[:2], mask, *args[3:])
        else:
            kwargs["attention_mask"] = mask
        return args, kwargs

    def _after_attention(self, module, args, kwargs, output):
        projected = self._queries.take(module)  # this call's q_proj output
        attended = self._outputs.take(module) if self._outputs is not None else None  # its o_proj input
        cache = cache_of(kwargs)
        st = state_of(cache) if cache is not None else None
        if st is None:
            return None
        hs = kwargs.get("hidden_states", args[0] if args else None)
        pe = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        li = module.layer_idx
        layer = cache.layers[li]
        where = f"(layer {li} of {type(self.model).__name__})"
        k, v, n = _layer_kv(layer, where)
        T = hs.shape[1]
        window = getattr(layer, "sliding_window", None)
        if window is not None and not self.method.evicts:
            return None  # the layer drops rows itself; `full` keeps what it keeps, and no positions are needed
        if window is not None and st.first_column + T >= window:
            raise NotImplementedError(
                f"{type(self.model).__name__} uses sliding-window attention (sliding_window={window}); obcache.hf "
                f"evicts only while fewer than sliding_window tokens were read, got {st.first_column + T}"
            )
        st.peak = max(st.peak, n)
        with torch.no_grad():
            old = st.positions.get(li)
            if old is None:
                old = torch.arange(n - T, device=k.device).expand(k.shape[0], k.shape[1], n - T)
            new = (st.first_column + torch.arange(T, device=k.device)).expand(k.shape[0], k.shape[1], T)
            positions = torch.cat([old, new], -1)
            if self.decode_budget is not None:
                self._remember_queries(st, module, hs, pe, projected)
            target = st.target
            valid = st.valid_full
            if not self.method.evicts or target is None or n <= target:
                st.positions[li] = positions
                return None
            t0 = _now(k.device)
            q = self._scoring_queries(st, module, hs, pe, projected)
            # The window's attention output, when q are this call's last rows.
            o = None if st.mode == "decode" else OutputTap.last_rows(attended, q)
            start = st.left_padding()
            wo = module.o_proj.weight if self.method.needs_wo else None
            pool = self.method.pool or self.pool
            if self.method.per_head_lengths:
                self._check_per_head(st, li, start)
                if self.method.selection == "global":  # scored now, selected over every layer in _after
                    st.scores[li] = layer_scores(k, v, q, method=self.method, scale=module.scaling, wo=wo, o=o)
                    st.positions[li] = positions
                else:
                    idx, lengths = evict_layer_adaptive(k, v, q, target, method=self.method, sink=self.sink,
                                                        recent=self.recent, pool_kernel=self.pool_kernel, pool=pool,
                                                        scale=module.scaling, floor=self.floor, wo=wo, o=o)
                    self._keep(st, layer, li, positions, idx, lengths)
                self.eviction_seconds += _now(k.device) - t0
                return None
            idx = evict_layer(k, v, q, target, method=self.method, sink=self.sink, recent=self.recent,
                              pool_kernel=self.pool_kernel, pool=pool, scale=module.scaling, start=start, wo=wo,
                              o=o)
            _set_length(layer, idx.shape[-1])
            st.positions[li] = positions.gather(-1, idx)
            st.valid_out = valid.gather(1, idx[:, 0])
            st.evicted = True
            self.eviction_seconds += _now(k.device) - t0
        return None

    def _check_per_head(self, st, li, start):
        """The cases heads of different lengths cannot (yet) handle."""
        from obcache.hf.reconstruct import check_head_masking

        check_head_masking(self.model)
        name = self.method.name
        if start is not None:
            raise NotImplementedError(
                f"method={name!r} (heads of different lengths) does not support left-padded batches; "
                "compress each prompt on its own (B=1) or pass rows of equal length"
            )
        if li in st.head_tails:
            raise NotImplementedError(
                f"method={name!r}: layer {li} already holds heads of different lengths; a cache is evicted with it "
                "once (the first read); later reads that exceed the budget are not supported"
            )

    def _scoring_queries(self, st, module, hs, pe, projected):
        """[B, H_q, W, D]: the read's last `window` queries (all of them for
        H2O-style rows, the last one for TOVA-style rows); while decoding, the
        remembered most recent ones."""
        if self.method.score is None:
            return None
        if st.mode == "decode":
            return st.queries[module.layer_idx]
        T = hs.shape[1]
        return recompute_queries(module, hs, pe, last={"last": 1, "prompt": T}.get(self.method.queries, self.window),
                                 projected=projected)

    def _remember_queries(self, st, module, hs, pe, projected):
        keep = 1 if self.method.queries == "last" else self.window
        q = recompute_queries(module, hs, pe, last=keep, projected=projected)
        old = st.queries.get(module.layer_idx)
        if old is not None:
            q = torch.cat([old, q], 2)
        st.queries[module.layer_idx] = q[:, :, -keep:]


def compress(
    model: nn.Module,
    method: str,
    budget: Union[int, float],
    *,
    window: int = 32,
    sink: int = 4,
    pool_kernel: int = 7,
    pool: str = "max",
    chunk_size: Optional[int] = None,
    decode_budget: Optional[int] = None,
    floor: float = 0.2,
) -> Compression:
    """Evict the KV cache of `model` while the returned handle is active.

    ```python
    with obcache.hf.compress(model, method="snapkv+obc-key", budget=0.1):
        out = model.generate(**inputs, max_new_tokens=32)
    ```
    Without `with`, the hooks stay until `handle.remove()`.

    Every forward call that reads more than one token (a prompt, a chunk)
    runs exactly, then each layer's cache is evicted to the budget using that
    layer's recomputed queries (`obcache.methods.METHODS` says which). Single
    token calls (decoding) evict only with `decode_budget`. Positions stay
    true: the next token's RoPE position is the number of tokens read.

    Args:
        model: a transformers causal LM (or its base model) whose attention
            class is LlamaAttention, MistralAttention, Qwen2Attention or
            Qwen3Attention; eager or SDPA attention. Other models raise
            NotImplementedError naming their class.
        method: a name of `obcache.hf.methods()` (e.g. "snapkv+obc-key").
        budget: tokens kept per KV head after a read: a float in (0, 1] is a
            fraction of the tokens read so far (padded batch width), an int
            is a count. A budget >= the prompt evicts nothing. A read the
            budget would evict below sink + window tokens (36 by default)
            raises ValueError before anything is read (at budget=0.1, any
            prompt under ~355 tokens): lower sink or window, or raise the
            budget.
        window: scoring queries (the last `window` tokens of the read), also
            the number of most recent tokens always kept.
        sink: first tokens always kept.
        pool_kernel, pool: token pooling of the scores (methods marked pooled).
        chunk_size: feed long inputs in chunks of this many tokens, evicting
            after each, so the cache never exceeds budget + chunk_size.
        decode_budget: during decoding, keep at most this many tokens per KV
            head (scores recomputed each step from the last `window` queries).
        floor: AdaKV rows (`adakv+...`): every head keeps at least this
            fraction of the even share `budget` (and its sink and window).

    Heads of different lengths (AdaKV rows, `laprox`): each layer is padded
    to its longest head and the padded tails are masked in every later
    attention call (SDPA or eager attention); the prompt is evicted once
    (no chunk_size, no decode_budget, no left padding).

    Caches: DynamicCache (the default) and StaticCache (compacted inside its
    preallocated tensors). Batches may be left-padded: padding is never kept
    when a row has more real tokens than the budget, and each row is scored
    on its own tokens. Inference only (eviction runs under no_grad).
    """
    return Compression(model, method, budget, window=window, sink=sink, pool_kernel=pool_kernel, pool=pool,
                       chunk_size=chunk_size, decode_budget=decode_budget, floor=floor)
