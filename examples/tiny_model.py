"""A tiny random Llama (byte vocabulary) and a sample text, to try train.py and evaluate.py on a CPU.

    python examples/tiny_model.py runs/tiny     # writes runs/tiny/model/ and runs/tiny/sample.txt

The model has 2 layers, hidden size 64, 4 heads of 16 dims and 256 positions; the text is this
repository's README. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main(argv=None) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", type=Path, help="folder to write model/ and sample.txt into")
    args = p.parse_args(argv)
    if (args.output / "model").exists():
        p.error(f"{args.output / 'model'} exists already")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(args.output / "model")
    readme = Path(__file__).resolve().parents[1] / "README.md"
    (args.output / "sample.txt").write_text(readme.read_text(encoding="utf-8") * 4, encoding="utf-8")
    print(f"wrote {args.output / 'model'} (2-layer Llama, 256 positions) and {args.output / 'sample.txt'}")


if __name__ == "__main__":
    main()
