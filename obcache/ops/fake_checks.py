"""The argument checks the fake (meta) kernels run.

Under torch.compile a fake kernel is all that sees the arguments while the
graph is traced; without these checks a wrong shape, dtype, device or budget
would trace fine and fail only when the compiled graph runs, or give a
wrongly shaped output to the ops after it. The fake kernel is also the Meta
kernel: one optional tensor on the meta device (`start`, `o`, `wo`,
`lengths`) sends a call with CPU tensors here, and only the device check
stops it from returning an empty result without writing anything. So the
fake kernels check everything that needs no data, in the order and with the
messages of the ops themselves (csrc/torch/checks.h, saliency_op.cpp,
projected_value_op.cpp, select_op.cpp, compact_op.cpp). Values (indices,
lengths, start) need data and are checked by the op when it runs.
"""
import math

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dims(t, name, n, layout):
    torch._check(t.dim() == n, lambda: f"{name} must have {n} dims {layout}, got {t.dim()} (shape {tuple(t.shape)})")


def same_device(a, an, b, bn):
    torch._check(a.device == b.device,
                 lambda: f"{an} and {bn} must be on the same device, got {a.device} and {b.device}")


def same_dtype(a, an, b, bn):
    torch._check(a.dtype == b.dtype, lambda: f"{an} and {bn} must have the same dtype, got {a.dtype} and {b.dtype}")


def last_dim_contiguous(t, name):
    # The stride first: it is 1 almost always, and then a symbolic D is not guarded.
    torch._check(t.stride(-1) == 1 or t.shape[-1] <= 1,
                 lambda: f"{name} must have a contiguous last dim (stride 1), got strides {t.stride()}")


def kernel_dtype(t, name, op):
    """float32, float16 or bfloat16; float64 too off CUDA (to_obc_dtype)."""
    cuda = t.device.type == "cuda"
    torch._check(not (cuda and t.dtype == torch.float64),
                 lambda: f"{name} is float64, which {op} supports on CPU only (CUDA: float32, float16, bfloat16)")
    torch._check(t.dtype in KERNEL_DTYPES or t.dtype == torch.float64,
                 lambda: f"{name} must be float32, float16 or bfloat16 (or float64), got {t.dtype}")


def floating(t, name):
    torch._check(t.dtype.is_floating_point, lambda: f"{name} must be a floating-point tensor, got {t.dtype}")


def one_of(value, name, allowed):
    torch._check(value in allowed, lambda: f"{name} must be one of {allowed}, got '{value}'")


def cache(k, v):
    """k and v: [B, H_kv, N, D] on one device."""
    dims(k, "k", 4, "[B, H_kv, N, D]")
    dims(v, "v", 4, "[B, H_kv, N, D]")
    same_device(k, "k", v, "v")


