"""`obcache eval`: every eviction method measured on a real model.

    obcache eval                      # quick run (< 5 min on 2 CPU cores): headline table
    obcache eval --full               # the issue's methods at 5/10/20/50%
    obcache eval --tasks fidelity,perturbation --methods snapkv,snapkv+obc-key --budgets 5%,20%
    obcache eval --model DIR --text FILE --out DIR

Tasks (obcache/eval/tasks/): passkey retrieval, query-aware and
query-agnostic, with Wilson 95% intervals; fidelity, KL(full || compressed)
and top-1 agreement of the next-token distributions on real text;
perplexity while reading in chunks with eviction; attention-output
perturbation per layer and head, with an oracle scored on the future queries.

Outputs under --out (default ./eval_out): results.json (every number and
setting), passkey_accuracy.png, fidelity_kl.png, perplexity.png,
perturbation_layers.png; the table goes to stdout, progress bars to stderr.

Modules: cli (flags, presets, checks, the run), models (loading, the cached
GGUF), backend (the only caller of obcache.hf: every row, `full` included,
is compressed by the integration), policies (tokens each method keeps from
a captured pass, read from obcache.methods.METHODS, for the perturbation
task), capture (post-RoPE q, k, v of a forward pass), report (table, JSON,
plots), stats, text, tiny (a tiny random model for tests).
"""
