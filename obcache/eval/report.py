"""The eval's outputs: a table on stdout, one JSON with every number and the
settings, and PNG plots (accuracy and KL vs budget, perplexity vs tokens
read, perturbation per layer)."""
import json
import os
import platform

# 2: fidelity, perturbation and perplexity over text windows (kl_windows, kl_per_position
# [windows][F]; error_windows, mean_error_windows; ppl_windows, curve_windows); *_paired tables
SCHEMA = "obcache-eval/2"


def model_facts(model):
    c = model.config
    return {
        "layers": c.num_hidden_layers,
        "q_heads": c.num_attention_heads,
        "kv_heads": getattr(c, "num_key_value_heads", c.num_attention_heads),
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def versions():
    """What produced the numbers: the software, the extension's build, the
    commit when run from a git checkout, and the CPU threads torch used."""
    import torch
    import transformers

    import obcache

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "obcache": obcache.__version__, "obcache_commit": _commit(), "obcache_build": obcache.build_info(),
            "threads": torch.get_num_threads(), "cpu": _cpu_model(), "machine": platform.machine()}


def _commit():
    """The source checkout's HEAD (None outside a git checkout)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _fmt_acc(r):
    lo, hi = r["ci95"]
    return f"{r['accuracy']:.2f} [{lo:.2f},{hi:.2f}] n={r['trials']}"


def summary_rows(results):
    """One row per (method, budget): the headline numbers of every task that ran."""
    rows = {}

    def row(method, budget):
        return rows.setdefault((method, budget), {"method": method, "budget": budget})

    tasks = results["tasks"]
    for r in tasks.get("passkey", []):
        x = row(r["method"], r["budget"])
        x[f"passkey {r['mode']}"] = _fmt_acc(r)
        if r["mode"] == "query-agnostic" and r.get("kv_bytes_mean") is not None and not tasks.get("fidelity"):
            # no fidelity run: the method's cost and memory on the passkey contexts instead
            x.update({"KV MiB": r["kv_bytes_mean"] / 2**20, "evict ms": 1000 * r["evict_s_per_trial"]})
    for r in tasks.get("fidelity", []):
        x = row(r["method"], r["budget"])
        x.update({"KL": r["kl"], "top1": r["top1"], "KV MiB": r["kv_bytes"] / 2**20,
                  "evict ms": 1000 * (r["evict_s"] + r.get("reconstruction_s", 0.0)),
                  "prefill+evict s": r["compress_s"] + r.get("prefix_s", 0.0) + r.get("reconstruction_s", 0.0)})
    pert = tasks.get("perturbation", {})
    wins = {(w["method"], w["budget"]): w for w in pert.get("win_shares", [])}
    for r in pert.get("records", []):
        x = row(r["method"], r["budget"])
        x["out err"] = r["mean_error"]
        x["score+select ms"] = r["select_ms"]
        w = wins.get((r["method"], r["budget"]))
        if w:
            x["wins vs base"] = f"{100 * w['win_share']:.0f}% vs {w['base']}"
    order = {m: i for i, m in enumerate(list(results["methods"]) + ["oracle"])}
    return [rows[k] for k in sorted(rows, key=lambda k: (order.get(k[0], 99), k[1]))]


def paired_rows(results):
    """Passkey, each OBC row against its attention-only base (same pipeline,
    same budget, mode and prompts: obcache.methods.base_of), trial by trial:
    how many prompts only one of the two answered, and the exact McNemar
    p-value of that split. Paired, so it can tell two rows apart where their
    Wilson intervals overlap."""
    from obcache.eval.stats import mcnemar_exact
    from obcache.methods import base_of

    records = results["tasks"].get("passkey", [])
    by = {(r["method"], r["budget"], r["mode"]): r for r in records}
    rows = []
    for r in records:
        base = base_of(r["method"], results["methods"])
        ref = by.get((base, r["budget"], r["mode"]))
        if ref is None:
            continue
        pairs = list(zip(r["outcomes"], ref["outcomes"]))
        # The same prompts in the same order: passkey.run makes one trial list for every cell.
        assert len(r["outcomes"]) == len(ref["outcomes"])
        assert all((a["length"], a["depth"]) == (b["length"], b["depth"]) for a, b in pairs)
        only = sum(a["passed"] and not b["passed"] for a, b in pairs)
        only_base = sum(b["passed"] and not a["passed"] for a, b in pairs)
        rows.append({"method": r["method"], "base": base, "budget": r["budget"], "mode": r["mode"],
                     "trials": len(pairs), "both": sum(a["passed"] and b["passed"] for a, b in pairs),
                     "only method": only, "only base": only_base, "p (McNemar)": mcnemar_exact(only, only_base)})
    return rows


def _window_paired_rows(records, methods, per_window, mean, what):
    """Each OBC row of `records` against its attention-only base at the same
    budget, text window by text window (the same windows): on how many
    windows its `per_window` measure is lower and higher, its `mean` over
    the base's, and the exact two-sided sign test over the windows that
    differ (the binomial test of mcnemar_exact). Windows, not positions or
    heads, are the samples: what one window measures shares its context."""
    from obcache.eval.stats import mcnemar_exact
    from obcache.methods import base_of

    def budget(r):  # perplexity's budget is in tokens
        return r["budget"] if "budget" in r else r["budget_tokens"]

    by = {(r["method"], budget(r)): r for r in records}
    rows = []
    for r in records:
        ref = by.get((base_of(r["method"], methods), budget(r)))
        # no base, a run from before the windows, or one window: nothing to pair
        if ref is None or len(r.get(per_window, [])) < 2:
            continue
        mine, base = r[per_window], ref[per_window]
        assert len(mine) == len(base)  # every cell runs on every window
        lower = sum(a < b for a, b in zip(mine, base))
        higher = sum(a > b for a, b in zip(mine, base))
        rows.append({"method": r["method"], "base": ref["method"], "budget": budget(r), "windows": len(mine),
                     f"{what} lower": lower, f"{what} higher": higher,
                     f"{what} / base {what}": r[mean] / ref[mean] if ref[mean] > 0 else None,
                     "p (sign test)": mcnemar_exact(lower, higher)})
    return rows


def fidelity_paired_rows(results):
    """Fidelity's KL, each OBC row against its base window by window (_window_paired_rows)."""
    return _window_paired_rows(results["tasks"].get("fidelity", []), results["methods"], "kl_windows", "kl", "KL")


