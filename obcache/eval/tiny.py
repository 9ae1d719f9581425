"""A tiny random Llama with a character-level tokenizer, built offline in
about a second: exercises every task of the harness end to end in tests."""
import string

VOCAB_CHARS = string.printable  # digits, letters, punctuation, whitespace
SPECIALS = ["<unk>", "<s>", "</s>"]


def build_tokenizer():
    """A PreTrainedTokenizerFast that maps each character to one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(VOCAB_CHARS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def build_tiny_model(folder, layers=2, seed=0):
    """Save a random LlamaForCausalLM (hidden 64, 4 query heads, 2 KV heads,
    head dim 16) and its tokenizer in `folder`; returns folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
