"""`obcache eval`: measure every eviction method on a real model.

Settings live in one dataclass (`EvalConfig`); `--full` swaps the quick
preset for the whole grid, and the selection flags override either.
Every argument is checked before a model is loaded, but for what needs the
tokenizer (the passkey prompts' token counts against the budgets), checked
before the first passkey cell; errors name the flag and the value.
"""
import argparse
import dataclasses
import os
import random
import sys
import time
from typing import List, Optional

from obcache.eval.models import DEFAULT_MODEL, EvalError, check_model_dir

TASKS = ("passkey", "fidelity", "perplexity", "perturbation")
MODES = ("query-aware", "query-agnostic")


@dataclasses.dataclass
class EvalConfig:
    """Every setting of a run (written to the JSON next to the numbers)."""

    tasks: List[str]
    methods: List[str]
    budgets: List[float]  # fraction of the context kept per KV head
    lengths: List[int]  # passkey prompt lengths in tokens
    depths: List[float] = dataclasses.field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    trials: int = 4  # passkey trials per (length, depth)
    modes: List[str] = dataclasses.field(default_factory=lambda: list(MODES))
    model: Optional[str] = None
    text: Optional[str] = None
    out: str = "eval_out"
    window: int = 32
    sink: int = 4
    pool_kernel: int = 7
    pool: str = "max"
    max_new_tokens: int = 7  # " " + 5 digits + 1 spare
    fidelity_context: int = 2048
    fidelity_next: int = 64
    fidelity_windows: int = 8  # disjoint text windows: the paired comparison's samples
    ppl_tokens: int = 2048
    ppl_chunk: int = 256
    ppl_budget: int = 256  # tokens per KV head kept while reading
    ppl_windows: int = 4  # disjoint text windows, each read from its start
    perturb_context: int = 1024
    perturb_future: int = 64
    perturb_windows: int = 6  # disjoint text windows, each captured once
    seed: int = 0
    threads: Optional[int] = None
    plots: bool = True
    preset: str = "quick"
    overrides: List[str] = dataclasses.field(default_factory=list)  # the preset's flags given on the command line


# The quick run (no flags): every task, attention-only baselines next to the
# OBC key score of the same pipeline, one budget. Measured with SmolLM2-135M:
# 146-153 s wall at two threads on an idle 2-core Zen 4 (37-40 s of it
# fidelity and 21-23 s perturbation, six text windows each; 97 s with one
# window each), and 4:23 single-threaded at load ~3 before the windows
# (bench/results/eval.md, "The quick run"). Under heavy contention
# torch's two threads thrash (15 s per passkey trial instead of 3): pass
# --threads 1 on a busy machine.
QUICK = dict(
    tasks=["passkey", "fidelity", "perturbation", "perplexity"],
    methods=["full", "streaming", "tova", "tova+obc-key", "snapkv", "snapkv+obc-key"],
    budgets=[0.1],
    lengths=[1000],
    depths=[0.2, 0.5, 0.8],
    trials=2,
    fidelity_context=1024,
    fidelity_windows=6,  # the fewest at which a paired sign test can reach p < 0.05 (2 / 2^6)
    ppl_tokens=1024,
    ppl_chunk=256,
    ppl_budget=128,
    ppl_windows=1,  # ~17 s a window: one read, no paired table
)
# --full: every method of the integration's table at 5/10/20/50%; 5% of a
# 768-token prompt is the first length that fits sink + window = 36 tokens.
FULL = dict(
    tasks=list(TASKS),
    # the list with the sibling methods; any other row of
    # obcache.methods.METHODS (h2o+obc-key, kvzip...) runs with --methods
    methods=["full", "streaming", "h2o", "tova", "snapkv", "vatp", "snapkv+obc-value", "snapkv+obc-key",
             "snapkv+obc-joint", "snapkv+loo", "tova+obc-key", "criticalkv", "criticalkv+obc-key", "laprox",
             "adakv+snapkv", "adakv+obc-key", "adakv+criticalkv"],
    budgets=[0.05, 0.1, 0.2, 0.5],
    lengths=[768, 1024],
    depths=[0.1, 0.3, 0.5, 0.7, 0.9],
    trials=2,  # 20 trials per (method, budget, mode)
)


# The flags that set a field of the presets (the selection and the sizes).
PRESET_FLAGS = ("tasks", "methods", "budgets", "lengths", "depths", "trials", "modes", "fidelity_context",
                "fidelity_windows", "ppl_tokens", "ppl_chunk", "ppl_budget", "ppl_windows", "perturb_context",
                "perturb_windows")


