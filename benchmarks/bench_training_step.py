"""GPU benchmark: one training step of a small Llama-shaped model, HF's rotary op vs dprope kernels.

    python benchmarks/bench_training_step.py --out benchmarks/results/train-step-<device>.json

A randomly initialised Llama (hidden 2048, 16 layers, 16 heads, 4 kv heads, D = 128) in bf16,
batch 1 x 8192 tokens with the planned DPRoPE table (4k -> 16k), AdamW. Reports the median step
time (ms) and peak allocated memory for: unpatched eager HF, HF with the rotary op on each
available dprope backend, and the same with the fused q/k/v projection (``fused_projection=True``).
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

import dprope_kernels as dk
from dprope_kernels.backends import unavailable
from common import report_header, write_report


def build(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    dk.register_dprope_rope_type()
    import transformers

    plan = dk.plan_dprope(head_dim=128, original_max_position=4096, factor=4)
    rope = plan.rope_config()
    if int(transformers.__version__.split(".")[0]) >= 5:
        rope_kwargs = {"rope_parameters": rope}
    else:
        rope_kwargs = {"rope_scaling": rope, "rope_theta": rope["rope_theta"]}
    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=16384,
                         attn_implementation="sdpa", **rope_kwargs)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to("cuda", torch.bfloat16)


def measure(model, ids) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer state allocated before measuring memory
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = triton.testing.do_bench(step, warmup=3, rep=50)
    return {"ms": ms, "peak_GiB": torch.cuda.max_memory_allocated() / 2**30}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--seq-len", type=int, default=8192)
    args = parser.parse_args()
    report = report_header()
    model = build()
    ids = torch.randint(0, 32000, (1, args.seq_len), device="cuda")
    results = {"hf_eager_rotary": measure(model, ids)}
    for backend in ("triton", "cuda"):
        if unavailable(backend, ids.device) is not None:
            continue
        for fused in (False, True):
            name = f"dprope_{backend}" + ("_fused_projection" if fused else "")
            try:
                dk.apply_dprope_kernels(model, backend=backend, fused_projection=fused)
            except (TypeError, ValueError) as err:
                results[name] = f"refused: {err}"
                continue
            results[name] = measure(model, ids)
            dk.revert_dprope_kernels(model)
    report["runs"].append({"model": "llama 2048x16, D=128, GQA 16/4", "tokens": args.seq_len, "results": results})
    write_report(report, args.out)


if __name__ == "__main__":
    main()
