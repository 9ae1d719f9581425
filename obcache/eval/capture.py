"""Capture every attention layer's post-RoPE q, k, v during a forward pass,
through a registered transformers attention function that records its
inputs and then runs SDPA."""
import contextlib

import torch

NAME = "obcache_eval_capture"


@contextlib.contextmanager
def capturing(model):
    """Within the block, each forward fills the yielded dict:
    layer index -> (q [B, Hq, T, D], k [B, Hkv, N, D], v, scale), where k, v
    are what the layer attends to (the whole cache when one is used)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    store = {}

    def capture(module, query, key, value, attention_mask, **kw):
        # What is recorded is scored with plain causal softmax attention (the perturbation task's
        # output_error): a layer that attends otherwise would be measured against the wrong output.
        window = kw.get("sliding_window")
        if kw.get("softcap") is not None or (window is not None and window < key.shape[2]):
            raise NotImplementedError(
                f"layer {module.layer_idx} of {type(model).__name__} attends with sliding_window={window}, "
                f"softcap={kw.get('softcap')} over {key.shape[2]} keys; the perturbation task measures plain causal "
                "softmax attention (lower --perturb-context, or leave the perturbation task out with --tasks)")
        store[module.layer_idx] = (query.detach(), key.detach(), value.detach(), kw.get("scaling"))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register(NAME, capture)
    # the mask must be SDPA's too: with none registered, a chunk after a cache
    # would get no mask, and SDPA's is_causal aligns it top-left (wrong)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield store
    finally:
        model.set_attn_implementation(previous)


def capture_qkv(model, ids):
    """Per-layer (q, k, v, scale) of one forward pass over ids [1, T], no cache."""
    with capturing(model) as store, torch.no_grad():
        model(ids, use_cache=False, logits_to_keep=1)
    return [store[i] for i in sorted(store)]
