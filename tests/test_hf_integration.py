"""obcache.hf on tiny random transformers models (CPU, no downloads): one
model per supported architecture, built from a config."""
import copy
import re
import time

import pytest
import torch

from obcache.hf.hooks import TRANSFORMERS_MIN  # imports no transformers

transformers = pytest.importorskip("transformers", minversion=TRANSFORMERS_MIN)
from transformers import DynamicCache, StaticCache  # noqa: E402

import obcache.hf as hf  # noqa: E402
from obcache.methods import METHODS  # noqa: E402

ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
VOCAB = 128
WINDOW, SINK = 8, 2


def tiny_model(arch="llama", attn="sdpa", seed=0, **config):
    """A 2-layer random model: 4 query heads, 2 KV heads, head dim 16
    (`config`: more fields of its config)."""
    cfg_cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[arch]
    cfg = cfg_cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                  bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=False, **config)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()
    # Larger weights than the default init: attention that is not uniform,
    # so methods disagree and wrong positions show in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def prompt(n, seed=1, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (batch, n), generator=g)


def greedy(model, ids, n=8, **kw):
    am = kw.pop("attention_mask", torch.ones_like(ids))
    out = model.generate(ids, attention_mask=am, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=1, **kw)
    return out[:, ids.shape[1]:]


def opts(**kw):
    return dict(window=WINDOW, sink=SINK, **kw)


def rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), -1)


def window_queries(model, ids, layer, last):
    """Post-RoPE queries [B, H_q, last, D] of `layer` for the last tokens of
    ids, written out from the model's weights (independent of obcache.hf)."""
    base = model.model
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, use_cache=True)
        block = base.layers[layer]
        attn = block.self_attn
        x = block.input_layernorm(out.hidden_states[layer])
        B, N, _ = x.shape
        q = attn.q_proj(x).view(B, N, -1, attn.head_dim)
        if hasattr(attn, "q_norm"):
            q = attn.q_norm(q)
        q = q.transpose(1, 2)
        cos, sin = base.rotary_emb(x, position_ids=torch.arange(N).unsqueeze(0))
        q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)
    return q[:, :, -last:], out.cache.layers[layer], attn.scaling


# ---------------------------------------------------------------------------
# the method table


def test_methods_lists_every_method_of_the_issue_with_a_description():
    table = hf.methods()
    wanted = {"full", "streaming", "h2o", "tova", "snapkv", "vatp", "snapkv+obc-value", "snapkv+obc-key",
              "snapkv+obc-joint", "tova+obc-key", "h2o+obc-key", "snapkv+loo"}
    assert wanted <= set(table)
    assert all(isinstance(d, str) and d and "\n" not in d for d in table.values())
    assert list(table) == list(METHODS)


# ---------------------------------------------------------------------------
# no eviction is plain generate


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_full_method_is_token_identical_to_plain_generate(arch, attn):
    model, ids = tiny_model(arch, attn), prompt(40)
    ref = greedy(model, ids)
    with hf.compress(model, "full", 0.25, **opts()):
        assert torch.equal(greedy(model, ids), ref)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_budget_at_least_the_prompt_is_token_identical_to_plain_generate(method):
    model, ids = tiny_model("qwen3"), prompt(40)
    ref = greedy(model, ids)
    for budget in (40, 1.0):
        with hf.compress(model, method, budget, **opts()):
            assert torch.equal(greedy(model, ids), ref), (method, budget)


