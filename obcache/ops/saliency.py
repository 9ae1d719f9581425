"""torch.ops.obcache.saliency: one importance score per cached token.

Specification: obcache.reference.saliency (the formulas of shared/DESIGN.md
section 3). Kernels: a fused two-pass CPU kernel (bounded workspace per
(batch, KV head)) and a two-pass CUDA kernel; neither forms [B, H_q, W, N].
"""
from typing import Optional

import torch

from obcache.ops import fake_checks

__all__ = ["SCORES", "WO_SCORES", "O_SCORES", "GROUP_REDUCES", "QUERY_REDUCES", "saliency"]

#: Score names, in the order of DESIGN.md section 3.
SCORES = ("attn", "tova", "vatp", "value", "key", "joint", "loo")
#: Scores that also need the output projection's weight (`wo`).
WO_SCORES = ("critical", "laprox")
#: Scores that read the window's attention output O (the `o` a caller may give).
O_SCORES = ("key", "joint", "loo")
#: How the G query heads sharing a KV head are combined.
GROUP_REDUCES = ("sum", "mean", "max")
#: How the W window queries are combined (per query head, before the group).
QUERY_REDUCES = ("sum", "max")


def saliency(
    k: torch.Tensor,
    v: torch.Tensor,
    q_window: torch.Tensor,
    score: str = "joint",
    *,
    group_reduce: str = "sum",
    scale: Optional[float] = None,
    causal: bool = True,
    query_reduce: str = "sum",
    wo: Optional[torch.Tensor] = None,
    o: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Saliency of every cached token, per (batch, KV head).

    Args:
        k, v: [B, H_kv, N, D] cached keys (after RoPE) and values; float32,
            float16 or bfloat16 (float64 too on CPU). The last dim must be
            contiguous; other strides are arbitrary (a narrowed view of a
            preallocated cache is read in place).
        q_window: [B, H_q, W, D] queries of the last W tokens (1 <= W <= N),
            H_q a multiple of H_kv (query head j reads KV head j // G,
            G = H_q // H_kv); same dtype and device as k.
        score: one of SCORES: "attn" (sum_i A), "tova" (A of the last query),
            "vatp" (A ||v||_1), "value" (A^2 ||v||^2), "key"
            ((A Z)^2 ||v - o||^2), "joint" (value + key + cross term), "loo"
            (A / max(1 - A, 1e-4) ||v - o||, exact leave-one-out change).
        group_reduce: "sum" | "mean" | "max" over the G query heads.
        scale: logit scale; None means 1 / sqrt(D).
        causal: window query i sits at position N - W + i and sees keys
            0 .. N - W + i; masked pairs contribute 0. False: every key.
        query_reduce: "sum" | "max" over the W window queries ("tova" always
            reads the last query only; "laprox" needs "sum").
        wo: [hidden, H_q * D] o_proj weight (nn.Linear layout, same dtype and
            device as k), required by the WO_SCORES and rejected by the others:
            "critical" (CriticalKV): (attn score + 1e-4) * mean over the group
            of ||v W_o^g||_1; "laprox" (LaProx): per query head
            ||A_{g,:,p}||_2 over the window * ||v W_o^g||_2, then group_reduce
            (LaProx itself averages: group_reduce="mean"). W_o^g is
            wo[:, g*D:(g+1)*D].T; see projected_value_norm.
        o: optional [B, H_q, W, D] attention output of the window queries,
            softmax(Z) V over this cache (same dtype and device as q_window,
            last dim contiguous), for a caller that already has it (a model's
            attention has just computed it): "key", "joint" and "loo" read it
            instead of computing it, a third fewer FLOPs for "key"; the other
            scores check and ignore it. The scores are those of this O: an O
            that is not this cache's attention output gives other scores.

    Returns:
        [B, H_kv, N] float32 (float64 for float64 inputs), on k's device.
        Accumulation is float32 for 16/32-bit inputs, float64 for float64.

    On CUDA: D <= 256, B * H_kv <= 65535 (B * H_q for the wo scores) and
    G * W <= 1,048,560 query rows per KV head (G for "tova"); larger inputs
    raise, naming the limit.
    """
    return torch.ops.obcache.saliency(
        k, v, q_window, score, group_reduce=group_reduce, scale=scale, causal=causal, query_reduce=query_reduce,
        wo=wo, o=o,
    )


@torch.library.register_fake("obcache::saliency")
def _saliency_fake(k, v, q_window, score, *, group_reduce="sum", scale=None, causal=True, query_reduce="sum",
                   wo=None, o=None):
    torch._check(wo is not None or score not in WO_SCORES,
                 lambda: f"score '{score}' needs wo, the o_proj weight [hidden, H_q * D]; got wo=None")
    fake_checks.one_of(score, "score", SCORES + WO_SCORES)
    torch._check(wo is None or score in WO_SCORES,
                 lambda: f"wo is not used by score '{score}' (only by 'critical' and 'laprox'); pass wo=None")
    fake_checks.one_of(group_reduce, "group_reduce", GROUP_REDUCES)
    fake_checks.one_of(query_reduce, "query_reduce", QUERY_REDUCES)
    fake_checks.cache_and_window(k, v, q_window, scale, o)
    if wo is not None:
        fake_checks.projected_value(v, wo, 1 if score == "critical" else 2)
        Hq, D = q_window.shape[1], k.shape[3]
        torch._check(wo.shape[1] == Hq * D, lambda: f"wo must have H_q * D = {Hq} * {D} = {Hq * D} columns "
                     f"(q_window's heads times the head dim), got {wo.shape[1]} (shape {tuple(wo.shape)})")
        torch._check(score == "critical" or query_reduce == "sum",
                     lambda: "score 'laprox' reduces the window queries by an L2 norm; "
                     f"query_reduce must be 'sum', got '{query_reduce}'")
    out_dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    return k.new_empty((k.shape[0], k.shape[1], k.shape[2]), dtype=out_dtype)
