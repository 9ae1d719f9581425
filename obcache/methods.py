"""The method table: every eviction method obcache knows, one row each.

The transformers integration (`obcache.hf`), the command line and the docs
all read `METHODS`; adding a method is adding a row here.

A row says
- `score`: the saliency score of `torch.ops.obcache.saliency` (DESIGN.md
  section 3), or None for methods that need no score (`full`, `streaming`);
- `queries`: which queries score the cache --
  "window" (the last `window` tokens of what was just read, SnapKV),
  "last" (the last token only, TOVA),
  "prompt" (every token of what was just read: H2O's attention accumulated
  over the prompt, a sum over all its queries),
  "reconstruction" (KVzip: after the context, the model re-reads it behind a
  "Repeat the previous context:" prompt; those queries score the context's
  keys; only `obcache.hf.compress_context` runs this pass), or None;
- `pooled`: whether scores are pooled along tokens (`pool_kernel`, `pool`)
  before the top-k (SnapKV's clustering);
- `keep_recent`: whether the last `window` tokens are always kept (the
  observation window itself); when False only the sink is forced;
- `description`: one line for `obcache.hf.methods()` and the CLI;
- `query_reduce`: how the scores of the scoring queries combine, "sum" or
  "max" (KVzip's max over the reconstruction queries); None means "sum";
- `group_reduce`: how the G query heads of a KV head combine ("sum", "mean",
  "max"); None means "sum";
- `adaptive`: AdaKV head budgets (one top-k over the heads of a layer, heads
  keep different numbers of tokens; `select_adaptive`);
- `selection`: how the kept tokens are chosen from the scores; None is one
  top-k of `score` (per head, or per layer when `adaptive`);
  "criticalkv" is CriticalKV's two-stage selection (`score` is the base
  score: stage 1 keeps the top half of the budget by it, stage 2 fills the
  rest by (base + 1e-4) * the projected value norm ||v W_o||_1, which needs
  the layer's o_proj weight); "global" is LaProx's one top-K over every
  layer and head of the model (per-layer normalised scores; heads and layers
  keep different numbers of tokens);
- `pool`: the row's own pooling ("max" or "avg") instead of the caller's
  `pool` option (LaProx pools by average), None = the caller's.

The last five default to None / False, so a row that does not set them reads
exactly as before.

Every method also keeps the first `sink` tokens (attention sinks).
"""
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["Method", "METHODS", "get_method", "methods"]


@dataclass(frozen=True)
class Method:
    """One row of the method table (see the module docstring)."""

    name: str
    score: Optional[str]
    queries: Optional[str]
    pooled: bool
    keep_recent: bool
    description: str
    query_reduce: Optional[str] = None
    group_reduce: Optional[str] = None
    adaptive: bool = False
    selection: Optional[str] = None
    pool: Optional[str] = None

    @property
    def evicts(self) -> bool:
        """False for `full` (the cache is never touched)."""
        return self.name != "full"

    @property
    def needs_wo(self) -> bool:
        """True for rows that read the layer's output projection (o_proj)."""
        return self.selection == "criticalkv" or self.score == "laprox"

    @property
    def per_head_lengths(self) -> bool:
        """True when heads end with different numbers of tokens (AdaKV,
        LaProx): the cache is padded per layer and each head's tail masked;
        such a cache is evicted once (no chunked prefill, no decode eviction)."""
        return self.adaptive or self.selection == "global"

    @property
    def reconstructs(self) -> bool:
        """True for rows scored by the reconstruction pass (compress_context only)."""
        return self.queries == "reconstruction"


def _row(name, score, queries, pooled, keep_recent, description, **extra):
    return name, Method(name, score, queries, pooled, keep_recent, description, **extra)


def _kvzip_rows():
    """KVzip and the OBC scores computed from its reconstruction queries, each
    with uniform and AdaKV head budgets. KVzip's own score is the max of the
    attention over every reconstruction query and every query head of the
    group; the OBC rows sum over the queries (as the window rows do) and pool."""
    base = [
        ("kvzip", "attn", False, "max", "max", "KVzip: max attention from the context-reconstruction queries"),
        ("kvzip+obc-key", "key", True, "sum", None,
         "OBCache key score summed over the context-reconstruction queries, pooled"),
        ("kvzip+obc-joint", "joint", True, "sum", None,
         "OBCache joint score summed over the context-reconstruction queries, pooled"),
        ("kvzip+loo", "loo", True, "sum", None,
         "exact leave-one-out output change summed over the context-reconstruction queries, pooled"),
    ]
    rows = []
    for adaptive in (False, True):
        for name, score, pooled, qr, gr, desc in base:
            if adaptive:
                name, desc = "adakv+" + name, desc + ", AdaKV head budgets"
            rows.append(_row(name, score, "reconstruction", pooled, False, desc, query_reduce=qr, group_reduce=gr,
                             adaptive=adaptive))
    return rows


