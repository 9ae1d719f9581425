"""Passkey retrieval: a 5-digit key hidden at several depths in filler text.

Two modes:
- query-aware: the question ends the prompt, so it is inside the scoring
  window when the prompt is compressed (`obcache.hf.compress` around
  `generate`);
- query-agnostic: the context alone is compressed first, then the question is
  asked on the compressed cache (`obcache.hf.compress_context`), the serving case.
A trial passes when the first number of the answer is the key.
"""
import random
import re
import time

import torch

from obcache.eval import backend
from obcache.eval.models import EvalError
from obcache.eval.stats import wilson
from obcache.hf.hooks import resolve_budget
from obcache.methods import get_method

INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"


def build_trial(tokenizer, length, depth, key):
    """Token ids (context, question) of one trial: the needle sits at `depth`
    (0 = start, 1 = end) of filler so that context + question is about
    `length` tokens."""
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    intro, filler, needle, question = enc(INTRO), enc(FILLER), enc(NEEDLE.format(key=key)), enc(QUESTION)
    n_fill = max(0, length - len(intro) - len(needle) - len(question))
    body = (filler * (n_fill // len(filler) + 1))[:n_fill]
    # the needle goes between two filler paragraphs, so it is never glued into a word
    whole = n_fill // len(filler) * len(filler)
    at = min(whole, int(round(depth * n_fill / len(filler))) * len(filler))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    context = bos + intro + body[:at] + needle + body[at:]
    return context, question


def make_trials(tokenizer, lengths, depths, trials_per_depth, seed):
    """List of dicts {length, depth, key, context, question} with fixed keys (seeded)."""
    rng = random.Random(seed)
    out = []
    for length in lengths:
        for depth in depths:
            for _ in range(trials_per_depth):
                key = str(rng.randint(10000, 99999))
                ctx, q = build_trial(tokenizer, length, depth, key)
                out.append({"length": length, "depth": depth, "key": key, "context": ctx, "question": q})
    return out


def _passed(tokenizer, new_ids, key):
    """True when the first number in the answer is exactly the key ("123456" for 12345 fails)."""
    number = re.search(r"\d+", tokenizer.decode(new_ids, skip_special_tokens=True))
    return number is not None and number.group() == key


def check_budgets(trials, budgets, cfg):
    """Before the first cell: every budget must leave sink + window tokens of
    what each mode compresses (the context alone when query-agnostic, context
    and question when query-aware), which needs the tokenised trials; a cell
    that raised midway would lose every result before it."""
    floor = cfg.sink + cfg.window
    sizes = {"query-agnostic": min(len(t["context"]) for t in trials),
             "query-aware": min(len(t["context"]) + len(t["question"]) for t in trials)}
    for mode in cfg.modes:
        n = sizes[mode]
        for b in budgets:
            kept = resolve_budget(b, n)
            if kept < min(n, floor):
                raise EvalError(f"--budgets: {b:g} of the shortest {mode} passkey prompt ({n} tokens, "
                                f"--lengths {min(cfg.lengths)}) keeps {kept} tokens, below sink + "
                                f"window = {floor} (--sink {cfg.sink}, --window {cfg.window})")


def run(model, tokenizer, cfg, methods, budgets, progress, emit=lambda record: None):
    """Accuracy per (method, budget, mode); returns a list of records with
    per-trial outcomes (length, depth, passed) so any breakdown can be redone.
    Each prompt is prefilled (and, for kvzip rows, reconstructed) once for
    all cells that can share it (`backend.SharedReads`); `seconds` is a
    cell's own time after that prefill, `prefix_s` the prefill time its
    trials stood on. emit(record) is called as each cell finishes."""
    trials = make_trials(tokenizer, cfg.lengths, cfg.depths, cfg.trials, cfg.seed)
    check_budgets(trials, budgets, cfg)
    gen = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **backend.GREEDY)
    shared = backend.SharedReads(model, cfg, methods)
    records = []
    for method, budget, mode in _grid(methods, budgets, cfg.modes):
        outcomes, seconds, evict_s, prefix_s, kv_bytes = [], 0.0, 0.0, 0.0, []
        for i, t in enumerate(trials):
            ctx_ids, q_ids = torch.tensor([t["context"]]), torch.tensor([t["question"]])
            if mode == "query-aware":
                ids = torch.cat([ctx_ids, q_ids], 1)
                prefix, p = shared.prefix((mode, i), ids, method)
                new, s, e = backend.answer_query_aware(model, ids, method, budget, cfg, prefix=prefix, **gen)
            else:
                ctx, s, p = shared.compress_context((mode, i), ctx_ids, method, budget)
                e = ctx.eviction_seconds + ctx.reconstruction_seconds
                kv_bytes.append(backend.cache_stats(ctx.cache)[0])
                t0 = time.perf_counter()
                new = ctx.generate(q_ids, **gen)
                s += time.perf_counter() - t0
            seconds, evict_s, prefix_s = seconds + s, evict_s + e, prefix_s + p
            passed = _passed(tokenizer, new[0], t["key"])
            outcomes.append({"length": t["length"], "depth": t["depth"], "passed": passed})
            progress.update(1)
        k, n = sum(o["passed"] for o in outcomes), len(outcomes)
        lo, hi = wilson(k, n)
        records.append({
            "method": method, "budget": budget, "mode": mode, "correct": k, "trials": n,
            "accuracy": k / n, "ci95": [lo, hi], "seconds": seconds, "prefix_s": prefix_s,
            "evict_s_per_trial": evict_s / n,
            "kv_bytes_mean": sum(kv_bytes) / len(kv_bytes) if kv_bytes else None, "outcomes": outcomes,
        })
        emit(records[-1])
    return records


def _grid(methods, budgets, modes):
    """(method, budget, mode) cells; `full` is run once per mode (budget 1.0).
    Reconstruction rows (kvzip...) exist only query-agnostic (compress_context)."""
    for mode in modes:
        for method in methods:
            if mode == "query-aware" and get_method(method).reconstructs:
                continue
            for budget in ([1.0] if method == "full" else budgets):
                yield method, budget, mode


def count(cfg, methods, budgets):
    """Number of generate calls `run` makes (for the progress bar)."""
    cells = sum(1 for _ in _grid(methods, budgets, cfg.modes))
    return cells * len(cfg.lengths) * len(cfg.depths) * cfg.trials
