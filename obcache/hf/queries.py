"""Recomputing an attention layer's queries from its input, per architecture.

The attention modules of transformers do not return their queries, and
obcache does not patch model code, so the integration recomputes the few it
needs (the scoring window) from what the attention module received: its
input `hidden_states` (already normalised by the decoder layer) and the
`position_embeddings` (cos, sin) the model computed for the true positions.
That is q_proj, the per-head q_norm where the model has one (Qwen3), and the
model's own `apply_rotary_pos_emb` -- the same operations, in the same
order, as the module's forward. q_proj's output itself need not be
recomputed: a `QueryTap` (a forward hook on each q_proj) keeps the one the
layer just computed (on SmolLM2-135M at 2k tokens, recomputing it was ~0.2%
of the prefill, a tenth of what eviction may cost).

On CPU the rotation is one call, torch.ops.obcache._rope_rotate_half,
instead of the model's function (~30 small ATen calls, ~0.3 ms a layer
inside a running prefill): used for a rope function, dtype and head dim
only once a probe has shown the two agree to the bit, so the queries stay
the model's.
"""
import sys
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from obcache.hf.taps import ProjectionTap
from obcache.ops.rope import rope_rotate_half

__all__ = ["SUPPORTED_ATTENTION", "check_supported", "attention_modules", "recompute_queries", "QueryTap"]

# transformers' attention classes whose query path is q_proj -> [q_norm] -> RoPE.
SUPPORTED_ATTENTION = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention")


def check_supported(attn: nn.Module, model: nn.Module) -> None:
    """Raise NotImplementedError naming the model and attention class unless
    `attn` is one whose queries this module knows how to recompute."""
    name = type(attn).__name__
    if name not in SUPPORTED_ATTENTION:
        raise NotImplementedError(
            f"obcache.hf does not support {type(model).__name__} (attention class {name}); "
            f"supported attention classes: {', '.join(SUPPORTED_ATTENTION)}"
        )
    for attr in ("q_proj", "head_dim", "layer_idx", "scaling"):
        if not hasattr(attn, attr):
            raise NotImplementedError(f"{name} of {type(model).__name__} has no `{attr}`; this transformers "
                                      "version's attention module is not the one obcache.hf was written for")


def attention_modules(base: nn.Module):
    """The self-attention module of each decoder layer of a base model
    (LlamaModel, Qwen3Model, ...), in layer order. NotImplementedError naming
    the class when the model has no `layers[i].self_attn`."""
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise NotImplementedError(
            f"obcache.hf does not support {type(base).__name__}: expected decoder layers with `self_attn` "
            f"(supported attention classes: {', '.join(SUPPORTED_ATTENTION)})"
        )
    mods = [layer.self_attn for layer in layers]
    for m in mods:
        check_supported(m, base)
    return mods


class QueryTap(ProjectionTap):
    """Keeps the output of each attention module's q_proj from its latest
    call, for `recompute_queries`: the caller `take`s it ([B, T, H_q *
    head_dim]) in the attention module's own forward hook, so it is the
    projection of that call's hidden_states. `remove` drops the hooks."""

    def __init__(self, attention):
        super().__init__(attention, "q_proj", "output")


def recompute_queries(
    attn: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: Tuple[torch.Tensor, torch.Tensor],
    last: Optional[int] = None,
    projected: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Post-RoPE queries of the last `last` tokens (all when None) exactly as
    `attn.forward` computes them.

    Args:
        attn: a supported attention module (see SUPPORTED_ATTENTION).
        hidden_states: [B, T, hidden], the attention module's input.
        position_embeddings: (cos, sin), each [B or 1, T, head_dim], the ones
            the module received (true positions).
        last: number of trailing tokens wanted, 1 <= last; clipped to T.
        projected: attn.q_proj(hidden_states) when the caller has it
            (QueryTap.take); q_proj runs again when None or of another
            [B, T].

    Returns:
        [B, H_q, T', head_dim] in the model dtype, T' = min(last, T) or T.
    """
    B, T = hidden_states.shape[:2]
    t = T if last is None else min(int(last), T)
    cos, sin = position_embeddings
    cos, sin = cos[:, -t:], sin[:, -t:]
    if projected is not None and projected.shape[:2] == hidden_states.shape[:2]:
        q = projected[:, T - t:]
    else:
        q = attn.q_proj(hidden_states[:, T - t:])
    q = q.view(B, t, -1, attn.head_dim)
    q_norm = getattr(attn, "q_norm", None)
    if q_norm is not None:
        q = q_norm(q)
    q = q.transpose(1, 2)
    rope = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if rope is None:
        raise NotImplementedError(f"cannot find apply_rotary_pos_emb next to {type(attn).__name__}")
    if _rotates_half(rope, q, cos, sin):
        return rope_rotate_half(q, cos, sin)
    q, _ = rope(q, q[:, :1], cos, sin)
    return q


# (rope function, dtype, head dim) -> whether it computes
# q * cos + rotate_half(q) * sin with ATen's roundings, i.e.
# _rope_rotate_half's numbers to the bit.
_ROTATE_HALF: Dict[Tuple[Callable, torch.dtype, int], bool] = {}


def _rotates_half(rope: Callable, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether _rope_rotate_half may stand in for `rope` on these arguments:
    CPU tensors of one dtype in the shapes it takes (q [B, H, t, D], cos and
    sin [B or 1, t, D]), and `rope` gave its numbers on a probe of that dtype
    and head dim (random q, cos, sin: two heads, three positions)."""
    B, _, t, D = q.shape if q.dim() == 4 else (0, 0, 0, 0)
    if not (q.device.type == cos.device.type == sin.device.type == "cpu" and q.dtype == cos.dtype == sin.dtype
            and D % 2 == 0 and cos.dim() == 3 and cos.shape == sin.shape and cos.shape[0] in (1, B)
            and cos.shape[1:] == (t, D)):
        return False
    key = (rope, q.dtype, D)
    if key not in _ROTATE_HALF:
        gen = torch.Generator().manual_seed(0)
        pq, pc, ps = (torch.randn(shape, generator=gen).to(q.dtype) for shape in ((1, 2, 3, D), (1, 3, D), (1, 3, D)))
        want, _ = rope(pq, pq[:, :1], pc, ps)
        _ROTATE_HALF[key] = want.shape == pq.shape and torch.equal(rope_rotate_half(pq, pc, ps), want)
    return _ROTATE_HALF[key]