# ---------------------------------------------------------------------------
# what prefill keeps


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["snapkv+obc-key", "h2o", "tova+obc-key"])
def test_prefill_keeps_budget_tokens_chosen_by_select_from_recomputed_queries(arch, method):
    model, ids, budget = tiny_model(arch), prompt(64), 24
    row = METHODS[method]
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), hf.compress(model, method, budget, **opts()):
        model(ids, cache=cache, use_cache=True)
    st = hf.state_of(cache)
    for li, layer in enumerate(cache.layers):
        assert layer.keys.shape == (1, 2, budget, 16) and layer.values.shape == (1, 2, budget, 16)
        last = {"window": WINDOW, "last": 1, "prompt": ids.shape[1]}[row.queries]
        q, full, scale = window_queries(model, ids, li, last)
        scores = torch.ops.obcache.saliency(full.keys, full.values, q, row.score, group_reduce="sum", scale=scale,
                                            causal=True, query_reduce="sum")
        want = torch.ops.obcache.select(scores, budget, sink=SINK, recent=WINDOW if row.keep_recent else 0,
                                        pool_kernel=7 if row.pooled else 0, pool="max")
        assert torch.equal(st.positions[li], want), f"layer {li}"
        # the cache rows are the kept rows of the full cache, in order
        gather = want.unsqueeze(-1).expand(-1, -1, -1, 16)
        torch.testing.assert_close(layer.keys, full.keys.gather(2, gather))
        torch.testing.assert_close(layer.values, full.values.gather(2, gather))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_scoring_reads_q_proj_output_instead_of_running_q_proj_again(arch):
    # QueryTap: one q_proj call per layer and read, the model's own; the
    # kept tokens are those of the recomputed queries (the test above)
    model, ids = tiny_model(arch), prompt(64)
    calls = []
    handles = [layer.self_attn.q_proj.register_forward_hook(lambda m, a, out: calls.append(out.shape))
               for layer in model.model.layers]
    try:
        with torch.no_grad(), hf.compress(model, "snapkv+obc-key", 24, **opts()):
            model(ids, cache=DynamicCache(config=model.config), use_cache=True)
    finally:
        for h in handles:
            h.remove()
    assert calls == [(1, 64, model.config.num_attention_heads * 16)] * len(model.model.layers)


def test_query_tap_hands_out_each_output_once_and_recompute_falls_back_on_another_shape():
    from obcache.hf.queries import QueryTap, recompute_queries

    model = tiny_model()
    attn = model.model.layers[0].self_attn
    tap = QueryTap([attn])
    try:
        x = torch.randn(1, 10, model.config.hidden_size)
        with torch.no_grad():
            out = attn.q_proj(x)
            assert tap.take(attn) is out
            assert tap.take(attn) is None
            pe = model.model.rotary_emb(x, position_ids=torch.arange(10).unsqueeze(0))
            want = recompute_queries(attn, x, pe, last=4)
            # the projection of other hidden states (here of 9 tokens) is not used
            got = recompute_queries(attn, x, pe, last=4, projected=out[:, 1:])
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            torch.testing.assert_close(recompute_queries(attn, x, pe, last=4, projected=out), want)
    finally:
        tap.remove()
    attn.q_proj(x)
    assert tap.take(attn) is None  # removed: no hook keeps outputs


def test_streaming_keeps_the_sink_and_the_most_recent_tokens():
    model, ids = tiny_model(), prompt(50)
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), hf.compress(model, "streaming", 20, **opts()):
        model(ids, cache=cache, use_cache=True)
    want = torch.cat([torch.arange(SINK), torch.arange(50 - 20 + SINK, 50)])
    for li in range(2):
        assert torch.equal(hf.state_of(cache).positions[li], want.expand(1, 2, 20))


def test_eviction_seconds_counts_only_the_eviction_work():
    model, ids = tiny_model(), prompt(50)
    with torch.no_grad():
        with hf.compress(model, "full", 20, **opts()) as full:
            model(ids, cache=DynamicCache(config=model.config), use_cache=True)
        with hf.compress(model, "snapkv+obc-key", 20, **opts()) as h:
            t0 = time.perf_counter()
            model(ids, cache=DynamicCache(config=model.config), use_cache=True)
            total = time.perf_counter() - t0
    assert full.eviction_seconds == 0.0
    assert 0.0 < h.eviction_seconds < total


def test_the_cache_holds_kv_heads_only():
    model, ids = tiny_model(), prompt(48)
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), hf.compress(model, "snapkv", 0.5, **opts()):
        model(ids, cache=cache, use_cache=True)
    assert all(layer.keys.shape[1] == model.config.num_key_value_heads for layer in cache.layers)


# ---------------------------------------------------------------------------
# positions stay true


