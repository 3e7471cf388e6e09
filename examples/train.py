"""Fine-tune a local Hugging Face causal LM to a longer context with DPRoPE.

One process:        python examples/train.py --model ./llama-2-7b --data books.jsonl --target-length 16384
Several (torchrun): torchrun --nproc-per-node 8 examples/train.py ... --parallel fsdp

The model's rope becomes the planned DPRoPE table (``rope_type: "dprope"`` in the saved config)
and its rotary op runs on dprope kernels. Defaults follow the paper: AdamW, lr 2e-5, no warmup,
no weight decay; bf16 on GPUs. Checkpoints (model + optimizer + data position) go to
``--output/checkpoint-<step>`` every ``--save-every`` steps; ``--resume`` continues from the latest.
Each step's loss and tokens/s are appended to ``--output/metrics.jsonl``; the final model is
saved with ``save_pretrained`` under ``--output/final``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from tqdm import tqdm

import dprope_kernels as dk
from dprope_kernels.integrations.transformers import rotary_settings
from text_data import load_tokenizer, read_texts, token_blocks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local model directory (config + weights)")
    p.add_argument("--data", required=True, nargs="+", help=".txt / .jsonl files")
    p.add_argument("--output", required=True)
    p.add_argument("--target-length", type=int, required=True, help="context length to extend to (L')")
    p.add_argument("--original-length", type=int, help="pre-training length L (default: the config's)")
    p.add_argument("--seq-len", type=int, help="training sequence length (default: --target-length)")
    p.add_argument("--n-hat", type=int, help="interpolate this many dims (paper's n_hat) instead of threshold 0")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per rank per micro-step")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16" if torch.cuda.is_available() else "fp32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--parallel", choices=["auto", "none", "ddp", "fsdp"], default="auto",
                   help="auto: DDP when launched with several processes")
    p.add_argument("--backend", default="auto", help="dprope kernel backend: auto, torch, triton, cuda")
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--byte-tokenizer", action="store_true", help="UTF-8 bytes as tokens (models without one)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def setup_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def dprope_config(args, rank):
    from transformers import AutoConfig

    dk.register_dprope_rope_type()
    config = AutoConfig.from_pretrained(args.model)
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    original = args.original_length or rope.get("original_max_position_embeddings") or config.max_position_embeddings
    rotary_dim, theta = rotary_settings(config)
    plan = dk.plan_dprope(head_dim=rotary_dim, rope_theta=theta, original_max_position=original,
                          target_max_position=args.target_length, num_interpolated_dims=args.n_hat)
    if rank == 0:
        print(plan.format_table())
    params = plan.rope_config()
    params.pop("max_position_embeddings")
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = params
    else:
        config.rope_scaling = params
    config.max_position_embeddings = args.target_length
    return config


def build_model(args, config, device, world):
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, config=config).to(device, dtype)
    dk.apply_dprope_kernels(model, backend=args.backend)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    parallel = args.parallel if args.parallel != "auto" else ("ddp" if world > 1 else "none")
    if parallel == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    elif parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        wrapped = fully_shard(model)
    else:
        wrapped = model
    return model, wrapped


def latest_checkpoint(output: Path) -> Path | None:
    found = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def save_checkpoint(output: Path, step: int, model, optimizer, rank: int):
    path = output / f"checkpoint-{step}"
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))
    if rank == 0:
        (path / "trainer_state.json").write_text(json.dumps({"step": step}))


def load_checkpoint(path: Path, model, optimizer) -> int:
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((path / "trainer_state.json").read_text())["step"]


def batches(blocks: torch.Tensor, step: int, batch_size: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """The micro-batch of ``step`` for ``rank``: a seeded permutation per epoch, so resuming is exact."""
    per_step = batch_size * world
    per_epoch = max(1, blocks.shape[0] // per_step)
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
    start = index * per_step + rank * batch_size
    return blocks[order[start : start + batch_size]]


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    config = dprope_config(args, rank)
    model, wrapped = build_model(args, config, device, world)
    seq_len = args.seq_len or args.target_length
    tokenizer = load_tokenizer(args.model, args.byte_tokenizer)
    blocks = token_blocks(read_texts(args.data), tokenizer, seq_len)
    if blocks.shape[0] < args.batch_size * world:
        raise SystemExit(f"{blocks.shape[0]} blocks of {seq_len} tokens cannot fill one step on {world} ranks")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    step = 0
    checkpoint = latest_checkpoint(output) if args.resume else None
    if checkpoint is not None:
        step = load_checkpoint(checkpoint, wrapped, optimizer)
        if rank == 0:
            print(f"resumed from {checkpoint} at step {step}")

    progress = tqdm(total=args.steps, initial=step, disable=rank != 0, desc="dprope fine-tune")
    metrics = open(output / "metrics.jsonl", "a") if rank == 0 else None
    while step < args.steps:
        start = time.perf_counter()
        total_loss = 0.0
        for micro in range(args.grad_accum):
            ids = batches(blocks, step * args.grad_accum + micro, args.batch_size, rank, world, args.seed).to(device)
            loss = wrapped(input_ids=ids, labels=ids).loss / args.grad_accum
            loss.backward()
            total_loss += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(total_loss, op=dist.ReduceOp.AVG)
        step += 1
        loss_value = float(total_loss)
        tokens_per_s = args.grad_accum * args.batch_size * world * seq_len / (time.perf_counter() - start)
        if not math.isfinite(loss_value):
            raise SystemExit(f"loss is {loss_value} at step {step}")
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        if metrics:
            metrics.write(json.dumps({"step": step, "loss": loss_value, "tokens_per_s": tokens_per_s}) + "\n")
            metrics.flush()
        if step % args.save_every == 0 or step == args.steps:
            save_checkpoint(output, step, wrapped, optimizer, rank)
    progress.close()

    full_state = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        dk.revert_dprope_kernels(model)
        model.save_pretrained(output / "final", state_dict=full_state)
        if not args.byte_tokenizer:
            tokenizer.tokenizer.save_pretrained(output / "final")
        print(f"saved {output / 'final'}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