def perplexity_paired_rows(results):
    """Perplexity, each OBC row against its base window by window (_window_paired_rows)."""
    return _window_paired_rows(results["tasks"].get("perplexity", []), results["methods"], "ppl_windows", "ppl",
                               "ppl")


def perturbation_paired_rows(results):
    """Perturbation's mean output error (over layers and KV heads), each OBC
    row against its base window by window (_window_paired_rows)."""
    records = results["tasks"].get("perturbation", {}).get("records", [])
    return _window_paired_rows(records, results["methods"], "mean_error_windows", "mean_error", "err")


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_table(rows, columns=None):
    """Rows of dicts as an aligned text table (missing cells print '-')."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for r in rows:
            columns += [c for c in r if c not in columns]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def perplexity_rows(results):
    rows = []
    for r in results["tasks"].get("perplexity", []):
        rows.append({"method": r["method"], "budget tokens": r["budget_tokens"] or "all",
                     "tokens read": r["curve"][-1][0], "ppl": r["ppl"], "evict ms": 1000 * r["evict_s"],
                     "seconds": r["seconds"]})
    return rows


LEGEND = """\
passkey: accuracy [95% Wilson interval] n=trials; query-aware keeps budget x (context + question)
tokens, the question among them, query-agnostic budget x context, then reads the question.  KL: mean
KL(full || compressed) in nats of the next-token distributions over the fed tokens, averaged over
the fidelity text windows; top1: agreement with the full cache.  KV MiB: K and V held after
compressing a fidelity context (mean over the windows).  evict ms: the method's own cost on it
(obcache.hf's eviction_seconds: window queries, scoring, selection, compaction; plus the
reconstruction pass for kvzip rows).  prefill+evict s: compress_context wall time on it (the
shared prefill included, and for kvzip rows the shared reconstruction pass, which scores every
kvzip row of the run at once); costs are means over the windows.
out err: ||O_pruned - O_full|| / ||O_full|| of the future queries' attention output, mean over
layers, KV heads and the perturbation text windows; score+select ms: saliency + select summed over
layers (per window).  wins vs base: share of (window, layer, KV head) triples where the OBC score's
error is below its attention-only base's.  oracle: scored with the future queries themselves,
unpooled, the better of attn and key per head: a reference for window-based scores, not a strict
ceiling (the queries that score it also measure it)."""


def text_report(results):
    s = results["settings"]
    m = results["model"]
    given = s.get("overrides") or []
    preset = s["preset"] + (f" preset, {', '.join(given)} given" if given else "")
    head = (f"obcache eval ({preset}): {m['model']}, {m['layers']} layers, {m['kv_heads']} KV heads; "
            f"window {s['window']}, sink {s['sink']}, pool {s['pool']}{s['pool_kernel']}; "
            f"{results['seconds']['total']:.0f} s")
    parts = [head, "", format_table(results["table"]), "", LEGEND]
    paired = results.get("passkey_paired") or []
    if paired:
        parts += ["", "passkey, paired with the attention-only base on the same prompts\n(p: exact two-sided "
                      "McNemar over the prompts only one of the two answered):", format_table(paired)]
    for task, what, ratio in (("fidelity", "KL", "of the means over the windows"),
                              ("perturbation", "err", "of the means over the windows"),
                              ("perplexity", "ppl", "of the perplexities of all windows' tokens")):
        rows = results.get(f"{task}_paired") or []
        if rows:
            parts += ["", f"{task}, paired with the attention-only base on the same {rows[0]['windows']} text "
                          f"windows ({what} lower / higher:\nwindows where the method's {what} is below / above "
                          f"the base's; {what} / base {what}: {ratio};\np: exact two-sided "
                          "sign test over the windows that differ):", format_table(rows)]
    ppl = perplexity_rows(results)
    if ppl:
        k = s.get("ppl_windows", 1)
        what = "one text (its first" if k == 1 else f"{k} disjoint text windows (ppl over all; each"
        parts += ["", f"perplexity while reading {what} {s['ppl_tokens']} tokens, in chunks of {s['ppl_chunk']}):",
                  format_table(ppl)]
    skipped = results["tasks"].get("perturbation", {}).get("unsupported")
    if skipped:
        parts += ["", f"perturbation: no captured-pass pipeline for {', '.join(skipped)} (reconstruction rows; "
                      "rows that need o_proj or every layer: criticalkv..., laprox)"]
    return "\n".join(parts)


def start_partial(folder, tasks):
    """Make folder/partial and remove every task's file there, at a run's
    start: a task this run stops before would otherwise leave an earlier
    run's cells among this run's (the lines carry no run id)."""
    os.makedirs(os.path.join(folder, "partial"), exist_ok=True)
    for task in tasks:
        path = os.path.join(folder, "partial", f"{task}.jsonl")
        if os.path.exists(path):
            os.remove(path)


def partial_writer(folder, task):
    """emit(record): append one finished cell of `task` to
    folder/partial/<task>.jsonl (after start_partial), so a stopped run
    keeps what it finished."""
    path = os.path.join(folder, "partial", f"{task}.jsonl")

    def emit(record):
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    return emit


def write_all(results, cfg, out):
    """Print the table, write results.json and the plots under cfg.out."""
    os.makedirs(cfg.out, exist_ok=True)
    path = os.path.join(cfg.out, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    written = [path]
    if cfg.plots:
        written += plots(results, cfg.out)
    print(text_report(results), file=out)
    print("\nwrote " + ", ".join(written), file=out)


def plots(results, folder):
    """PNG files: accuracy vs budget, KL vs budget, perplexity vs tokens read,
    perturbation error per layer. Returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, paths = results["tasks"], []

    def save(fig, name):
        p = os.path.join(folder, name)
        fig.tight_layout()
        fig.savefig(p, dpi=110, bbox_inches="tight")  # an outside legend included
        plt.close(fig)
        paths.append(p)

    if tasks.get("passkey"):
        modes = sorted({r["mode"] for r in tasks["passkey"]})
        fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            _lines(ax, [r for r in tasks["passkey"] if r["mode"] == mode], "accuracy", ci=True)
            ax.set(title=f"passkey, {mode}", xlabel="budget (fraction kept)", ylabel="accuracy", ylim=(-0.05, 1.05))
        save(fig, "passkey_accuracy.png")
    if tasks.get("fidelity"):
        fig, ax = plt.subplots(figsize=(6, 4))
        positive = all(r["kl"] > 0 for r in tasks["fidelity"] if r["method"] != "full")
        ax.set_yscale("log" if positive else "linear")  # before _lines, which leaves `full` off a log axis
        _lines(ax, tasks["fidelity"], "kl", legend_outside=len({r["method"] for r in tasks["fidelity"]}) > 8)
        k = tasks["fidelity"][0].get("windows", 1)
        ax.set(title=f"fidelity: KL(full || compressed), mean of {k} text window{'s' * (k > 1)}",
               xlabel="budget (fraction kept)", ylabel="KL (nats)")
        save(fig, "fidelity_kl.png")
    if tasks.get("perplexity"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, r in enumerate(tasks["perplexity"]):
            xs, ys = zip(*r["curve"])
            style = dict(color="k", ls=":") if r["method"] == "full" else _style(r["method"], i)
            ax.plot(xs, ys, marker=".", label=r["method"], **style)
        k = tasks["perplexity"][0].get("windows", 1)
        ax.set(title="perplexity while reading" + (f", {k} text windows pooled" if k > 1 else ""),
               xlabel="tokens read", ylabel="running perplexity")
        ax.legend(fontsize=7)
        save(fig, "perplexity.png")
    recs = tasks.get("perturbation", {}).get("records", [])
    if recs:
        budgets = sorted({r["budget"] for r in recs})
        fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4), squeeze=False)
        for ax, b in zip(axes[0], budgets):
            for i, r in enumerate(r for r in recs if r["budget"] == b):
                per_layer = [sum(h) / len(h) for h in r["error"]]
                style = dict(color="k", ls=":") if r["method"] == "oracle" else _style(r["method"], i)
                ax.plot(per_layer, marker=".", label=r["method"], **style)
            k = recs[0].get("windows", 1)
            ax.set(title=f"output perturbation, budget {b:g}", xlabel="layer",
                   ylabel=f"rel. error (mean of heads{f' and {k} text windows' if k > 1 else ''})")
            ax.legend(fontsize=7)
        save(fig, "perturbation_layers.png")
    return paths