def cache_and_window(k, v, q, scale=None, o=None):
    """saliency's and evict's k, v, q_window, scale and o (check_saliency_args
    after the names)."""
    cache(k, v)
    dims(q, "q_window", 4, "[B, H_q, W, D]")
    same_device(k, "k", q, "q_window")
    kernel_dtype(k, "k", "saliency")
    same_dtype(k, "k", v, "v")
    same_dtype(k, "k", q, "q_window")
    torch._check(k.shape == v.shape,
                 lambda: f"k and v must have the same shape [B, H_kv, N, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    B, H, N, D = k.shape
    torch._check(q.shape[0] == B, lambda: f"q_window must have the batch size of k ({B}), got {q.shape[0]}")
    torch._check(q.shape[3] == D, lambda: f"q_window must have the head dim D of k ({D}), got {q.shape[3]}")
    torch._check(H > 0, lambda: "k must have at least one KV head, got H_kv = 0")
    torch._check(D > 0, lambda: f"k must have a head dim D > 0, got shape {tuple(k.shape)}")
    torch._check(q.shape[1] > 0, lambda: f"q_window's H_q must be a positive multiple of k's H_kv = {H}, got H_q = 0")
    torch._check(q.shape[1] % H == 0,
                 lambda: f"q_window's H_q must be a positive multiple of k's H_kv = {H}, got H_q = {q.shape[1]}")
    torch._check(q.shape[2] > 0, lambda: "q_window must hold at least one window query, got W = 0")
    torch._check(q.shape[2] <= N, lambda: f"q_window's W must be <= N = {N}, got W = {q.shape[2]}")
    for t, name in ((k, "k"), (v, "v"), (q, "q_window")):
        last_dim_contiguous(t, name)
    torch._check(scale is None or math.isfinite(scale),
                 lambda: f"scale must be finite (or None for 1/sqrt(D)), got {scale}")
    if o is not None:
        same_device(q, "q_window", o, "o")
        same_dtype(q, "q_window", o, "o")
        torch._check(o.shape == q.shape, lambda: f"o must have q_window's shape [B, H_q, W, D] = {tuple(q.shape)} "
                     f"(the window queries' attention output), got {tuple(o.shape)}")
        last_dim_contiguous(o, "o")


def projected_value(v, wo, p):
    """projected_value_norm's v, wo and p (check_projected_value_args)."""
    torch._check(p in (1, 2), lambda: f"p must be 1 or 2, got {p}")
    dims(v, "v", 4, "[B, H_kv, N, D]")
    dims(wo, "wo", 2, "[hidden, H_q * D] (o_proj.weight)")
    same_device(v, "v", wo, "wo")
    kernel_dtype(v, "v", "projected_value_norm")
    same_dtype(v, "v", wo, "wo")
    H, D = v.shape[1], v.shape[3]
    torch._check(D > 0, lambda: f"v must have a head dim D > 0, got shape {tuple(v.shape)}")
    torch._check(H > 0, lambda: f"v must have at least one KV head, got H_kv = 0 (shape {tuple(v.shape)})")
    torch._check(wo.shape[1] % D == 0 and wo.shape[1] > 0,
                 lambda: f"wo must have H_q * D columns, a positive multiple of v's D = {D}, got {wo.shape[1]}")
    torch._check((wo.shape[1] // D) % H == 0,
                 lambda: f"wo's H_q = wo.shape[1] / D = {wo.shape[1] // D} must be a multiple of v's H_kv = {H}")
    last_dim_contiguous(v, "v")
    last_dim_contiguous(wo, "wo")


def pooling(pool_kernel, pool):
    torch._check(pool_kernel in (0, 1) or (pool_kernel > 1 and pool_kernel % 2 == 1),
                 lambda: f"pool_kernel must be 0, 1 (no pooling) or an odd number > 1, got {pool_kernel}")
    one_of(pool, "pool", ("max", "avg"))


def sink_recent(sink, recent):
    torch._check(sink >= 0, lambda: f"sink must be >= 0, got {sink}")
    torch._check(recent >= 0, lambda: f"recent must be >= 0, got {recent}")


def start(start, B, device):
    """The optional left-padding offsets: int64 [B] on the scores' device."""
    if start is None:
        return
    torch._check(start.dim() == 1 and start.shape[0] == B,
                 lambda: f"start must have shape [B] = [{B}], got {tuple(start.shape)}")
    torch._check(start.dtype == torch.int64, lambda: f"start must be int64, got {start.dtype}")
    torch._check(start.device == device,
                 lambda: f"start must be on the same device as the scores ({device}), got {start.device}")


def select_scalars(B, N, budget, sink, recent, pool_kernel, pool, start_, device, budget_note=""):
    """select's and evict's scalars and start (check_select_scalars; budget >=
    N keeps everything). budget_note ends the message of a budget below
    sink + recent."""
    pooling(pool_kernel, pool)
    sink_recent(sink, recent)
    start(start_, B, device)
    if budget < N:
        torch._check(budget > 0 and budget >= sink + recent,
                     lambda: f"budget must be >= sink + recent = {sink + recent} and > 0, got {budget}{budget_note}")


def scores(s):
    dims(s, "scores", 3, "[B, H, N]")
    floating(s, "scores")


def compact(k, v, indices, lengths):
    """compact_'s tensors (check_compact_meta)."""
    dims(k, "k", 4, "[B, H_kv, N, D]")
    dims(v, "v", 4, "[B, H_kv, N, D]")
    floating(k, "k")
    floating(v, "v")
    same_device(k, "k", v, "v")
    torch._check(k.shape[:3] == v.shape[:3],
                 lambda: f"k and v must agree on [B, H_kv, N], got {tuple(k.shape)} and {tuple(v.shape)}")
    last_dim_contiguous(k, "k")
    last_dim_contiguous(v, "v")
    B, H, N = k.shape[:3]
    dims(indices, "indices", 3, "[B, H_kv, L]")
    torch._check(indices.dtype == torch.int64, lambda: f"indices must be int64, got {indices.dtype}")
    same_device(indices, "indices", k, "k")
    torch._check(indices.shape[0] == B and indices.shape[1] == H and indices.shape[2] <= N,
                 lambda: f"indices must have shape [B, H_kv, L] = [{B}, {H}, L <= {N}], got {tuple(indices.shape)}")
    if lengths is not None:
        torch._check(lengths.dim() == 2 and lengths.shape[0] == B and lengths.shape[1] == H,
                     lambda: f"lengths must have shape [B, H_kv] = [{B}, {H}], got {tuple(lengths.shape)}")
        torch._check(lengths.dtype == torch.int64, lambda: f"lengths must be int64, got {lengths.dtype}")
        same_device(lengths, "lengths", k, "k")
