"""torch.ops.obcache.projected_value_norm: ||v_n W_o^j||_p per query head.

Specification: obcache.reference.projected_value_norm. The value a token
contributes to a head's attention output passes through that head's slice of
the output projection; CriticalKV and LaProx weigh tokens by the norm of that
projected value. Kernels: a tiled CPU kernel and a shared-memory tiled CUDA
GEMM whose epilogue is the row norm; neither forms [B, H_q, N, hidden].
"""
import torch

from obcache.ops import fake_checks

__all__ = ["projected_value_norm"]


def projected_value_norm(v: torch.Tensor, wo: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Norm of every cached value projected by each query head's o_proj slice.

    Args:
        v: [B, H_kv, N, D] cached values; float32, float16 or bfloat16 (float64
            too on CPU). The last dim must be contiguous; other strides are
            arbitrary.
        wo: [hidden, H_q * D], the o_proj weight as nn.Linear stores it; same
            dtype and device as v, last dim contiguous. H_q must be a multiple
            of H_kv; query head j reads KV head j // G (G = H_q // H_kv) and
            owns the columns j*D .. (j+1)*D - 1, W_o^j = wo[:, j*D:(j+1)*D].T.
        p: 1 or 2, the norm.

    Returns:
        [B, H_q, N] float32 (float64 for float64 inputs):
        out[b, j, n] = || v[b, j // G, n] @ wo[:, j*D:(j+1)*D].T ||_p,
        accumulated in float32 (float64 for float64 inputs).
    """
    return torch.ops.obcache.projected_value_norm(v, wo, p)


@torch.library.register_fake("obcache::projected_value_norm")
def _projected_value_norm_fake(v, wo, p=1):
    fake_checks.projected_value(v, wo, p)
    D = v.shape[3]
    out_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    return v.new_empty((v.shape[0], wo.shape[1] // D, v.shape[2]), dtype=out_dtype)
