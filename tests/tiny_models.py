"""A tiny random causal LM saved as a model directory with its own tokenizer, built offline in a second:
what ``dprope compare`` and ``dprope export`` need from a model, for tests of the tools' machinery."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT = ("DPRoPE chooses, per frequency pair, whether to interpolate or extrapolate; the tools plan, measure "
        "and export the tables. ") * 20  # 2380 bytes: tokens, one per byte


def byte_tokenizer():
    """A transformers fast tokenizer of 256 tokens, one per byte (byte-level BPE without merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def tiny_model_dir(path, model_type: str = "llama", seed: int = 0, **config) -> Path:
    """``path`` holding a 1-layer random ``model_type`` (256 tokens, head dim 16, 64 positions unless
    ``config`` says otherwise) and the byte tokenizer; returns ``path``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    settings.update(config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))
    path = Path(path)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def documents(folder, count: int = 2) -> list[str]:
    """``count`` text documents of about 2400 byte tokens each, as ``NAME=PATH`` arguments."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for i in range(count):
        path = folder / f"doc{i}.txt"
        path.write_text(f"Document {i}. " + TEXT[i:] + TEXT[:i])
        specs.append(f"doc{i}={path}")
    return specs


def tiny_gguf(path, context_length: int = 64, head_dim: int = 16, rope_theta: float = 10000.0) -> Path:
    """A llama-architecture GGUF file with the rope settings of :func:`tiny_model_dir`'s model (one tensor,
    no tokenizer: what ``dprope export --gguf`` reads, not a model transformers loads)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(2 * head_dim)
    writer.add_head_count(2)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta)
    writer.add_tensor("token_embd.weight", np.zeros((8, 2 * head_dim), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