def _policy_rows():
    """CriticalKV, AdaKV and LaProx rows scored by the SnapKV window (prefill)."""
    crit = "CriticalKV two-stage selection: half the budget by the {}, the rest by it times ||v W_o||_1, pooled"
    return [
        _row("criticalkv", "attn", "window", True, True, crit.format("SnapKV attention"), selection="criticalkv"),
        _row("criticalkv+obc-key", "key", "window", True, True, crit.format("OBCache key score"),
             selection="criticalkv"),
        _row("adakv+snapkv", "attn", "window", True, True, "SnapKV attention, pooled, AdaKV head budgets",
             adaptive=True),
        _row("adakv+obc-key", "key", "window", True, True, "OBCache key score from the SnapKV window, pooled, "
             "AdaKV head budgets", adaptive=True),
        _row("adakv+criticalkv", "attn", "window", True, True,
             "CriticalKV two-stage selection over all heads of a layer, AdaKV head budgets",
             selection="criticalkv", adaptive=True),
        _row("laprox", "laprox", "window", True, True,
             "LaProx: ||A||_2 ||v W_o||_2 per layer-normalised, avg-pooled, one top-K over all layers and heads",
             group_reduce="mean", selection="global", pool="avg"),
    ]


METHODS: Dict[str, Method] = dict(
    [
        _row("full", None, None, False, False, "no eviction: the whole cache (reference)"),
        _row("streaming", None, None, False, True, "StreamingLLM: the first `sink` tokens and the most recent ones"),
        _row("h2o", "attn", "prompt", False, True, "H2O: attention accumulated over every prompt query"),
        _row("tova", "tova", "last", False, False, "TOVA: attention of the last query"),
        _row("snapkv", "attn", "window", True, True, "SnapKV: attention of the last `window` queries, pooled"),
        _row("vatp", "vatp", "window", True, True, "VATP: SnapKV attention times the value's L1 norm"),
        _row("snapkv+obc-value", "value", "window", True, True,
             "OBCache value score (A^2 ||v||^2) from the SnapKV window, pooled"),
        _row("snapkv+obc-key", "key", "window", True, True,
             "OBCache key score ((A Z)^2 ||v - o||^2) from the SnapKV window, pooled"),
        _row("snapkv+obc-joint", "joint", "window", True, True,
             "OBCache joint score (value + key + cross term) from the SnapKV window, pooled"),
        _row("snapkv+loo", "loo", "window", True, True,
             "exact leave-one-out output change A/(1-A) ||v - o|| from the SnapKV window, pooled"),
        _row("tova+obc-key", "key", "last", False, False, "OBCache key score from the last query (TOVA's queries)"),
        _row("h2o+obc-key", "key", "prompt", False, True, "OBCache key score accumulated over every prompt query"),
        *_policy_rows(),
        *_kvzip_rows(),
    ]
)


ATTENTION_SCORES = ("attn", "tova")  # the attention-only scores a pipeline starts from
OBC_SCORES = ("value", "key", "joint", "loo")  # the output-error scores that replace them


def base_of(method: str, methods) -> Optional[str]:
    """The attention-only method of the same pipeline among `methods`
    (snapkv+obc-key -> snapkv, tova+obc-key -> tova), or None: the row of
    obcache.methods.METHODS with an attention score and the same queries,
    pooling, recent window, head budgets and selection. Only rows with an
    OBC score have a base (vatp, an attention-only baseline itself, has none)."""
    row = METHODS.get(method)
    if row is None or row.score not in OBC_SCORES:
        return None
    same = ("queries", "pooled", "keep_recent", "adaptive", "selection")
    for cand in methods:
        c = METHODS.get(cand)
        if c is not None and c.score in ATTENTION_SCORES and all(getattr(c, f) == getattr(row, f) for f in same):
            return cand
    return None


def get_method(name: str) -> Method:
    """The row of `name`; ValueError naming the value and the valid names."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}") from None


def methods() -> Dict[str, str]:
    """dict name -> one-line description, in table order (`full` first)."""
    return {name: m.description for name, m in METHODS.items()}
