"""Real text for the fidelity and perplexity tasks: by default the Python
reference documentation that ships with Python (`pydoc_data.topics`)."""
import os


def default_text():
    """The pydoc topics in their stored order, joined by blank lines (~465 KB)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in topics)


def load_text(path=None):
    """The text of `path` (UTF-8), or the default text."""
    if path is None:
        return default_text()
    if not os.path.isfile(path):
        from obcache.eval.models import EvalError

        raise EvalError(f"--text {path!r}: no such file")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def text_tokens(tokenizer, text, n, offset=0):
    """The first n tokens after `offset` tokens of text, with BOS in front when the tokenizer has one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][offset:offset + n]
    if len(ids) < n:
        from obcache.eval.models import EvalError

        raise EvalError(f"--text has only {len(ids) + offset} tokens; the tasks need {n + offset}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + ids[: n - len(bos)]
