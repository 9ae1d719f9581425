"""CriticalKV two-stage selection (shared/DESIGN.md section 3).

With budget b per (batch, KV head): stage 1 keeps the top floor(alpha * b)
tokens by the base score s (SnapKV's `attn` score); stage 2 fills the other
b - floor(alpha * b) places with the best remaining tokens by the critical
score (s + 1e-4) * mean over the group of ||v_p W_o^g||_1 (the `critical`
score of obcache.saliency).

Why two stages: for one query head with attention A and kept set S of
attention mass sigma = sum_{p in S} A_p, the output error of keeping S (and
renormalising its attention by 1 / sigma) obeys

    ||o - o_hat||_1 <= C - (2 - 1/sigma) * sum_{p in S} A_p ||v_p W_o||_1,
    C = sum_p A_p ||v_p W_o||_1,

so once sigma >= 0.5 the bound falls as the kept A ||v W_o||_1 grows, which
stage 2 maximises; stage 1 keeps the attention mass that makes sigma large.
"""
import torch

__all__ = ["criticalkv_select", "output_error_bound"]


def _top(scores, k, exclude=None):
    """Indices of the k largest scores per row (ties to the lower index; NaN
    ranks below every number), optionally never picking `exclude` (bool)."""
    s = torch.nan_to_num(scores.to(torch.float64), nan=float("-inf"))
    if exclude is not None:
        s = s.masked_fill(exclude, float("-inf"))
    N = s.shape[-1]
    # A stable descending sort gives ties to the lower index; excluded entries
    # go after every candidate (-inf ties are broken by the exclusion key).
    order = torch.argsort(s, dim=-1, descending=True, stable=True)
    if exclude is not None:
        ex = exclude.gather(-1, order).to(torch.int8)
        order = order.gather(-1, torch.argsort(ex, dim=-1, stable=True))
    return order[..., : min(k, N)]


def criticalkv_select(base, critical, budget, *, alpha=0.5):
    """Tokens kept by CriticalKV's two-stage selection, per (batch, head).

    Args:
        base: [B, H, N] base scores (e.g. obcache.saliency(..., "attn")).
        critical: [B, H, N] critical scores (obcache.saliency(..., "critical",
            wo=o_proj.weight), i.e. (base + 1e-4) * projected value norm).
        budget: tokens kept per head, >= 1; budget >= N keeps every token.
        alpha: share of the budget given to stage 1, in [0, 1].

    Returns:
        int64 [B, H, min(budget, N)] indices, ascending per row.
    """
    if base.shape != critical.shape or base.dim() != 3:
        raise ValueError(f"base and critical must both be [B, H, N], got {tuple(base.shape)} and "
                         f"{tuple(critical.shape)}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    N = base.shape[-1]
    b = min(budget, N)
    first = _top(base, int(alpha * b))
    taken = torch.zeros(base.shape, dtype=torch.bool, device=base.device).scatter_(-1, first, True)
    second = _top(critical, b - first.shape[-1], exclude=taken)
    return torch.cat([first, second], dim=-1).sort(dim=-1).values


def output_error_bound(attn, proj_norm1, kept):
    """The right-hand side of CriticalKV's bound for one attention row set.

    Args:
        attn: [..., N] attention weights of each query (rows sum to 1).
        proj_norm1: [..., N] ||v_p W_o||_1 of the head the row belongs to
            (broadcastable to attn).
        kept: [..., N] bool, the kept tokens (broadcastable to attn).

    Returns:
        (bound, sigma), each [...]: C - (2 - 1/sigma) sum_kept A ||v W_o||_1
        with C = sum_p A ||v W_o||_1, and sigma the kept attention mass.
    """
    w = attn * proj_norm1
    sigma = (attn * kept).sum(-1)
    return w.sum(-1) - (2 - 1 / sigma) * (w * kept).sum(-1), sigma
