"""Real text for the fidelity, perplexity and perturbation tasks: by default
the Python reference documentation that ships with Python
(`pydoc_data.topics`)."""
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


def _with_bos(tokenizer, ids, n):
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + ids[: n - len(bos)]


def text_tokens(tokenizer, text, n, offset=0):
    """The first n tokens after `offset` tokens of text, with BOS in front when the tokenizer has one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][offset:offset + n]
    if len(ids) < n:
        from obcache.eval.models import EvalError

        raise EvalError(f"--text has only {len(ids) + offset} tokens; the tasks need {n + offset}")
    return _with_bos(tokenizer, ids, n)


def text_windows(tokenizer, text, n, count):
    """`count` disjoint windows of n tokens each (BOS in front, as
    text_tokens), spread evenly over the text: window w starts at token
    w * (T - n) // (count - 1) of its T tokens, so the first is text_tokens'
    and the last ends at the text's end. Each is an independent sample for
    the paired comparisons (report.fidelity_paired_rows)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n * count:
        from obcache.eval.models import EvalError

        raise EvalError(f"--text has only {len(ids)} tokens; {count} disjoint windows of {n} need {n * count}")
    starts = [w * (len(ids) - n) // max(1, count - 1) for w in range(count)]
    return [_with_bos(tokenizer, ids[s:s + n], n) for s in starts]
