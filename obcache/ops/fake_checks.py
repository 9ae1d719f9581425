"""The argument checks the fake (meta) kernels run.

Under torch.compile a fake kernel is all that sees the arguments while the
graph is traced; without these checks a wrong shape, dtype, device or budget
would trace fine and fail only when the compiled graph runs, or give a
wrongly shaped output to the ops after it. So the fake kernels check what
needs no data, with the messages of the ops themselves (csrc/torch/checks.h,
saliency_op.cpp, select_op.cpp, compact_op.cpp). Values (indices, start) need
data and are checked by the op when it runs.
"""
import torch


def dims(t, name, n, layout):
    torch._check(t.dim() == n, lambda: f"{name} must have {n} dims {layout}, got {t.dim()} (shape {tuple(t.shape)})")


def same_device(a, an, b, bn):
    torch._check(a.device == b.device,
                 lambda: f"{an} and {bn} must be on the same device, got {a.device} and {b.device}")


def same_dtype(a, an, b, bn):
    torch._check(a.dtype == b.dtype, lambda: f"{an} and {bn} must have the same dtype, got {a.dtype} and {b.dtype}")


def cache(k, v):
    """k and v: [B, H_kv, N, D] on one device."""
    dims(k, "k", 4, "[B, H_kv, N, D]")
    dims(v, "v", 4, "[B, H_kv, N, D]")
    same_device(k, "k", v, "v")


def cache_and_window(k, v, q):
    """saliency's and evict's k, v and q_window."""
    cache(k, v)
    dims(q, "q_window", 4, "[B, H_q, W, D]")
    same_device(k, "k", q, "q_window")
    same_dtype(k, "k", v, "v")
    same_dtype(k, "k", q, "q_window")
    torch._check(k.shape == v.shape,
                 lambda: f"k and v must have the same shape [B, H_kv, N, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    B, H, N, D = k.shape
    torch._check(q.shape[0] == B, lambda: f"q_window must have the batch size of k ({B}), got {q.shape[0]}")
    torch._check(q.shape[3] == D, lambda: f"q_window must have the head dim D of k ({D}), got {q.shape[3]}")
    torch._check(H > 0, lambda: "k must have at least one KV head, got H_kv = 0")
    torch._check(q.shape[1] > 0, lambda: f"q_window's H_q must be a positive multiple of k's H_kv = {H}, got H_q = 0")
    torch._check(q.shape[1] % H == 0,
                 lambda: f"q_window's H_q must be a positive multiple of k's H_kv = {H}, got H_q = {q.shape[1]}")
    torch._check(q.shape[2] > 0, lambda: "q_window must hold at least one window query, got W = 0")
    torch._check(q.shape[2] <= N, lambda: f"q_window's W must be <= N = {N}, got W = {q.shape[2]}")


def pooling(pool_kernel, pool):
    torch._check(pool_kernel in (0, 1) or (pool_kernel > 1 and pool_kernel % 2 == 1),
                 lambda: f"pool_kernel must be 0, 1 (no pooling) or an odd number > 1, got {pool_kernel}")
    torch._check(pool in ("max", "avg"), lambda: f"pool must be one of ('max', 'avg'), got '{pool}'")


def sink_recent(sink, recent):
    torch._check(sink >= 0, lambda: f"sink must be >= 0, got {sink}")
    torch._check(recent >= 0, lambda: f"recent must be >= 0, got {recent}")


def budget(budget, N, sink, recent):
    """select's and evict's scalars (budget >= N keeps everything)."""
    sink_recent(sink, recent)
    if budget < N:
        torch._check(budget > 0 and budget >= sink + recent,
                     lambda: f"budget must be >= sink + recent = {sink + recent} and > 0, got {budget}")
