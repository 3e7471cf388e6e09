"""Loads an exported model the way a user without dprope_kernels would, and saves what transformers computed.

Run as a script in a fresh process by tests/test_export.py:
``python export_probe.py MODEL_DIR OUT.pt SEQ_LEN``. It imports transformers only; the result records
whether anything imported dprope_kernels.
"""

import logging
import sys
import warnings

import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging


class _Collect(logging.Handler):
    def __init__(self, into):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record):
        self.into.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def main(path: str, out_path: str, seq_len: int) -> None:
    load_warnings, run_warnings = [], []
    hf_logging.set_verbosity_warning()
    handler = _Collect(load_warnings)
    hf_logging.get_logger().addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    load_warnings += [f"{w.category.__name__}: {w.message}" for w in caught]
    handler.into = run_warnings
    rotary = model.model.rotary_emb
    ids = torch.arange(seq_len).reshape(1, -1) % (model.config.vocab_size - 3) + 3
    positions = torch.arange(seq_len).reshape(1, -1)
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, seq_len, 4), positions)
        logits = model(ids).logits
    torch.save({"inv_freq": rotary.inv_freq.clone(), "attention_scaling": float(rotary.attention_scaling),
                "cos": cos, "sin": sin, "logits": logits, "load_warnings": load_warnings,
                "imported_dprope": sorted(m for m in sys.modules if m.split(".")[0] == "dprope_kernels"),
                "version": transformers.__version__}, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
