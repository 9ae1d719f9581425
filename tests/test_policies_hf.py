"""CriticalKV, AdaKV and LaProx rows of the method table through obcache.hf
(prefill eviction with the SnapKV window), on tiny random models (CPU)."""
import re

import pytest
import torch
import torch.nn.functional as F

from obcache.hf.hooks import TRANSFORMERS_MIN  # imports no transformers

transformers = pytest.importorskip("transformers", minversion=TRANSFORMERS_MIN)
from transformers import DynamicCache  # noqa: E402

import obcache.hf as hf  # noqa: E402
from obcache.methods import METHODS  # noqa: E402
from obcache.policies import (adaptive_criticalkv_keep, criticalkv_keep, criticalkv_select,  # noqa: E402
                              laprox_select)
from test_hf_integration import greedy, prompt, tiny_model, window_queries  # noqa: E402
from test_kvzip import direct_forward, direct_greedy, kept_rows  # noqa: E402

WINDOW, SINK = 8, 2
NEW = ["criticalkv", "criticalkv+obc-key", "adakv+snapkv", "adakv+obc-key", "adakv+criticalkv", "laprox"]
N, BUDGET, H_KV, LAYERS = 64, 24, 2, 2
ops = torch.ops.obcache


def opts(**kw):
    return dict(window=WINDOW, sink=SINK, **kw)


def prefill(model, method, ids=None, budget=BUDGET, **kw):
    """(cache, state) after reading ids inside compress()."""
    ids = prompt(N) if ids is None else ids
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), hf.compress(model, method, budget, **opts(**kw)):
        model(ids, cache=cache, use_cache=True)
    return cache, hf.state_of(cache)


# ---------------------------------------------------------------------------
# a direct computation from the ops, written out


def pooled_candidates(s, pool="max", kernel=7):
    """Scores of [SINK, N - WINDOW), pooled over [0, N - WINDOW) as select pools."""
    x = s[..., : s.shape[-1] - WINDOW].double()
    fn = F.max_pool1d if pool == "max" else F.avg_pool1d
    x = fn(x.reshape(-1, 1, x.shape[-1]), kernel, stride=1, padding=kernel // 2).reshape(x.shape)
    return x[..., SINK:]


def direct_layer(model, ids, li):
    """(window queries, k, v, scale, o_proj weight) of layer li, from a plain forward."""
    q, full, scale = window_queries(model, ids, li, WINDOW)
    return q, full.keys, full.values, scale, model.model.layers[li].self_attn.o_proj.weight


def direct_base_and_critical(model, ids, li, score):
    q, k, v, scale, wo = direct_layer(model, ids, li)
    base = ops.saliency(k, v, q, score, scale=scale)
    if score == "attn":
        crit = ops.saliency(k, v, q, "critical", scale=scale, wo=wo)
    else:
        B, H, n = base.shape
        crit = (base + 1e-4) * ops.projected_value_norm(v, wo, 1).view(B, H, -1, n).mean(2)
    return base, crit, k, v


def gathered(x, idx):
    return x.gather(2, idx.clamp_min(0).unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))


# ---------------------------------------------------------------------------
# the table


def test_the_table_has_the_criticalkv_adakv_and_laprox_rows():
    for name in NEW:
        row = METHODS[name]
        assert row.queries == "window" and row.pooled and row.keep_recent and row.description
    assert METHODS["criticalkv"].score == "attn" and METHODS["criticalkv+obc-key"].score == "key"
    assert all(METHODS[m].selection == "criticalkv" for m in ("criticalkv", "criticalkv+obc-key", "adakv+criticalkv"))
    assert all(METHODS[m].adaptive for m in NEW if m.startswith("adakv+"))
    lap = METHODS["laprox"]
    assert (lap.score, lap.group_reduce, lap.selection, lap.pool) == ("laprox", "mean", "global", "avg")
    assert {m for m in NEW if METHODS[m].per_head_lengths} == {m for m in NEW if m.startswith("adakv+")} | {"laprox"}


# ---------------------------------------------------------------------------
# every new method runs end to end


def expected_total(method):
    return BUDGET * H_KV * (LAYERS if method == "laprox" else 1)


