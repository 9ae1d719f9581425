"""compress_context(prefix_cache=...): one plain prefill of a context's
prefix, extended and compressed by any window-scored method, gives what
compressing the whole context gives (what lets `obcache eval` prefill each
prompt once for all its methods and budgets)."""
import copy

import pytest
import torch

from obcache.hf.hooks import TRANSFORMERS_MIN  # imports no transformers

pytest.importorskip("transformers", minversion=TRANSFORMERS_MIN)
from transformers import DynamicCache  # noqa: E402

import obcache.hf as hf  # noqa: E402
from obcache.hf.cache_arg import cache_kw  # noqa: E402
from obcache.hf.hooks import state_of  # noqa: E402
from test_hf_integration import WINDOW, opts, prompt, tiny_model  # noqa: E402

SHARED = ["full", "streaming", "snapkv", "tova", "snapkv+obc-key", "snapkv+obc-joint", "tova+obc-key", "vatp",
          "adakv+obc-key", "criticalkv+obc-key", "laprox"]


def prefill(model, ids):
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **{cache_kw(model): cache})
    return cache


@pytest.mark.parametrize("method", SHARED)
def test_a_shared_prefix_compresses_like_the_whole_context(method):
    model, ids = tiny_model(), prompt(96)
    whole = hf.compress_context(model, ids, method=method, budget=0.25, **opts())
    prefix = prefill(model, ids[:, : 96 - WINDOW - 5])
    shared = hf.compress_context(model, ids, method=method, budget=0.25, prefix_cache=copy.deepcopy(prefix), **opts())
    a, b = state_of(whole.cache), state_of(shared.cache)
    for li in range(len(whole.cache.layers)):
        assert torch.equal(a.positions[li], b.positions[li]), f"layer {li}: kept positions differ"
        # float32 attention read in two calls instead of one: rounding only
        torch.testing.assert_close(shared.cache.layers[li].keys, whole.cache.layers[li].keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared.cache.layers[li].values, whole.cache.layers[li].values, rtol=1e-5,
                                   atol=1e-5)
    torch.testing.assert_close(shared.last_logits, whole.last_logits, rtol=1e-4, atol=1e-4)
    q = prompt(5, seed=7)
    gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=1)
    assert torch.equal(shared.generate(q, **gen), whole.generate(q, **gen))
    assert shared.eviction_seconds > 0 or method == "full"


def test_the_prefix_is_left_alone_when_a_copy_is_passed():
    model, ids = tiny_model(), prompt(80)
    prefix = prefill(model, ids[:, :60])
    before = [layer.keys.clone() for layer in prefix.layers]
    hf.compress_context(model, ids, method="snapkv+obc-key", budget=0.25, prefix_cache=copy.deepcopy(prefix), **opts())
    assert prefix.get_seq_length() == 60 and state_of(prefix) is None
    assert all(torch.equal(k, layer.keys) for k, layer in zip(before, prefix.layers))


@pytest.mark.parametrize("method, prefix_len, match", [
    ("h2o", 40, "h2o.*every prompt query"),
    ("kvzip", 40, "kvzip.*re-reads the context"),
    ("snapkv", 80 - WINDOW + 1, f"prefix_cache holds {80 - WINDOW + 1} tokens.*1..N - window = {80 - WINDOW}"),
])
def test_a_prefix_that_cannot_give_the_same_result_raises(method, prefix_len, match):
    model, ids = tiny_model(), prompt(80)
    with pytest.raises(ValueError, match=match):
        hf.compress_context(model, ids, method=method, budget=0.25, prefix_cache=prefill(model, ids[:, :prefix_len]),
                            **opts())


def test_a_cache_read_under_the_hooks_is_refused_as_a_prefix():
    model, ids = tiny_model(), prompt(80)
    ctx = hf.compress_context(model, ids[:, :40], method="full", budget=1.0, **opts())
    with pytest.raises(ValueError, match="already read under obcache hooks"):
        hf.compress_context(model, ids, method="snapkv", budget=0.25, prefix_cache=ctx.cache, **opts())
