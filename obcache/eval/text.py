"""Real text for the fidelity, perplexity and perturbation tasks: by default
the Python reference documentation that ships with Python
(`pydoc_data.topics`)."""
import os

from obcache.eval.models import EvalError


def default_text():
    """The pydoc topics in their stored order, joined by blank lines (~465 KB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in topics)


def load_text(path=None):
    """The text of `path` (UTF-8), or the default text."""
    if path is None:
        return default_text()
    if not os.path.isfile(path):
        raise EvalError(f"--text {path!r}: no such file")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def tokenize(tokenizer, text):
    """The text's token ids, no special tokens (`windows` adds BOS)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def windows(tokenizer, ids, n, count=1):
    """`count` disjoint windows of n tokens of the token ids `ids` (T of
    them), spread evenly: window w takes the tokens from
    w * (T - n) // (count - 1) on (so window 0 is the text's first tokens
    and the last window's n tokens end the text), each with BOS in front
    when the tokenizer has one (which then takes the window's last token's
    place). The windows are the independent samples of the fidelity and
    perturbation and perplexity tasks' paired comparisons
    (report._window_paired_rows)."""
    if len(ids) < n * count:
        raise EvalError(f"--text has only {len(ids)} tokens; {count} disjoint window(s) of {n} need {n * count}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    starts = [w * (len(ids) - n) // max(1, count - 1) for w in range(count)]
    return [bos + ids[s:s + n - len(bos)] for s in starts]


def check_length(ids, cfg):
    """Raise EvalError unless the text holds what each text task of cfg
    reads (before any task runs, so a short --text fails early)."""
    needs = {"fidelity": (cfg.fidelity_context + cfg.fidelity_next, cfg.fidelity_windows),
             "perturbation": (cfg.perturb_context + cfg.perturb_future, cfg.perturb_windows),
             "perplexity": (cfg.ppl_tokens, cfg.ppl_windows)}
    for task, (n, count) in needs.items():
        if task in cfg.tasks and len(ids) < n * count:
            raise EvalError(f"--text has only {len(ids)} tokens; {task} reads {count} disjoint window(s) of {n} "
                            f"tokens: {n * count}")