@pytest.mark.parametrize("arch", ARCHS)
def test_next_token_logits_attend_over_kept_kv_at_the_true_position(arch):
    model, ids, budget = tiny_model(arch), prompt(60), 20
    nxt = prompt(1, seed=7)
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), hf.compress(model, "snapkv+obc-key", budget, **opts()):
        model(ids, cache=cache, use_cache=True)
        got = model(nxt, cache=cache, use_cache=True).logits[0, -1]
    # Direct computation: a plain cache holding the kept keys/values (copied
    # after prefill), the new token at position 60, no hooks.
    kept = DynamicCache(config=model.config)
    ref_cache = DynamicCache(config=model.config)
    with torch.no_grad(), hf.compress(model, "snapkv+obc-key", budget, **opts()):
        model(ids, cache=ref_cache, use_cache=True)
    for li, layer in enumerate(ref_cache.layers):
        kept.update(layer.keys.clone(), layer.values.clone(), li)
    with torch.no_grad():
        direct = model(nxt, cache=copy.deepcopy(kept), position_ids=torch.tensor([[60]]),
                       use_cache=True).logits[0, -1]
        wrong = model(nxt, cache=copy.deepcopy(kept), position_ids=torch.tensor([[budget]]),
                      use_cache=True).logits[0, -1]
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(direct, wrong, atol=1e-3)  # the position does matter


