"""Stand-in compression used by the harness where `obcache.hf` cannot be
imported, and for the `full` reference rows: prefill with the cache, then
compress each layer's DynamicCache in place with the tokens
`obcache.eval.policies` picks from the prefill's own queries (SnapKV-style:
the prefill itself attends to everything; eviction happens after it).
Kept keys keep their RoPE phase, so later tokens get their original
positions (position_ids) while the mask follows the shorter cache.
Head-adaptive methods (heads of different lengths) are not supported here.
"""
import copy

import torch

from obcache.eval import policies
from obcache.eval.capture import capturing


def method_table():
    """The methods of obcache.methods this stand-in can run, with their descriptions."""
    from obcache.methods import methods

    return {name: desc for name, desc in methods().items() if policies.supported(name, adaptive=False)}


def budget_tokens(budget, n):
    """Tokens per KV head: a float in (0, 1] is a fraction of n, an int is a count."""
    return int(round(budget * n)) if isinstance(budget, float) else int(budget)


def compress_cache(cache, captured, method, budget, cfg):
    """Evict in place: each layer of `cache` keeps `budget` tokens per KV head.
    captured: layer -> (q, k, v, scale) of the forward pass that filled it."""
    if method == "full":
        return
    for i, layer in enumerate(cache.layers):
        q, _, _, scale = captured[i]
        k, v = layer.keys, layer.values
        if budget >= k.shape[2]:
            continue
        idx = policies.keep_indices(method, q, k, v, budget, cfg, scale)
        gather = idx.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1])
        layer.keys, layer.values = k.gather(2, gather), v.gather(2, gather)


class CompressedContext:
    """A prefilled, compressed context; ask it any number of questions.

    cache: the compressed DynamicCache; context_length: tokens of the
    original context (the next token's position); last_logits [1, V]."""

    def __init__(self, model, cache, context_length, last_logits):
        self.model, self.cache = model, cache
        self.context_length, self.last_logits = context_length, last_logits

    def _feed(self, cache, ids, pos):
        """Run ids [1, T] at positions pos.. on cache; (last logits [1, V], next position)."""
        p = torch.arange(pos, pos + ids.shape[1]).unsqueeze(0)
        out = self.model(ids, past_key_values=cache, position_ids=p, use_cache=True)
        return out.logits, pos + ids.shape[1]

    def forward(self, ids):
        """Logits [1, T, V] of feeding ids [1, T] after the context (on a copy of the cache)."""
        with torch.no_grad():
            return self._feed(copy.deepcopy(self.cache), ids, self.context_length)[0]

    def generate(self, question_ids=None, max_new_tokens=8, eos_token_id=None, **_):
        """Greedy answer [1, new] to question_ids [1, Tq] (None: continue the context)."""
        cache, pos, logits = copy.deepcopy(self.cache), self.context_length, self.last_logits
        eos = self.model.config.eos_token_id if eos_token_id is None else eos_token_id
        eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        out = []
        with torch.no_grad():
            if question_ids is not None and question_ids.shape[1]:
                logits, pos = self._feed(cache, question_ids, pos)
                logits = logits[:, -1]
            while len(out) < max_new_tokens:
                out.append(int(logits.argmax(-1)))
                if out[-1] in eos or len(out) == max_new_tokens:
                    break
                logits, pos = self._feed(cache, torch.tensor([out[-1:]]), pos)
                logits = logits[:, -1]
        return torch.tensor([out], dtype=torch.long)


def compress_context(model, ids, method, budget, cfg):
    """Prefill ids [1, N], compress to `budget` (see budget_tokens); a CompressedContext."""
    with capturing(model) as store, torch.no_grad():
        out = model(ids, use_cache=True, logits_to_keep=1)  # the LM head over every token costs more than the rest
    compress_cache(out.past_key_values, store, method, budget_tokens(budget, ids.shape[1]), cfg)
    return CompressedContext(model, out.past_key_values, ids.shape[1], out.logits[:, -1])


def chunked_logits(model, ids, method, budget, chunk, cfg):
    """Read ids [1, T] in chunks, compressing to `budget` tokens after each; logits [1, T, V]."""
    from transformers import DynamicCache

    cache, pieces = DynamicCache(config=model.config), []
    for start in range(0, ids.shape[1], chunk):
        piece = ids[:, start:start + chunk]
        pos = torch.arange(start, start + piece.shape[1]).unsqueeze(0)
        with capturing(model) as store, torch.no_grad():
            pieces.append(model(piece, past_key_values=cache, position_ids=pos, use_cache=True).logits)
        compress_cache(cache, store, method, budget, cfg)
    return torch.cat(pieces, dim=1)