@pytest.mark.parametrize("method", NEW)
def test_compress_around_generate_and_compress_context_run(method):
    model, ids = tiny_model("qwen3" if "obc-key" in method else "llama"), prompt(N)
    with hf.compress(model, method, BUDGET, **opts()) as c:
        out = greedy(model, ids, n=6)
    assert out.shape == (1, 6) and c.eviction_seconds > 0
    ctx = hf.compress_context(model, ids, method, BUDGET, **opts())
    ans = ctx.generate(prompt(5, seed=4), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert ans.shape == (1, 4)
    if METHODS[method].per_head_lengths:
        lens = torch.stack(ctx.lengths)  # [layers, B, H_kv]
        per_layer = lens.sum(-1)
        total = per_layer.sum(0) if method == "laprox" else per_layer
        assert bool((total == expected_total(method)).all())
        assert [layer.keys.shape[2] for layer in ctx.cache.layers] == lens.amax((1, 2)).tolist()
    else:
        assert ctx.lengths is None and all(layer.keys.shape[2] == BUDGET for layer in ctx.cache.layers)


# ---------------------------------------------------------------------------
# what prefill keeps equals a direct computation from the ops


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("method", ["criticalkv", "criticalkv+obc-key"])
def test_criticalkv_keeps_what_the_two_stages_pick_from_recomputed_queries(arch, method):
    model, ids = tiny_model(arch), prompt(N)
    cache, st = prefill(model, method)
    for li, layer in enumerate(cache.layers):
        base, crit, k, v = direct_base_and_critical(model, ids, li, METHODS[method].score)
        chosen = criticalkv_select(pooled_candidates(base), pooled_candidates(crit), BUDGET - SINK - WINDOW) + SINK
        want = torch.cat([torch.arange(SINK).expand(1, H_KV, SINK), chosen,
                          torch.arange(N - WINDOW, N).expand(1, H_KV, WINDOW)], -1)
        assert torch.equal(st.positions[li], want), f"layer {li}"
        torch.testing.assert_close(layer.keys, gathered(k, want))
        torch.testing.assert_close(layer.values, gathered(v, want))


@pytest.mark.parametrize("method", ["adakv+snapkv", "adakv+obc-key"])
def test_adakv_keeps_what_select_adaptive_picks_with_each_heads_floor(method):
    model, ids = tiny_model("qwen3"), prompt(N)
    cache, st = prefill(model, method)
    floor = max(SINK + WINDOW, int(0.2 * BUDGET))
    for li, layer in enumerate(cache.layers):
        q, k, v, scale, _ = direct_layer(model, ids, li)
        s = ops.saliency(k, v, q, METHODS[method].score, scale=scale)
        want, lens = ops.select_adaptive(s, BUDGET * H_KV, floor=0.2, sink=SINK, recent=WINDOW, pool_kernel=7)
        assert torch.equal(st.positions[li], want) and torch.equal(st.head_tails[li][0], lens), f"layer {li}"
        assert bool((lens >= floor).all()) and int(lens.sum()) == BUDGET * H_KV
        for h in range(H_KV):
            n = int(lens[0, h])
            torch.testing.assert_close(layer.keys[0, h, :n], k[0, h, want[0, h, :n]])


def test_adakv_criticalkv_keeps_each_heads_floor_and_the_layer_budget():
    model, ids = tiny_model("llama"), prompt(N)
    floor = max(SINK + WINDOW, int(0.3 * BUDGET))
    cache, st = prefill(model, "adakv+criticalkv", floor=0.3)
    for li, layer in enumerate(cache.layers):
        base, crit, k, v = direct_base_and_critical(model, ids, li, "attn")
        want, lens = adaptive_criticalkv_keep(base, crit, BUDGET * H_KV, floor=0.3, sink=SINK, recent=WINDOW,
                                              pool_kernel=7, pool="max")
        assert torch.equal(st.positions[li], want) and torch.equal(st.head_tails[li][0], lens)
        assert bool((lens >= floor).all()) and int(lens.sum()) == BUDGET * H_KV
        assert layer.keys.shape[2] == int(lens.max())


def test_laprox_keeps_the_global_top_k_of_the_layer_normalised_scores():
    model, ids = tiny_model("qwen3"), prompt(N)
    cache, st = prefill(model, "laprox")
    scores = []
    for li in range(LAYERS):
        q, k, v, scale, wo = direct_layer(model, ids, li)
        scores.append(ops.saliency(k, v, q, "laprox", group_reduce="mean", scale=scale, wo=wo))
    kept = laprox_select(scores, BUDGET, sink=SINK, recent=WINDOW, pool_kernel=7, pool="avg")
    total = 0
    for li, (want, lens) in enumerate(kept):
        assert torch.equal(st.positions[li], want) and torch.equal(st.head_tails[li][0], lens), f"layer {li}"
        assert cache.layers[li].keys.shape[2] == int(lens.max())
        total += int(lens.sum())
    assert total == BUDGET * LAYERS * H_KV
    lens = torch.stack([lens for _, lens in kept])
    assert bool((lens >= SINK + WINDOW).all()) and bool((lens != BUDGET).any())


# ---------------------------------------------------------------------------
# the selection functions on their own


def test_laprox_selection_keeps_the_global_budget_exactly_and_ignores_each_layers_scale():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(2, 3, 50, generator=g) ** 4 * (10.0 ** li) for li in range(4)]
    budget = 20
    kept = laprox_select(scores, budget, sink=2, recent=5)
    assert bool((sum(lens.sum(-1) for _, lens in kept) == budget * 4 * 3).all())
    for idx, lens in kept:
        for b in range(2):
            for h in range(3):
                row = idx[b, h, : int(lens[b, h])]
                assert bool((row[1:] > row[:-1]).all()) and bool((idx[b, h, int(lens[b, h]):] == -1).all())
                assert row[:2].tolist() == [0, 1] and row[-5:].tolist() == list(range(45, 50))
    for c in (8.0, 0.25):
        scaled = [s * c if li == 2 else s for li, s in enumerate(scores)]
        for (a, la), (b_, lb) in zip(kept, laprox_select(scaled, budget, sink=2, recent=5)):
            assert torch.equal(a, b_) and torch.equal(la, lb)
    # without the per-layer normalisation the loudest layer (scores x1000) takes more than its share
    _, raw = ops.select_adaptive(torch.cat(scores, 1), budget * 4 * 3, floor=0.0, sink=2, recent=5, pool_kernel=7,
                                 pool="avg")
    assert int(raw[:, 9:].sum()) > int(kept[3][1].sum())


