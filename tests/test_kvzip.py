"""KVzip-style query-agnostic compression (`obcache.hf.reconstruct`): the
context is scored by the queries of a pass that re-reads it, on tiny random
models (CPU, seconds)."""
import re

import pytest
import torch

from obcache.hf.hooks import TRANSFORMERS_MIN  # imports no transformers

transformers = pytest.importorskip("transformers", minversion=TRANSFORMERS_MIN)
from transformers import DynamicCache, StaticCache  # noqa: E402

import obcache.hf as hf  # noqa: E402
from obcache.hf import reconstruct  # noqa: E402
from obcache.methods import METHODS  # noqa: E402
from test_hf_integration import prompt, rotate_half, tiny_model  # noqa: E402

WINDOW, SINK = 8, 2
KVZIP = [m for m, row in METHODS.items() if row.queries == "reconstruction"]
REPEAT = prompt(5, seed=3)  # stands for the tokens of "Repeat the previous context:"


def opts(**kw):
    return dict(window=WINDOW, sink=SINK, repeat_ids=REPEAT, **kw)


# ---------------------------------------------------------------------------
# a direct float64 computation, written out from the weights


def hand_queries_keys(model, ids):
    """Per layer: post-RoPE queries [B, H_q, N, D] of every token of ids (from
    the layer inputs of one plain forward), its keys/values [B, H_kv, N, D]
    and the scale."""
    base = model.model
    out = []
    with torch.no_grad():
        res = model(ids, output_hidden_states=True, use_cache=True)
        B, N = ids.shape
        cos, sin = base.rotary_emb(res.hidden_states[0], position_ids=torch.arange(N).unsqueeze(0))
        for li, block in enumerate(base.layers):
            attn = block.self_attn
            x = block.input_layernorm(res.hidden_states[li])
            q = attn.q_proj(x).view(B, N, -1, attn.head_dim)
            if hasattr(attn, "q_norm"):
                q = attn.q_norm(q)
            q = q.transpose(1, 2)
            q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)
            layer = res.cache.layers[li]
            out.append((q, layer.keys, layer.values, attn.scaling))
    return out


def direct_scores(model, context, chunks, score, query_reduce, group_reduce):
    """Per layer float64 [B, H_kv, Lc]: for each chunk, the sequence
    context + REPEAT + chunk is read in one plain forward; its last
    P + len(chunk) queries score the context keys (softmax over every key up
    to the query); reduced over the queries of every chunk, then over the
    query heads of each group."""
    Lc = context.shape[1]
    total = None
    for piece in chunks:
        ids = torch.cat([context, REPEAT, piece], 1)
        layers = []
        for q, k, v, scale in hand_queries_keys(model, ids):
            q, k, v = q.double(), k.double(), v.double()
            B, Hq, N, D = q.shape
            G = Hq // k.shape[1]
            T = N - Lc
            kq = k.repeat_interleave(G, 1)
            vq = v.repeat_interleave(G, 1)
            z = scale * q[:, :, Lc:] @ kq.transpose(-1, -2)  # [B, Hq, T, N]
            causal = torch.arange(N)[None, :] <= (Lc + torch.arange(T))[:, None]
            z = z.masked_fill(~causal, float("-inf"))
            a = torch.softmax(z, -1)
            o = a @ vq  # [B, Hq, T, D]
            a, z, vc = a[..., :Lc], z[..., :Lc], vq[:, :, None, :Lc]  # context columns
            diff = (vc - o[:, :, :, None]).pow(2).sum(-1)  # ||v_p - o||^2 [B, Hq, T, Lc]
            vv = vc.pow(2).sum(-1)
            vo = (vc * o[:, :, :, None]).sum(-1)
            per = {
                "attn": a,
                "key": (a * z).pow(2) * diff,
                "joint": a.pow(2) * vv + (a * z).pow(2) * diff + 2 * a.pow(2) * z * (vv - vo),
                "loo": a / (1 - a) * diff.sqrt(),
            }[score]
            layers.append(per.sum(2) if query_reduce == "sum" else per.amax(2))  # over this chunk's queries
        if total is None:
            total = layers
        else:  # over the chunks
            op = torch.add if query_reduce == "sum" else torch.maximum
            total = [op(t, s) for t, s in zip(total, layers)]
    out = []
    for t in total:  # over the query heads of each KV head
        t = t.view(t.shape[0], -1, G, Lc)
        out.append(t.sum(2) if group_reduce == "sum" else t.amax(2))
    return out