def _style(method, i):
    """Colour by position (tab20 has room for every method); OBC/LOO scores dashed."""
    import matplotlib

    dashed = "+obc" in method or "+loo" in method
    return dict(color=matplotlib.colormaps["tab20"](i % 20), ls="--" if dashed else "-")


def _lines(ax, records, key, ci=False, legend_outside=False):
    """One line per method of `key` vs budget (log x, ticks at the budgets); `full` as a dotted level,
    except on a log y axis (its KL is 0 up to rounding, ~1e-11, which would stretch the axis over a
    decade range no method is in). legend_outside: the legend right of the axes (a single-axes figure
    with many methods)."""
    methods = []
    for r in records:
        if r["method"] not in methods:
            methods.append(r["method"])
    others = [m for m in methods if m != "full"]
    budgets = sorted({r["budget"] for r in records if r["method"] != "full"})
    for m in methods:
        rs = sorted((r for r in records if r["method"] == m), key=lambda r: r["budget"])
        if m == "full":
            if ax.get_yscale() != "log":
                ax.axhline(rs[0][key], color="k", ls=":", label="full")
            continue
        i = others.index(m)
        dodge = 1 + 0.012 * (i - (len(others) - 1) / 2) if ci else 1  # overlapping error bars stay readable
        xs, ys = [r["budget"] * dodge for r in rs], [r[key] for r in rs]
        if ci:
            err = [[y - r["ci95"][0] for y, r in zip(ys, rs)], [r["ci95"][1] - y for y, r in zip(ys, rs)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=m, **_style(m, i))
        else:
            ax.plot(xs, ys, marker="o", label=m, **_style(m, i))
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{100 * b:g}%" for b in budgets])
    ax.minorticks_off()
    if legend_outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.legend(fontsize=7)
