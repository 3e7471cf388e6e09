"""GPU benchmark: one training step of a small Llama-shaped model, HF's rotary op vs dprope kernels.

    python benchmarks/bench_training_step.py --out benchmarks/results/train-step-<device>.json [--budget-s 50]
    python benchmarks/bench_training_step.py --dry-run     # what it measures, in order (no GPU)

A randomly initialised Llama (hidden 2048, 16 layers, 16 heads, 4 kv heads, D = 128) in bf16,
batch 1 x 8192 tokens with the planned DPRoPE table (4k -> 16k), AdamW. Reports the median step
time (ms) and peak allocated memory for: unpatched eager HF, HF with the rotary op on each
available dprope backend, the same with the fused q/k/v projection (``fused_projection=True``),
Liger-Kernel's rotary where importable, and torch.compile(HF) with ``--compile`` (compiling the
model takes minutes). A configuration that may not fit ``--budget-s`` is skipped and says so. The
JSON is rewritten after every configuration.
"""

from __future__ import annotations

import torch
from common import Budget, Report, bench_ms, benchmark_parser, require_cuda

import dprope_kernels as dk
from dprope_kernels.backends import unavailable


def build(seed: int = 0):
    """The model, initialised on the GPU (far faster than on the CPU) and cast to bf16."""
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    dk.register_dprope_rope_type()
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
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16)


def measure(model, ids) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer state allocated before measuring memory
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ms = bench_ms(step, warmup=3, rep=50)
    return {"ms": ms, "peak_GiB": torch.cuda.max_memory_allocated() / 2**30}


def dprope(model, ids, backend: str, fused: bool):
    """The step with the model patched onto ``backend``, or why it cannot be."""
    reason = unavailable(backend, ids.device)
    if reason:
        return f"unavailable: {reason}"
    try:
        dk.apply_dprope_kernels(model, backend=backend, fused_projection=fused)
    except (TypeError, ValueError) as err:
        return f"refused: {err}"
    try:
        return measure(model, ids)
    finally:
        dk.revert_dprope_kernels(model)


def liger(model, ids):
    """The step with Liger-Kernel's rotary in HF's Llama module (restored after), or why not."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
        from transformers.models.llama import modeling_llama
    except Exception as err:  # not installed here: say so in the results
        return f"unavailable: {err}"
    original = modeling_llama.apply_rotary_pos_emb
    try:
        apply_liger_kernel_to_llama(rope=True, rms_norm=False, swiglu=False, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
        return measure(model, ids)
    finally:
        modeling_llama.apply_rotary_pos_emb = original


CONFIGS = ["hf_eager_rotary", "dprope_triton", "dprope_triton_fused_projection", "dprope_cuda",
           "dprope_cuda_fused_projection", "liger_rotary", "hf_compile (with --compile)"]
CONFIG_S = 6  # seconds a configuration may take: warm-up steps, the measured steps, a first autotune


def plan() -> list[str]:
    return [f"one AdamW step, 8192 tokens (--seq-len): {', '.join(CONFIGS)}"]


def main():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(HF) (minutes)")
    args = parser.parse_args()
    if args.dry_run:
        print("\n".join(plan()))
        return
    require_cuda(parser)
    budget = Budget(args.budget_s)
    report = Report(args.out)
    model = build()
    ids = torch.randint(0, 32000, (1, args.seq_len), device="cuda")
    rows = report.run(model="llama 2048x16, D=128, GQA 16/4", tokens=args.seq_len)
    configs = {"hf_eager_rotary": lambda: measure(model, ids)}
    for backend in ("triton", "cuda"):
        for fused in (False, True):
            name = f"dprope_{backend}" + ("_fused_projection" if fused else "")
            configs[name] = lambda backend=backend, fused=fused: dprope(model, ids, backend, fused)
    configs["liger_rotary"] = lambda: liger(model, ids)
    for name, run in configs.items():
        report.record(rows, name, budget.skip(CONFIG_S) or run())
    compiled = measure(torch.compile(model), ids) if args.compile else "not measured: pass --compile"
    report.record(rows, "hf_compile", compiled)
    report.finish()


if __name__ == "__main__":
    main()