def prefilled(model, context, cache=None):
    cache = DynamicCache(config=model.config) if cache is None else cache
    with torch.no_grad():
        model(context, cache=cache, use_cache=True)
    return cache


def pieces(context, chunk):
    return [context[:, s:s + chunk] for s in range(0, context.shape[1], chunk)]


def assert_scores_close(got, want, what):
    for li, (g, w) in enumerate(zip(got, want)):
        scale = w.abs().max()
        err = ((g.double() - w).abs().max() / scale).item()
        assert err < 2e-5, f"{what}, layer {li}: relative error {err:.2e}"


# ---------------------------------------------------------------------------
# the method table


def test_the_table_has_kvzip_and_its_obc_variants_with_and_without_adakv():
    want = {"kvzip", "kvzip+obc-key", "kvzip+obc-joint", "kvzip+loo"}
    assert want | {"adakv+" + m for m in want} == set(KVZIP)
    assert METHODS["kvzip"].query_reduce == "max" and not METHODS["kvzip"].pooled
    for m in ("kvzip+obc-key", "kvzip+obc-joint", "kvzip+loo"):
        assert METHODS[m].query_reduce == "sum" and METHODS[m].pooled and not METHODS[m].adaptive
        assert METHODS["adakv+" + m].adaptive
    assert all(METHODS[m].reconstructs and not METHODS[m].keep_recent for m in KVZIP)


@pytest.mark.parametrize("method", ["kvzip", "adakv+kvzip+obc-key"])
def test_compress_around_generate_raises_naming_the_method(method):
    model = tiny_model()
    with hf.compress(model, method, 16, window=WINDOW, sink=SINK):
        with pytest.raises(ValueError, match=re.escape(f"method={method!r}") + ".*compress_context"):
            model.generate(prompt(40), max_new_tokens=2)


def test_decode_budget_with_a_reconstruction_method_raises_naming_the_method():
    with pytest.raises(ValueError, match="decode_budget.*method='kvzip'"):
        hf.compress(tiny_model(), "kvzip", 0.5, decode_budget=64)


# ---------------------------------------------------------------------------
# the scores


SPECS = [("attn", "max", "max"), ("attn", "sum", "sum"), ("key", "sum", "sum"), ("key", "max", "sum"),
         ("joint", "sum", "sum"), ("loo", "sum", "max"), ("attn", "max", "sum")]


@pytest.mark.parametrize("chunk", [None, 16, 20])
@pytest.mark.parametrize("score, query_reduce, group_reduce", SPECS)
def test_reconstruction_scores_equal_a_direct_float64_computation(score, query_reduce, group_reduce, chunk):
    model, context = tiny_model(), prompt(48)
    spec = reconstruct.ScoreSpec(score, query_reduce, group_reduce)
    cache = prefilled(model, context)
    got = reconstruct.score_context(model, cache, context, REPEAT, [spec], chunk_size=chunk)[spec]
    want = direct_scores(model, context, pieces(context, chunk or 48), score, query_reduce, group_reduce)
    assert_scores_close(got, want, f"{spec}, chunk={chunk}")
    assert all(layer.keys.shape[2] == 48 for layer in cache.layers)  # the chunks' keys are gone


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3"])
def test_reconstruction_scores_equal_the_direct_computation_on_every_architecture(arch):
    model, context = tiny_model(arch), prompt(40)
    spec = reconstruct.ScoreSpec("key", "sum", "sum")
    got = reconstruct.score_context(model, prefilled(model, context), context, REPEAT, [spec], chunk_size=16)[spec]
    assert_scores_close(got, direct_scores(model, context, pieces(context, 16), "key", "sum", "sum"), arch)