def replay_greedy(model, ids, n, method, budget, **kw):
    """n greedy tokens without generate: compress the prompt under the hooks,
    then feed the tokens one by one from a plain cache holding the kept keys
    and values, with explicit positions T, T + 1, ... and no hooks."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        with hf.compress(model, method, budget, **kw, **opts()):
            logits = model(ids, cache=cache, use_cache=True).logits[:, -1]
        assert cache.get_seq_length() == budget
        toks = [logits.argmax(-1)]
        plain = DynamicCache(config=model.config)
        for li, layer in enumerate(cache.layers):
            plain.update(layer.keys.clone(), layer.values.clone(), li)
        for i in range(n - 1):
            out = model(toks[-1].view(1, 1), cache=plain, position_ids=torch.tensor([[ids.shape[1] + i]]))
            toks.append(out.logits[:, -1].argmax(-1))
    return torch.cat(toks)


def test_generate_inside_the_context_uses_true_positions():
    model, ids, budget = tiny_model(), prompt(60), 24
    with hf.compress(model, "snapkv", budget, **opts()):
        got = greedy(model, ids, n=6)
    assert torch.equal(got[0], replay_greedy(model, ids, 6, "snapkv", budget))


# ---------------------------------------------------------------------------
# chunked prefill and decode-time eviction


def test_chunked_prefill_keeps_the_cache_at_or_under_budget_plus_chunk():
    model, ids, budget, chunk = tiny_model("qwen2"), prompt(100), 24, 16
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), hf.compress(model, "snapkv+obc-key", budget, chunk_size=chunk, **opts()):
        logits = model(ids, cache=cache, use_cache=True).logits
    st = hf.state_of(cache)
    assert logits.shape == (1, 100, VOCAB)
    assert st.peak <= budget + chunk
    assert len(st.lengths) == 7 and all(n <= budget for n in st.lengths)
    assert st.columns == 100 and cache.get_seq_length() == budget
    assert int(st.positions[0].max()) == 99  # the last token is kept (recent window)


def test_chunked_prefill_refuses_outputs_it_would_give_for_the_last_chunk_only():
    model, ids = tiny_model(), prompt(40)
    with hf.compress(model, "snapkv", 20, **opts(chunk_size=16)), torch.no_grad():
        for name in ("output_hidden_states", "output_attentions"):
            with pytest.raises(NotImplementedError, match=f"chunk_size joins the chunks' last hidden states only; {name}"):
                model(ids, **{name: True})


def test_chunked_prefill_without_eviction_gives_the_plain_logits():
    model, ids = tiny_model(), prompt(70)
    with torch.no_grad():
        ref = model(ids).logits
        with hf.compress(model, "full", 1.0, chunk_size=16, **opts()):
            got = model(ids, use_cache=True).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_chunked_generate_continues_from_the_chunk_compressed_cache():
    model, ids, budget = tiny_model(), prompt(90), 32
    with hf.compress(model, "snapkv+obc-key", budget, chunk_size=20, **opts()):
        got = greedy(model, ids, n=5)
    want = replay_greedy(model, ids, 5, "snapkv+obc-key", budget, chunk_size=20)  # prefilled in chunks of 20
    assert got.shape == (1, 5) and torch.equal(got[0], want)


def test_decode_eviction_keeps_the_cache_within_decode_budget_over_200_steps():
    model, ids, decode_budget = tiny_model(), prompt(30), 40
    cache = DynamicCache(config=model.config)
    with hf.compress(model, "snapkv+obc-key", 1.0, decode_budget=decode_budget, **opts()):
        out = greedy(model, ids, n=200, cache=cache)
    st = hf.state_of(cache)
    assert out.shape == (1, 200)
    assert len(st.lengths) == 200 and max(st.lengths) <= decode_budget
    assert st.peak <= decode_budget + 1  # the step's own token, before its eviction
    assert st.columns == 229 and int(st.positions[1].max()) == 228


@pytest.mark.parametrize("method", ["h2o", "tova", "streaming"])
def test_decode_eviction_works_for_every_query_source(method):
    model, ids = tiny_model(), prompt(30)
    cache = DynamicCache(config=model.config)
    with hf.compress(model, method, 20, decode_budget=24, **opts()):
        greedy(model, ids, n=30, cache=cache)
    assert max(hf.state_of(cache).lengths) <= 24


# ---------------------------------------------------------------------------
# batches with left padding


@pytest.mark.parametrize("method", ["snapkv+obc-key", "criticalkv+obc-key"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_left_padded_batch_gives_each_prompts_tokens_alone(arch, attn, method):
    model, budget = tiny_model(arch, attn), 24
    a, b = prompt(50, seed=3), prompt(36, seed=4)
    with hf.compress(model, method, budget, **opts()):
        alone = [greedy(model, a), greedy(model, b)]
    ids = torch.cat([a, torch.cat([torch.full((1, 14), 1), b], 1)])
    am = torch.cat([torch.ones(1, 50, dtype=torch.long), torch.cat([torch.zeros(1, 14), torch.ones(1, 36)], 1).long()])
    cache = DynamicCache(config=model.config)
    with hf.compress(model, method, budget, **opts()):
        both = greedy(model, ids, attention_mask=am, cache=cache)
    assert torch.equal(both[0], alone[0][0]) and torch.equal(both[1], alone[1][0])
    pos = hf.state_of(cache).positions[0]
    assert int(pos[1].min()) >= 14  # padding is never kept


def test_a_padded_row_shorter_than_the_budget_keeps_all_its_tokens():
    model, budget = tiny_model(), 30
    a, b = prompt(50, seed=3), prompt(20, seed=4)
    with hf.compress(model, "snapkv", budget, **opts()):
        alone_b = greedy(model, b)
    ids = torch.cat([a, torch.cat([torch.full((1, 30), 1), b], 1)])
    am = torch.cat([torch.ones(1, 50), torch.cat([torch.zeros(1, 30), torch.ones(1, 20)], 1)]).long()
    with hf.compress(model, "snapkv", budget, **opts()):
        both = greedy(model, ids, attention_mask=am)
    assert torch.equal(both[1], alone_b[0])


def test_chunked_prefill_of_a_left_padded_batch_gives_each_prompts_tokens_alone():
    # Padding of a whole chunk, so both rows see the same chunk boundaries
    # as when they are alone (eviction depends on where chunks end).
    model, budget = tiny_model(), 24
    a, b = prompt(48, seed=3), prompt(32, seed=4)
    kw = opts(chunk_size=16)
    with hf.compress(model, "snapkv+obc-key", budget, **kw):
        alone = [greedy(model, a), greedy(model, b)]
        ids = torch.cat([a, torch.cat([torch.full((1, 16), 1), b], 1)])
        am = torch.cat([torch.ones(1, 48), torch.cat([torch.zeros(1, 16), torch.ones(1, 32)], 1)]).long()
        both = greedy(model, ids, attention_mask=am)
    assert torch.equal(both[0], alone[0][0]) and torch.equal(both[1], alone[1][0])


@pytest.mark.parametrize("arch", ["llama", "qwen3"])  # qwen3: generate hands a dict of masks, one per layer type
def test_a_left_padded_batch_in_a_static_cache_matches_the_dynamic_cache(arch):
    """generate gives a StaticCache a prepared 4D mask, not the 2D one: the
    padding must still be found, not scored, kept and attended as text."""
    model, budget = tiny_model(arch), 24
    a, b = prompt(50, seed=3), prompt(36, seed=4)
    ids = torch.cat([a, torch.cat([torch.full((1, 14), 1), b], 1)])
    am = torch.cat([torch.ones(1, 50, dtype=torch.long), torch.cat([torch.zeros(1, 14), torch.ones(1, 36)], 1).long()])
    cache = StaticCache(config=model.config, max_cache_len=72)
    with hf.compress(model, "snapkv+obc-key", budget, **opts()):
        want = greedy(model, ids, attention_mask=am)
        got = greedy(model, ids, attention_mask=am, cache=cache)
    assert torch.equal(got, want)
    assert int(hf.state_of(cache).positions[0][1].min()) >= 14  # padding is never kept


def test_right_padding_raises_naming_the_row():
    model = tiny_model()
    ids = prompt(40, batch=2)
    am = torch.ones_like(ids)
    am[1, 30:] = 0
    with hf.compress(model, "snapkv", 20, **opts()):
        with pytest.raises(ValueError, match="attention_mask row 1 has padding after a real token: obcache.hf "
                                             "needs left padding"):
            greedy(model, ids, attention_mask=am)


def test_generate_again_with_the_whole_history_on_an_evicted_cache_raises():
    """transformers cuts the ids at the cache's length, which eviction made
    shorter than what was read: tokens would be read twice."""
    model, ids = tiny_model(), prompt(48)
    cache = DynamicCache(config=model.config)
    with hf.compress(model, "snapkv", 20, **opts()):
        first = greedy(model, ids, n=4, cache=cache)
        history = torch.cat([ids, first, prompt(6, seed=9)], 1)
        with pytest.raises(ValueError, match=r"this cache was evicted after reading \[51\] real tokens per row, so "
                                             r"the next token's position_ids must be those, got \[23\]"):
            greedy(model, history, n=4, cache=cache)
    # a padded batch: generate hands the model its 2D mask, which must span what was read
    am = torch.cat([torch.ones(1, 48), torch.cat([torch.zeros(1, 8), torch.ones(1, 40)], 1)]).long()
    cache = DynamicCache(config=model.config)
    with hf.compress(model, "snapkv", 20, **opts()):
        first = greedy(model, torch.cat([ids, ids]), n=4, cache=cache, attention_mask=am)
        history = torch.cat([ids.expand(2, -1), first], 1)
        with pytest.raises(ValueError, match=r"this cache was evicted: it holds 23 of the 51 tokens read so far, so "
                                             r"the attention_mask of 29 new tokens must span 51 \+ 29 = 80 columns, "
                                             r"got 52"):
            greedy(model, history, n=4, cache=cache, attention_mask=torch.cat([am, torch.ones(2, 4).long()], 1))


# ---------------------------------------------------------------------------
# caches


def test_static_cache_is_compacted_in_place_and_matches_the_dynamic_cache():
    model, ids, budget = tiny_model(), prompt(48), 20
    with hf.compress(model, "snapkv+obc-key", budget, **opts()):
        ref = greedy(model, ids)
    cache = StaticCache(config=model.config, max_cache_len=64)
    # The layers allocate their buffers at their first update: allocated
    # first here, so that their addresses are known before the read.
    z = torch.zeros(1, 2, 1, 16)
    for layer in cache.layers:
        layer.lazy_initialization(z, z)
    ptrs = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    with hf.compress(model, "snapkv+obc-key", budget, **opts()):
        with torch.no_grad():
            model(ids, cache=cache, use_cache=True)
        assert int(cache.get_seq_length()) == budget
        assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers] == ptrs
        cache2 = StaticCache(config=model.config, max_cache_len=64)
        got = greedy(model, ids, cache=cache2)
        assert all(layer.keys.shape[2] == 64 for layer in cache2.layers)  # never reallocated
    assert torch.equal(got, ref)


@pytest.mark.parametrize("attn,arch", [("sdpa", "llama"), ("eager", "llama"), ("sdpa", "qwen3")])
def test_static_cache_with_chunked_prefill_matches_the_dynamic_cache(attn, arch):
    model, ids = tiny_model(arch, attn=attn), prompt(60)
    kw = opts(chunk_size=16)
    with hf.compress(model, "snapkv", 24, **kw):
        ref = greedy(model, ids)
        got = greedy(model, ids, cache=StaticCache(config=model.config, max_cache_len=80))
    assert torch.equal(got, ref)


def test_static_cache_with_decode_eviction_stays_within_its_preallocation():
    model, ids = tiny_model(), prompt(30)
    cache = StaticCache(config=model.config, max_cache_len=48)
    with hf.compress(model, "snapkv", 20, decode_budget=24, **opts()):
        out = greedy(model, ids, n=60, cache=cache)  # 90 tokens through a 48-row cache
    assert out.shape == (1, 60) and max(hf.state_of(cache).lengths) <= 24


def test_a_static_cache_of_a_sliding_window_model_raises_naming_the_layer_class():
    model, ids = tiny_model("mistral"), prompt(40)  # MistralConfig: sliding_window=4096
    with hf.compress(model, "snapkv", 20, **opts()):
        with pytest.raises(NotImplementedError, match="StaticSlidingWindowLayer"):
            greedy(model, ids, cache=StaticCache(config=model.config, max_cache_len=64))


# ---------------------------------------------------------------------------
# query-agnostic contexts


def test_compress_context_with_full_method_answers_like_plain_generate():
    model, ctx_ids, question = tiny_model(), prompt(50), prompt(6, seed=9)
    ref = greedy(model, torch.cat([ctx_ids, question], 1))
    ctx = hf.compress_context(model, ctx_ids, method="full", budget=1.0, **opts())
    assert ctx.context_length == 50
    assert torch.equal(ctx.generate(question, max_new_tokens=8, min_new_tokens=8, do_sample=False), ref)


def test_compress_context_answers_several_questions_on_copies_of_the_cache():
    model, ctx_ids = tiny_model(), prompt(64)
    q1, q2 = prompt(5, seed=10), prompt(7, seed=11)
    ctx = hf.compress_context(model, ctx_ids, method="snapkv+obc-key", budget=0.25, **opts())
    assert ctx.cache_length == 16 and ctx.context_length == 64
    gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    a1, a2, a1_again = ctx.generate(q1, **gen), ctx.generate(q2, **gen), ctx.generate(q1, **gen)
    assert a1.shape == (1, 6) and a2.shape == (1, 6)
    assert torch.equal(a1, a1_again) and ctx.cache_length == 16
    # the answer is what the compressed cache gives with true positions
    plain = DynamicCache(config=model.config)
    for li, layer in enumerate(ctx.cache.layers):
        plain.update(layer.keys.clone(), layer.values.clone(), li)
    with torch.no_grad():
        logits = model(q1, cache=plain, position_ids=torch.arange(64, 69).unsqueeze(0)).logits
    assert int(logits[0, -1].argmax()) == int(a1[0, 0])
    torch.testing.assert_close(ctx.forward(q1), logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="makes the attention mask itself"):
        ctx.generate(q1, attention_mask=torch.ones(1, 69, dtype=torch.long), **gen)
    with pytest.raises(ValueError, match=r"question_ids must be int64 \[B, T\] with the context's batch size B = 1 "
                       r".*got shape \(2, 5\)"):
        ctx.generate(q1.repeat(2, 1), **gen)
    with pytest.raises(ValueError, match=r"ids must be int64 \[B, T\] with the context's batch size B = 1"):
        ctx.forward(q1[0])


# ---------------------------------------------------------------------------
# hooks, errors


def test_hooks_are_gone_after_the_context_exits_even_when_the_body_raised():
    model = tiny_model()
    before = {n: p.clone() for n, p in model.named_parameters()}

    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    n0 = count()
    with pytest.raises(RuntimeError, match="boom"):
        with hf.compress(model, "snapkv+obc-key", 0.5, **opts()):
            assert count() > n0
            greedy(model, prompt(40))
            raise RuntimeError("boom")
    assert count() == n0
    handle = hf.compress(model, "snapkv", 0.5, **opts())
    assert count() > n0
    with pytest.raises(RuntimeError, match="already"):
        hf.compress(model, "snapkv", 0.5)
    handle.remove()
    assert count() == n0 and not hasattr(model.model, "_obcache_compression")
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_an_evicted_cache_refuses_reads_once_the_hooks_are_gone_and_continues_under_new_ones():
    model, ids, step = tiny_model(), prompt(40), prompt(1, seed=5)
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    with torch.no_grad():
        with hf.compress(model, "snapkv", 16, **opts()):
            greedy(model, ids, n=2, cache=caches[0])
            ref = model(step, cache=caches[0]).logits
        with hf.compress(model, "snapkv", 16, **opts()):
            greedy(model, ids, n=2, cache=caches[1])
        n = caches[1].get_seq_length()
        # Without the hooks transformers would put the token at position n = 18 instead of 42.
        with pytest.raises(RuntimeError, match="this cache was evicted by obcache.hf.compress, whose hooks have "
                           "been removed"):
            model(step, cache=caches[1])
        assert caches[1].get_seq_length() == n
        with hf.compress(model, "snapkv", 16, **opts()):
            got = model(step, cache=caches[1]).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_a_cache_the_hooks_did_not_evict_stays_usable_without_them():
    model, ids = tiny_model(), prompt(12)
    cache = DynamicCache(config=model.config)
    with hf.compress(model, "snapkv", 16, **opts()):  # 12 tokens and 1 generated one read: under the budget
        greedy(model, ids, n=2, cache=cache)
    with torch.no_grad():
        model(prompt(1, seed=5), cache=cache)
    assert cache.get_seq_length() == 14


def test_head_adaptive_methods_refuse_attention_without_per_head_masks_when_the_hooks_are_made():
    model = tiny_model()
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(NotImplementedError, match="attn_implementation='flex_attention'"):
        hf.compress(model, "adakv+snapkv", 16, **opts())
    assert not hasattr(model.model, "_obcache_compression")


def test_a_removed_handle_cannot_be_entered_again():
    model = tiny_model()
    handle = hf.compress(model, "snapkv", 16, **opts())
    with handle:
        pass
    with pytest.raises(RuntimeError, match="this Compression's hooks were removed"):
        with handle:
            pass


def test_full_on_a_sliding_window_model_past_its_window_generates_like_plain():
    model, ids = tiny_model("mistral", sliding_window=24), prompt(40)
    ref = greedy(model, ids)
    with hf.compress(model, "full", 1.0, **opts()):
        got = greedy(model, ids)
    assert torch.equal(got, ref)


def test_prompt_lookup_decoding_raises_instead_of_cropping_an_evicted_cache():
    model, ids = tiny_model(), prompt(20).repeat(1, 2)  # repeated text: prompt lookup finds drafts
    with hf.compress(model, "snapkv", 16, **opts()):
        with pytest.raises(NotImplementedError, match="does not support assisted or prompt-lookup decoding"):
            greedy(model, ids, prompt_lookup_num_tokens=3)


def test_numpy_budgets_count_as_ints_and_fractions():
    np = pytest.importorskip("numpy")
    model, ids = tiny_model(), prompt(40)
    lengths = []
    for budget in (16, np.int64(16), 0.4, np.float32(0.4)):
        cache = DynamicCache(config=model.config)
        with hf.compress(model, "snapkv", budget, **opts()):
            greedy(model, ids, n=1, cache=cache)
        lengths.append(hf.state_of(cache).lengths[0])
    assert lengths == [16, 16, 16, 16]


def test_beam_search_raises_instead_of_scoring_another_beams_queries():
    model, ids = tiny_model(), prompt(40)
    with hf.compress(model, "snapkv", 20, decode_budget=30, **opts()):
        with pytest.raises(NotImplementedError, match=r"obcache.hf does not support beam search \(num_beams > 1\)"):
            greedy(model, ids, num_beams=2)


@pytest.mark.parametrize("version", ["4.56.1", "5.17.0", "5.24.0rc1", "6.0.0"])
def test_a_transformers_release_outside_5_24_to_6_raises_naming_it(monkeypatch, version):
    from obcache.hf import hooks

    model = tiny_model()
    monkeypatch.setattr(hooks, "_transformers_version", lambda: version)
    with pytest.raises(ImportError, match=r"obcache.hf needs transformers >= 5.24, < 6 \(tested with 5.24.0\), "
                                          rf"found {re.escape(version)}: pip install"):
        hf.compress(model, "snapkv", 20)


@pytest.mark.parametrize("version", ["5.24.0", "5.31.2"])
def test_a_transformers_release_from_5_24_on_is_accepted(monkeypatch, version):
    from obcache.hf import hooks

    model = tiny_model()
    monkeypatch.setattr(hooks, "_transformers_version", lambda: version)
    with hf.compress(model, "snapkv", 20):
        pass


def test_unsupported_model_raises_naming_its_class():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(NotImplementedError, match="GPT2"):
        hf.compress(model, "snapkv", 0.5)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(method="nope", budget=0.5), "method.*'nope'"),
        (dict(method="snapkv", budget=0.0), r"budget as a fraction of the prompt must be in \(0, 1\], got 0\.0"),
        (dict(method="snapkv", budget=1.5), r"budget as a fraction of the prompt must be in \(0, 1\], got 1\.5"),
        (dict(method="snapkv", budget=0), "budget in tokens per KV head must be >= 1, got 0"),
        (dict(method="snapkv", budget=0.5, window=0), "window must be an int >= 1, got 0"),
        (dict(method="snapkv", budget=0.5, pool="mean"), "pool must be 'max' or 'avg', got 'mean'"),
        (dict(method="snapkv", budget=0.5, chunk_size=0), "chunk_size must be None or an int >= 1, got 0"),
        (dict(method="snapkv", budget=0.5, decode_budget=5), r"decode_budget must be an int >= .* = \d+, got 5"),
        (dict(method="full", budget=0.5, decode_budget=64), "decode_budget=64 needs an evicting method, got "
                                                             "method='full'"),
    ],
)
def test_bad_arguments_raise_naming_the_argument_and_value(kw, match):
    with pytest.raises(ValueError, match=match):
        hf.compress(tiny_model(), **kw)


def test_a_budget_below_sink_plus_window_raises_naming_the_budget_before_any_layer_reads():
    model = tiny_model()
    cache = DynamicCache(config=model.config)
    with hf.compress(model, "snapkv", 0.1, **opts()):
        with pytest.raises(ValueError, match=r"budget=0\.1 gives 6 tokens per KV head, fewer than sink \+ window = "
                                             r"2 \+ 8"):
            greedy(model, prompt(60), cache=cache)
    assert cache.get_seq_length() == 0  # no layer appended its keys before the error


# ---------------------------------------------------------------------------
# the window's attention output, taken from the model (OutputTap)


def _recording_ops(monkeypatch):
    """Records the `o` each saliency / evict call of the integration gets."""
    import obcache.hf.hooks as hooks

    seen = []

    class Ops:
        def __getattr__(self, name):
            op = getattr(torch.ops.obcache, name)
            if name not in ("saliency", "evict"):
                return op

            def call(*args, **kw):
                seen.append((name, args[2], kw.get("o")))
                return op(*args, **kw)

            return call

    monkeypatch.setattr(hooks, "_ops", lambda: Ops())
    return seen


@pytest.mark.parametrize("method", ["snapkv+obc-key", "criticalkv+obc-key", "adakv+obc-key"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_key_scores_read_the_models_attention_output_of_the_window(method, attn, monkeypatch):
    model, ids = tiny_model("llama", attn), prompt(64)
    seen = _recording_ops(monkeypatch)
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), hf.compress(model, method, 24, **opts()):
        model(ids, cache=cache, use_cache=True)
    assert len(seen) == len(model.model.layers)
    for li, (name, q, o) in enumerate(seen):
        want_q, full, scale = window_queries(model, ids, li, WINDOW)
        torch.testing.assert_close(q, want_q)
        # softmax(q K^T) V over the full cache, KV heads repeated to the query heads
        kk = full.keys.repeat_interleave(2, dim=1)
        vv = full.values.repeat_interleave(2, dim=1)
        z = (want_q @ kk.transpose(-1, -2)) * scale
        z = z.masked_fill(torch.arange(64)[None, :] > torch.arange(64 - WINDOW, 64)[:, None], float("-inf"))
        assert o is not None and o.shape == q.shape, f"layer {li} ({name})"
        torch.testing.assert_close(o, z.softmax(-1) @ vv, rtol=1e-5, atol=1e-6)


def test_attention_only_rows_and_decode_steps_take_no_attention_output(monkeypatch):
    model, ids = tiny_model(), prompt(30)
    seen = _recording_ops(monkeypatch)
    n0 = sum(len(layer.self_attn.o_proj._forward_pre_hooks) for layer in model.model.layers)
    with hf.compress(model, "snapkv", 20, **opts()):  # reads no O: no tap on o_proj
        assert sum(len(layer.self_attn.o_proj._forward_pre_hooks) for layer in model.model.layers) == n0
        greedy(model, ids, n=2, cache=DynamicCache(config=model.config))
    assert seen and all(o is None for _, _, o in seen)
    seen.clear()
    # decode-time eviction scores with queries of earlier steps: their outputs saw another cache
    cache = DynamicCache(config=model.config)
    with hf.compress(model, "snapkv+obc-key", 1.0, decode_budget=24, **opts()):
        greedy(model, ids, n=6, cache=cache)
    assert seen and all(o is None for _, _, o in seen)