def _presets(name):
    """'(quick: X; --full: Y)' for a field of the presets, for --help."""
    field = {f.name: f for f in dataclasses.fields(EvalConfig)}[name]
    default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()

    def show(v):
        if name == "methods":
            return f"{len(v)}: {', '.join(v)}" if len(v) < 10 else f"{len(v)} methods"
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else str(v)

    quick, full = show(QUICK.get(name, default)), show(FULL.get(name, default))
    return f"(default: {quick})" if quick == full else f"(quick: {quick}; --full: {full})"


def add_arguments(p):
    """The flags of `obcache eval` on parser p (%% in help: argparse formats it)."""
    p.add_argument("--full", action="store_true",
                   help=f"run the whole grid: {len(FULL['methods'])} methods (the prefill and sibling methods; "
                        "h2o+obc-key and the kvzip rows run with --methods), 5/10/20/50%%, every task")
    p.add_argument("--tasks", help=f"comma list of {', '.join(TASKS)} {_presets('tasks')}")
    p.add_argument("--methods", help="comma list of method names (see obcache.hf.methods()); 'full' is always "
                                     f"added {_presets('methods')}")
    p.add_argument("--budgets", help="comma list of fractions in (0, 1], e.g. 0.05,0.1 or 5%%,10%% "
                                     f"{_presets('budgets')}")
    p.add_argument("--lengths", help=f"comma list of passkey prompt lengths in tokens {_presets('lengths')}")
    p.add_argument("--depths", help=f"comma list of needle depths in [0, 1] {_presets('depths')}")
    p.add_argument("--trials", type=int, help=f"passkey trials per (length, depth) {_presets('trials')}")
    p.add_argument("--modes", help=f"comma list of passkey modes: {', '.join(MODES)} {_presets('modes')}")
    p.add_argument("--model", help="local transformers causal-LM directory (default: SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--text", help="UTF-8 text file for fidelity and perplexity (default: pydoc_data.topics)")
    p.add_argument("--out", default="eval_out", help="output directory; a run starts its partial/ files afresh "
                                                     "(default: ./eval_out)")
    p.add_argument("--window", type=int, default=32, help="scoring window W (query tokens) (default: 32)")
    p.add_argument("--sink", type=int, default=4, help="first tokens always kept (default: 4)")
    p.add_argument("--pool-kernel", type=int, default=7, help="score pooling kernel: 0 or 1 (none) or odd "
                                                              "(default: 7)")
    p.add_argument("--pool", default="max", choices=["max", "avg"], help="score pooling (default: max)")
    p.add_argument("--fidelity-context", type=int, help=f"fidelity context tokens {_presets('fidelity_context')}")
    p.add_argument("--fidelity-windows", type=int, help="fidelity: disjoint windows of the text, each a context "
                                                        f"{_presets('fidelity_windows')}")
    p.add_argument("--ppl-tokens", type=int, help=f"perplexity: tokens read {_presets('ppl_tokens')}")
    p.add_argument("--ppl-chunk", type=int, help="perplexity: chunk size of the chunked prefill "
                                                 f"{_presets('ppl_chunk')}")
    p.add_argument("--ppl-budget", type=int, help="perplexity: tokens per KV head kept while reading "
                                                  f"{_presets('ppl_budget')}")
    p.add_argument("--ppl-windows", type=int, help="perplexity: disjoint windows of the text, each read "
                                                   f"{_presets('ppl_windows')}")
    p.add_argument("--perturb-context", type=int, help="perturbation: context tokens before the future ones "
                                                       f"{_presets('perturb_context')}")
    p.add_argument("--perturb-windows", type=int, help="perturbation: disjoint windows of the text, each a context "
                                                       f"{_presets('perturb_windows')}")
    p.add_argument("--seed", type=int, default=0, help="random seed, in [0, 2**32) (default: 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads, >= 1 (default: torch's)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def _split(flag, value, cast):
    """The items of a comma list, each read once: a repeated method or
    budget would be counted twice as a sample of the paired tests."""
    items = [s.strip() for s in value.split(",") if s.strip()]
    if not items:
        raise EvalError(f"{flag} {value!r}: empty list")
    out = []
    for s in items:
        try:
            x = cast(s)
        except ValueError:
            raise EvalError(f"{flag}: cannot read {s!r} as {cast.__name__}") from None
        if x in out:
            raise EvalError(f"{flag}: {s!r} repeats {out[out.index(x)]!r}; list each once")
        out.append(x)
    return out


def _budget(s):
    return float(s[:-1]) / 100 if s.endswith("%") else float(s)


_budget.__name__ = "a budget fraction"


def _choose(flag, given, valid):
    unknown = [x for x in given if x not in valid]
    if unknown:
        raise EvalError(f"{flag}: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    return given


def config_from_args(args, method_names=None):
    """EvalConfig from parsed flags, every value checked (no model loaded).
    method_names: the valid method names (default: obcache.hf.methods())."""
    preset = dict(FULL if args.full else QUICK)
    cfg = EvalConfig(**{**preset, "methods": preset["methods"] or []})
    cfg.preset = "full" if args.full else "quick"
    cfg.overrides = ["--" + n.replace("_", "-") for n in PRESET_FLAGS if getattr(args, n) is not None]
    for name in ("out", "window", "sink", "pool_kernel", "pool", "seed", "threads", "model", "text"):
        setattr(cfg, name, getattr(args, name))
    cfg.plots = not args.no_plots
    for name in ("trials", "fidelity_context", "fidelity_windows", "ppl_tokens", "ppl_chunk", "ppl_budget",
                 "ppl_windows", "perturb_context", "perturb_windows"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    # `is not None`: an empty value (--tasks=) is an error, not the preset
    if args.tasks is not None:
        cfg.tasks = _choose("--tasks", _split("--tasks", args.tasks, str), TASKS)
    if args.modes is not None:
        cfg.modes = _choose("--modes", _split("--modes", args.modes, str), MODES)
    if args.budgets is not None:
        cfg.budgets = _split("--budgets", args.budgets, _budget)
    if args.lengths is not None:
        cfg.lengths = _split("--lengths", args.lengths, int)
    if args.depths is not None:
        cfg.depths = _split("--depths", args.depths, float)
    _check_numbers(cfg)
    _check_out(cfg.out)
    if cfg.model not in (None, DEFAULT_MODEL):
        check_model_dir(cfg.model)
    if cfg.text is not None and not os.path.isfile(cfg.text):
        raise EvalError(f"--text {cfg.text!r}: no such file")
    if method_names is None:
        from obcache.eval.backend import method_table

        method_names = list(method_table())
    if "full" not in method_names:
        method_names = ["full", *method_names]
    if args.methods is not None:
        cfg.methods = _choose("--methods", _split("--methods", args.methods, str), method_names)
    else:
        cfg.methods = _choose("methods of the preset", cfg.methods, method_names)
    if "full" not in cfg.methods:
        cfg.methods = ["full", *cfg.methods]  # the reference row next to every method
    return cfg


def _check_numbers(cfg):
    for b in cfg.budgets:
        if not 0 < b <= 1:
            raise EvalError(f"--budgets: {b} is outside (0, 1] (a fraction of the context)")
    for n in cfg.lengths:
        if n < 64:
            raise EvalError(f"--lengths: {n} is too short for a passkey prompt (>= 64 tokens)")
    for d in cfg.depths:
        if not 0 <= d <= 1:
            raise EvalError(f"--depths: {d} is outside [0, 1]")
    for flag, value, least in (("--trials", cfg.trials, 1), ("--window", cfg.window, 1),
                               ("--ppl-chunk", cfg.ppl_chunk, 1), ("--fidelity-windows", cfg.fidelity_windows, 1),
                               ("--perturb-windows", cfg.perturb_windows, 1), ("--ppl-windows", cfg.ppl_windows, 1),
                               ("--fidelity-context", cfg.fidelity_context, 1),
                               ("--perturb-context", cfg.perturb_context, 1),
                               ("--ppl-tokens", cfg.ppl_tokens, 2),  # a perplexity needs a token to predict
                               ("--ppl-budget", cfg.ppl_budget, 1), ("--sink", cfg.sink, 0)):
        if value < least:
            raise EvalError(f"{flag}: must be >= {least}, got {value}")
    if cfg.threads is not None and cfg.threads < 1:
        raise EvalError(f"--threads: must be >= 1, got {cfg.threads}")
    if not 0 <= cfg.seed < 2**32:
        raise EvalError(f"--seed: must be in [0, 2**32) (numpy's range), got {cfg.seed}")
    if cfg.pool_kernel < 0 or (cfg.pool_kernel > 1 and cfg.pool_kernel % 2 == 0):
        raise EvalError(f"--pool-kernel: must be 0, 1 (no pooling) or an odd number > 1, got {cfg.pool_kernel}")
    floor = cfg.sink + cfg.window
    contexts = []
    if "passkey" in cfg.tasks:
        contexts.append(("--lengths", min(cfg.lengths)))
    if "fidelity" in cfg.tasks:
        contexts.append(("--fidelity-context", cfg.fidelity_context))
    if "perturbation" in cfg.tasks:
        contexts.append(("--perturb-context", cfg.perturb_context))
    for b in cfg.budgets:
        for what, n in contexts:
            if b * n < floor:
                raise EvalError(
                    f"--budgets: {b:g} of the {n}-token context ({what}) is {b * n:.0f} tokens, below "
                    f"sink + window = {floor} (--sink {cfg.sink}, --window {cfg.window})"
                )
    if "perplexity" in cfg.tasks and cfg.ppl_budget < floor:
        raise EvalError(f"--ppl-budget: {cfg.ppl_budget} tokens is below sink + window = {floor}")


def _check_out(out):
    """--out is (or can be made) a writable directory: found now, not after
    the tasks have run."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise EvalError(f"--out {out!r}: exists and is not a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise EvalError(f"--out {out!r}: directory not writable")
        return
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise EvalError(f"--out {out!r}: cannot be created ({parent!r} is not a writable directory)")


def seed_everything(seed):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(cfg, out=sys.stdout):
    """Run the selected tasks; write JSON + plots under cfg.out; print the
    table on `out`. Returns the results dict (what results.json holds)."""
    import torch

    from obcache.eval import backend, report
    from obcache.eval.models import load_model
    from obcache.eval.text import check_length, load_text, tokenize

    t_start = time.perf_counter()
    report.start_partial(cfg.out, TASKS)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tok, model_info = load_model(cfg.model)
    table = backend.method_table()
    results = {
        "schema": report.SCHEMA,
        "settings": dataclasses.asdict(cfg),
        "model": {**model_info, **report.model_facts(model)},
        "methods": {m: table.get(m, "") for m in cfg.methods},
        "versions": report.versions(),
        "backend": "obcache.hf",
        "tasks": {},
        "seconds": {},
    }
    ids = None  # the text's tokens, checked against what every text task reads before any task runs
    if {"fidelity", "perplexity", "perturbation"} & set(cfg.tasks):
        ids = tokenize(tok, load_text(cfg.text))
        check_length(ids, cfg)
    for task in [t for t in TASKS if t in cfg.tasks]:
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        results["tasks"][task] = _run_task(task, model, tok, ids, cfg)
        results["seconds"][task] = round(time.perf_counter() - t0, 2)
    results["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    results["table"] = report.summary_rows(results)
    results["passkey_paired"] = report.paired_rows(results)
    results["fidelity_paired"] = report.fidelity_paired_rows(results)
    results["perturbation_paired"] = report.perturbation_paired_rows(results)
    results["perplexity_paired"] = report.perplexity_paired_rows(results)
    report.write_all(results, cfg, out)
    return results


def _run_task(task, model, tok, text_ids, cfg):
    """One task's records, with a tqdm bar on stderr (text_ids: the text's tokens, text.tokenize)."""
    import torch
    from tqdm.auto import tqdm

    from obcache.eval import policies
    from obcache.eval.report import partial_writer
    from obcache.eval.capture import capture_qkv
    from obcache.eval.tasks import fidelity, passkey, perplexity, perturbation
    from obcache.eval.text import windows

    def bar(total):
        return tqdm(total=total, desc=task, file=sys.stderr, dynamic_ncols=True)

    methods, budgets = cfg.methods, cfg.budgets
    if task == "passkey":
        with bar(passkey.count(cfg, methods, budgets)) as p:
            return passkey.run(model, tok, cfg, methods, budgets, p, partial_writer(cfg.out, task))
    if task == "fidelity":
        texts = [torch.tensor([w]) for w in windows(tok, text_ids, cfg.fidelity_context + cfg.fidelity_next,
                                                    cfg.fidelity_windows)]
        with bar(fidelity.count(methods, budgets, len(texts))) as p:
            return fidelity.run(model, texts, cfg, methods, budgets, p, partial_writer(cfg.out, task))
    if task == "perplexity":
        texts = [torch.tensor([w]) for w in windows(tok, text_ids, cfg.ppl_tokens, cfg.ppl_windows)]
        with bar(perplexity.count(methods, len(texts))) as p:
            return perplexity.run(model, texts, cfg, methods, p, partial_writer(cfg.out, task))
    texts = windows(tok, text_ids, cfg.perturb_context + cfg.perturb_future, cfg.perturb_windows)
    captures = (capture_qkv(model, torch.tensor([w])) for w in texts)  # one window's tensors at a time
    with bar(perturbation.count(methods, budgets, len(texts))) as p:
        recs, wins = perturbation.run(captures, cfg.perturb_context, cfg, methods, budgets, p)
    skipped = [m for m in methods if not policies.supported(m)]
    return {"records": recs, "win_shares": wins, "unsupported": skipped}


def main(argv=None):
    """Entry of `obcache eval`."""
    parser = add_arguments(argparse.ArgumentParser(prog="obcache eval", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except EvalError as e:
        parser.error(str(e))
    try:
        run(cfg)
    except EvalError as e:  # what needed the tokenizer: raised before the task's first cell
        parser.error(str(e))
    return 0