def test_a_reconstruction_longer_than_the_sliding_window_raises():
    """A sliding-window layer keeps only its last sliding_window - 1 tokens:
    the context's first ones would be lost to the reconstruction's."""
    model, context = tiny_model("mistral"), prompt(48)
    model.config.sliding_window = 64
    spec = reconstruct.ScoreSpec("key", "sum", "sum")
    with pytest.raises(NotImplementedError, match=r"sliding_window=64\): scoring by reconstruction holds 48 context "
                                                  r"\+ 5 repeat-prompt \+ 48 chunk = 101 tokens"):
        hf.context.score_by_reconstruction(model, context, [spec], repeat_ids=REPEAT)
    read = hf.context.score_by_reconstruction(model, context, [spec], repeat_ids=REPEAT, chunk=10)  # 63 tokens
    assert [s.shape for s in read.scores[spec]] == [(1, 2, 48)] * 2  # per layer


def test_a_static_cache_is_scored_in_place_and_keeps_the_context_rows():
    model, context = tiny_model(), prompt(48)
    spec = reconstruct.ScoreSpec("joint", "sum", "sum")
    static = prefilled(model, context, StaticCache(config=model.config, max_cache_len=48 + 5 + 16))
    before = [(layer.keys.data_ptr(), layer.keys[:, :, :48].clone()) for layer in static.layers]
    got = reconstruct.score_context(model, static, context, REPEAT, [spec], chunk_size=16)[spec]
    dyn = reconstruct.score_context(model, prefilled(model, context), context, REPEAT, [spec], chunk_size=16)[spec]
    for li, layer in enumerate(static.layers):
        assert int(layer.cumulative_length) == 48 and layer.keys.data_ptr() == before[li][0]
        assert torch.equal(layer.keys[:, :, :48], before[li][1])
        torch.testing.assert_close(got[li], dyn[li], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("query_reduce", ["sum", "max"])
def test_one_chunk_as_long_as_the_context_gives_the_unchunked_scores_exactly(query_reduce):
    model, context = tiny_model(), prompt(48)
    spec = reconstruct.ScoreSpec("key", query_reduce, "sum")
    whole = reconstruct.score_context(model, prefilled(model, context), context, REPEAT, [spec])[spec]
    one = reconstruct.score_context(model, prefilled(model, context), context, REPEAT, [spec], chunk_size=64)[spec]
    assert all(torch.equal(a, b) for a, b in zip(whole, one))


@pytest.mark.parametrize("query_reduce, group_reduce", [("sum", "sum"), ("max", "max"), ("max", "sum"),
                                                        ("sum", "max")])
def test_scores_accumulated_over_query_chunks_equal_scoring_every_query_at_once(query_reduce, group_reduce):
    """Given the same reconstruction queries, scoring them chunk by chunk
    (each chunk over the keys up to its last query, a narrowed view) and
    accumulating with `query_reduce` equals one call over all of them, as
    score_context accumulates: the group reduced per chunk when the two
    reductions commute (sum/sum, max/max), else each query head of a group
    (q[:, g::G]) accumulated on its own and the group reduced at the end.
    The chunked reconstruction differs from the unchunked one only in its
    queries (a chunk does not see the chunks before it), which the direct
    computation above covers."""
    model, context = tiny_model(), prompt(48)
    ids = torch.cat([context, REPEAT, context], 1)
    commutes = (query_reduce, group_reduce) in (("sum", "sum"), ("max", "max"))
    for q, k, v, scale in hand_queries_keys(model, ids):
        N, Lc, G = k.shape[2], 48, q.shape[1] // k.shape[1]
        kw = dict(scale=scale, causal=True, query_reduce=query_reduce)
        once = torch.ops.obcache.saliency(k, v, q[:, :, Lc:], "key", group_reduce=group_reduce, **kw)[:, :, :Lc]
        acc = None
        for s in range(Lc, N, 16):
            e = min(s + 16, N)
            kk, vv, qq = k[:, :, :e], v[:, :, :e], q[:, :, s:e]
            if commutes:
                part = torch.ops.obcache.saliency(kk, vv, qq, "key", group_reduce=group_reduce, **kw)
            else:
                part = torch.stack([torch.ops.obcache.saliency(kk, vv, qq[:, g::G], "key", **kw)
                                    for g in range(G)], 2)
            part = part[..., :Lc]
            acc = part if acc is None else (acc + part if query_reduce == "sum" else torch.maximum(acc, part))
        if not commutes:
            acc = acc.sum(2) if group_reduce == "sum" else acc.amax(2)
        torch.testing.assert_close(acc, once, rtol=1e-5, atol=1e-6 * float(once.abs().max()))


# ---------------------------------------------------------------------------
# compress_context with a reconstruction method


@pytest.mark.parametrize("chunk", [None, 16])
@pytest.mark.parametrize("method", ["kvzip", "kvzip+obc-key", "kvzip+loo"])
def test_compress_context_keeps_what_select_picks_from_the_direct_scores(method, chunk):
    model, context, budget = tiny_model(), prompt(48), 12
    row = METHODS[method]
    ctx = hf.compress_context(model, context, method, budget, reconstruction_chunk=chunk, **opts())
    want_scores = direct_scores(model, context, pieces(context, chunk or 48), row.score, row.query_reduce,
                                row.group_reduce or "sum")
    _, full_k, full_v, _ = zip(*hand_queries_keys(model, context))
    st = hf.state_of(ctx.cache)
    for li, layer in enumerate(ctx.cache.layers):
        want = torch.ops.obcache.select(want_scores[li].float(), budget, sink=SINK, recent=0,
                                        pool_kernel=7 if row.pooled else 0, pool="max")
        assert torch.equal(st.positions[li], want), f"layer {li}"
        gather = want.unsqueeze(-1).expand(-1, -1, -1, 16)
        torch.testing.assert_close(layer.keys, full_k[li].gather(2, gather))
        torch.testing.assert_close(layer.values, full_v[li].gather(2, gather))


@pytest.mark.parametrize("budget", [12, 0.5])
def test_one_scored_read_compresses_every_method_as_compress_context_does(budget):
    """score_by_reconstruction once with every spec, then ScoredContext.compress
    per method: the kept rows and the answers of compress_context, and the
    read's cache is left as it was."""
    model, context = tiny_model(), prompt(48)
    specs = {hf.context.spec_of(METHODS[m]) for m in KVZIP}
    read = hf.context.score_by_reconstruction(model, context, specs, repeat_ids=REPEAT)
    keys = [layer.keys.clone() for layer in read.cache.layers]
    question, gen = prompt(4, seed=8), dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=1)
    for method in KVZIP:
        shared = read.compress(method, budget, window=WINDOW, sink=SINK)
        alone = hf.compress_context(model, context, method, budget, **opts())
        a, b = hf.state_of(shared.cache), hf.state_of(alone.cache)
        for li in range(len(alone.cache.layers)):
            assert torch.equal(a.positions[li], b.positions[li]), f"{method} layer {li}"
        assert torch.equal(shared.generate(question, **gen), alone.generate(question, **gen)), method
        assert shared.reconstruction_seconds == read.seconds > 0
    assert all(torch.equal(k, layer.keys) for k, layer in zip(keys, read.cache.layers))
    with pytest.raises(ValueError, match="snapkv.*does not score by reconstruction"):
        read.compress("snapkv", budget)
    one = hf.context.score_by_reconstruction(model, context, [hf.context.spec_of(METHODS["kvzip"])],
                                            repeat_ids=REPEAT)
    with pytest.raises(ValueError, match="kvzip\\+obc-key.*needs the reconstruction score"):
        one.compress("kvzip+obc-key", budget, window=WINDOW, sink=SINK)