def test_criticalkv_selection_with_alpha_one_is_select_and_select_adaptive():
    g = torch.Generator().manual_seed(1)
    s, c = torch.rand(2, 3, 50, generator=g), torch.rand(2, 3, 50, generator=g)
    for pool in ("max", "avg"):
        kw = dict(sink=2, recent=5, pool_kernel=7, pool=pool)
        assert torch.equal(criticalkv_keep(s, c, 20, alpha=1.0, **kw), ops.select(s, 20, **kw))
        want = ops.select_adaptive(s, 60, floor=0.2, **kw)
        got = adaptive_criticalkv_keep(s, c, 60, floor=0.2, alpha=1.0, **kw)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        # stage 2 alone (alpha 0, no floor beyond sink + recent) is select_adaptive of the critical score
        want = ops.select_adaptive(c, 60, floor=0.0, **kw)
        got = adaptive_criticalkv_keep(s, c, 60, floor=0.0, alpha=0.0, **kw)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        idx, lens = adaptive_criticalkv_keep(s, c, 60, floor=0.5, **kw)
        assert bool((lens.sum(-1) == 60).all()) and bool((lens >= 10).all())


# ---------------------------------------------------------------------------
# decoding over heads of different lengths


@pytest.mark.parametrize("method,attn", [("laprox", "sdpa"), ("adakv+criticalkv", "eager")])
def test_decoding_after_per_head_eviction_equals_per_head_attention_over_the_kept_rows(method, attn):
    model, context = tiny_model("llama", attn=attn), prompt(N)
    ctx = hf.compress_context(model, context, method, 16, **opts())
    assert any(bool((lens != lens.max()).any()) for lens in ctx.lengths)  # some head has a padded tail
    for layer, lens in zip(ctx.cache.layers, ctx.lengths):  # loud garbage in the padded tails
        for j, nj in enumerate(lens[0].tolist()):
            layer.keys[0, j, nj:] = 30.0
            layer.values[0, j, nj:] = 1e3
    question = prompt(6, seed=10)
    want, _ = direct_forward(model, kept_rows(ctx), question, N)
    torch.testing.assert_close(ctx.forward(question), want, rtol=1e-4, atol=1e-4)
    got = ctx.generate(question, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert got[0].tolist() == direct_greedy(model, kept_rows(ctx), question, N, 5)


def test_criticalkv_decode_eviction_keeps_the_cache_within_decode_budget():
    model, ids = tiny_model(), prompt(30)
    cache = DynamicCache(config=model.config)
    with hf.compress(model, "criticalkv", 20, decode_budget=24, **opts()):
        greedy(model, ids, n=20, cache=cache)
    assert max(hf.state_of(cache).lengths) <= 24


@pytest.mark.parametrize("method", ["adakv+obc-key", "laprox"])
def test_a_static_cache_with_per_head_lengths_generates_like_the_dynamic_cache(method):
    from transformers import StaticCache

    model, ids = tiny_model("llama"), prompt(N)
    with hf.compress(model, method, BUDGET, **opts()):
        want = greedy(model, ids, n=6)
        got = greedy(model, ids, n=6, cache=StaticCache(config=model.config, max_cache_len=100))
    assert torch.equal(got, want)


# ---------------------------------------------------------------------------
# what is not supported says so


@pytest.mark.parametrize("method", ["adakv+snapkv", "laprox"])
@pytest.mark.parametrize("kw", [dict(chunk_size=16), dict(decode_budget=40)])
def test_chunked_or_decode_eviction_with_per_head_lengths_raises_naming_the_argument(method, kw):
    with pytest.raises(ValueError, match=f"{next(iter(kw))}.*{re.escape(method)}"):
        hf.compress(tiny_model(), method, BUDGET, **opts(**kw))


@pytest.mark.parametrize("method", ["adakv+obc-key", "laprox"])
def test_a_left_padded_batch_with_per_head_lengths_raises_naming_the_method(method):
    ids = prompt(N, batch=2)
    am = torch.ones_like(ids)
    am[0, :5] = 0
    with pytest.raises(NotImplementedError, match=f"{re.escape(method)}.*left-padded"):
        hf.compress_context(tiny_model(), ids, method, BUDGET, attention_mask=am, **opts())