def test_reconstruction_time_is_reported_next_to_eviction_time():
    model, context = tiny_model(), prompt(48)
    ctx = hf.compress_context(model, context, "kvzip+obc-key", 12, **opts())
    assert ctx.reconstruction_seconds > 0.0 and ctx.eviction_seconds > 0.0
    window = hf.compress_context(model, context, "snapkv+obc-key", 12, window=WINDOW, sink=SINK)
    assert window.reconstruction_seconds == 0.0 and window.eviction_seconds > 0.0
    whole = hf.compress_context(model, context, "kvzip", 1.0, **opts())  # nothing to evict: no reconstruction
    assert whole.reconstruction_seconds == 0.0 and whole.cache_length == 48


@pytest.mark.parametrize("method", ["kvzip+obc-joint", "adakv+kvzip+obc-key"])
def test_the_compressed_cache_answers_several_questions_without_being_modified(method):
    """Each question runs on a copy of the compressed cache (copy.deepcopy in
    CompressedContext.generate / forward), so the context is never touched."""
    model, context = tiny_model(), prompt(64)
    ctx = hf.compress_context(model, context, method, 16, **opts())
    snapshot = [(layer.keys.clone(), layer.values.clone(), layer.keys.data_ptr()) for layer in ctx.cache.layers]
    gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    questions = [prompt(5, seed=10), prompt(7, seed=11), prompt(3, seed=12)]
    answers = [ctx.generate(q, **gen) for q in questions]
    logits = [ctx.forward(q) for q in questions]
    assert torch.equal(ctx.generate(questions[0], **gen), answers[0])
    torch.testing.assert_close(ctx.forward(questions[0]), logits[0], rtol=0, atol=0)
    assert len({tuple(a[0].tolist()) for a in answers}) > 1
    for layer, (k, v, ptr) in zip(ctx.cache.layers, snapshot):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v) and layer.keys.data_ptr() == ptr
    for a, q in zip(answers, questions):  # the first answer token is the argmax of the teacher-forced logits
        assert int(ctx.forward(q)[0, -1].argmax()) == int(a[0, 0])


# ---------------------------------------------------------------------------
# AdaKV: heads of different lengths


def direct_forward(model, kept, ids, start):
    """Logits [1, T, V] of ids [1, T] read at positions start.. after a cache
    whose KV head h of layer l holds kept[l][0][h] / kept[l][1][h] ([n_h, D],
    post-RoPE): every attention written out per query head over exactly its
    KV head's rows, then the new tokens' own keys (causal). Returns the
    extended `kept` too (for greedy decoding)."""
    base = model.model
    with torch.no_grad():
        x = base.embed_tokens(ids)
        T = ids.shape[1]
        cos, sin = base.rotary_emb(x, position_ids=(start + torch.arange(T)).unsqueeze(0))
        new_kept = []
        for li, block in enumerate(base.layers):
            attn = block.self_attn
            h = block.input_layernorm(x)
            D = attn.head_dim
            q = attn.q_proj(h).view(1, T, -1, D).transpose(1, 2)
            k = attn.k_proj(h).view(1, T, -1, D).transpose(1, 2)
            v = attn.v_proj(h).view(1, T, -1, D).transpose(1, 2)
            q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)
            k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
            Hq, Hkv = q.shape[1], k.shape[1]
            G = Hq // Hkv
            ks = [torch.cat([kept[li][0][j], k[0, j]]) for j in range(Hkv)]
            vs = [torch.cat([kept[li][1][j], v[0, j]]) for j in range(Hkv)]
            new_kept.append((ks, vs))
            outs = []
            for g in range(Hq):
                kh, vh = ks[g // G], vs[g // G]
                past = kh.shape[0] - T
                z = q[0, g] @ kh.T * attn.scaling  # [T, past + T]
                causal = torch.arange(kh.shape[0])[None, :] <= (past + torch.arange(T))[:, None]
                outs.append(torch.softmax(z.masked_fill(~causal, float("-inf")), -1) @ vh)
            o = torch.stack(outs, 1).reshape(1, T, Hq * D)
            x = x + attn.o_proj(o)
            x = x + block.mlp(block.post_attention_layernorm(x))
        return model.lm_head(base.norm(x)), new_kept


def direct_greedy(model, kept, ids, start, n):
    """n greedy tokens after reading ids [1, T] at positions start.., each
    step computed by `direct_forward` (every head over its own kept rows)."""
    toks = []
    for _ in range(n):
        logits, kept = direct_forward(model, kept, ids, start)
        start += ids.shape[1]
        toks.append(int(logits[0, -1].argmax()))
        ids = torch.tensor([[toks[-1]]])
    return toks


def kept_rows(ctx):
    """Per layer ([k_h], [v_h]): each head's kept rows, its padded tail cut."""
    out = []
    for layer, lens in zip(ctx.cache.layers, ctx.lengths):
        n = lens[0].tolist()
        out.append(([layer.keys[0, j, : n[j]] for j in range(len(n))],
                    [layer.values[0, j, : n[j]] for j in range(len(n))]))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_adakv_heads_keep_different_lengths_and_questions_mask_each_heads_padding(attn):
    model, context = tiny_model(attn=attn), prompt(64)
    ctx = hf.compress_context(model, context, "adakv+kvzip+obc-key", 16, **opts())
    lens = torch.stack(ctx.lengths)  # [layers, 1, H_kv]
    assert bool((lens.sum(-1) == 2 * 16).all()) and bool((lens != 16).any())
    assert all(layer.keys.shape[2] == int(n.max()) for layer, n in zip(ctx.cache.layers, ctx.lengths))
    # the padded rows hold garbage: make it loud, so an unmasked tail shows
    for layer, n in zip(ctx.cache.layers, ctx.lengths):
        for j, nj in enumerate(n[0].tolist()):
            layer.keys[0, j, nj:] = 30.0
            layer.values[0, j, nj:] = 1e3
    question = prompt(6, seed=10)
    want, _ = direct_forward(model, kept_rows(ctx), question, 64)
    torch.testing.assert_close(ctx.forward(question), want, rtol=1e-4, atol=1e-4)
    # greedy decoding: one token at a time (the SDPA path packs GQA heads for one query)
    got = ctx.generate(question, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert got[0].tolist() == direct_greedy(model, kept_rows(ctx), question, 64, 6)


def test_adakv_refuses_attention_that_takes_no_per_head_mask():
    model = tiny_model()

    class Flash:
        config = type("C", (), {"_attn_implementation": "flash_attention_2"})()

    with pytest.raises(NotImplementedError, match="per-head mask.*flash_attention_2"):
        reconstruct.check_head_masking(Flash())
    reconstruct.check_head_masking(model)  # sdpa: fine


# ---------------------------------------------------------------------------
# errors


def test_a_padded_batch_raises_naming_the_method():
    model, ids = tiny_model(), prompt(40, batch=2)
    am = torch.ones_like(ids)
    am[1, :5] = 0
    with pytest.raises(NotImplementedError, match="kvzip.*padded"):
        hf.compress_context(model, ids, "kvzip", 12, attention_mask=am, **opts())


def test_an_unpadded_batch_compresses_each_row_on_its_own_scores():
    model, ids = tiny_model(), prompt(40, batch=2)
    both = hf.compress_context(model, ids, "kvzip+obc-key", 12, **opts())
    for b in range(2):
        one = hf.compress_context(model, ids[b:b + 1], "kvzip+obc-key", 12, **opts())
        for li in range(2):
            assert torch.equal(hf.state_of(both.cache).positions[li][b], hf.state_of(one.cache).positions[li][0])


def test_without_repeat_ids_or_a_tokenizer_it_says_to_pass_repeat_ids():
    with pytest.raises(ValueError, match="repeat_ids"):
        hf.compress_context(tiny_model(), prompt(40), "kvzip", 12, window=WINDOW, sink=SINK)


@pytest.mark.parametrize("kw, match", [(dict(query_reduce="mean"), "query_reduce"), (dict(floor=1.5), "floor"),
                                       (dict(reconstruction_chunk=0), "chunk_size")])
def test_bad_reconstruction_arguments_raise_naming_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        hf.compress_context(tiny_model(), prompt(40), "adakv+kvzip", 12, **opts(**kw))
