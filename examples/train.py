"""Fine-tune a local Hugging Face causal LM to a longer context with DPRoPE.

One process:        python examples/train.py --model ./llama-2-7b --data books.jsonl --target-length 16384
Several (torchrun): torchrun --nproc-per-node 8 examples/train.py ... --parallel fsdp

The model's rope becomes the planned DPRoPE table (``rope_type: "dprope"`` in the saved config)
and its rotary op runs on dprope kernels. Defaults follow the paper: AdamW, lr 2e-5, no warmup,
no weight decay; bf16 on GPUs. Checkpoints (model, optimizer, RNG) go to
``--output/checkpoint-<step>`` every ``--save-every`` steps, each written whole or not at all
(see checkpoints.py); ``--resume`` continues from the newest complete one, with the same losses
as an uninterrupted run; a damaged checkpoint is skipped for the one before it. A save that fails
(a full disk) stops the run with the reason and leaves the earlier checkpoints. An output
directory holding an earlier run is refused unless ``--resume`` or ``--overwrite`` says what to do
with it; one that another run is using is refused, and so is a ``--resume`` whose settings (plan,
data, batches) differ from those recorded in ``--output/run.json``. The model's config, the plan and
the data are checked before the output directory is touched. Each step's loss and tokens/s go to
``--output/metrics.jsonl``; the final model is saved with ``save_pretrained`` under
``--output/final`` (written whole, then renamed). ``--fused-projection`` computes q, k, v with one
fused kernel per layer.

The extension is planned from the model's config by the package's one config reader
(``dprope_kernels.hf_config.plan_for_config``): a pre-trained default table is planned with the
planning flags ``dprope plan`` takes; a model that records a DPRoPE plan (a run of this script, or a
``dprope export`` output) continues with that plan; a rope extended another way is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import checkpoints
import torch
import torch.distributed as dist
from text_data import DataError, data_file_problems, load_tokenizer, read_texts, token_blocks
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm import tqdm

import dprope_kernels as dk
from dprope_kernels import files
from dprope_kernels.commands.planning import (
    MAX_LENGTH,
    add_length_flags,
    add_plan_flags,
    integer_in,
    lengths,
    plan_options,
    positive_number,
)
from dprope_kernels.errors import FileProblem


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local model directory (config + weights)")
    p.add_argument("--data", required=True, nargs="+", help=".txt / .jsonl files")
    p.add_argument("--output", required=True)
    add_length_flags(p, required=True, original_help="pre-training length L (default: the config's)")
    add_plan_flags(p)
    p.add_argument("--seq-len", type=integer_in(2),
                   help="training sequence length (default: the target length)")
    p.add_argument("--batch-size", type=integer_in(1), default=1, help="sequences per rank per micro-step")
    p.add_argument("--grad-accum", type=integer_in(1), default=1)
    p.add_argument("--steps", type=integer_in(1), default=1000)
    p.add_argument("--lr", type=positive_number, default=2e-5)
    p.add_argument("--dtype", choices=["bf16", "fp32"],
                   default="bf16" if torch.cuda.is_available() else "fp32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--parallel", choices=["auto", "none", "ddp", "fsdp"], default="auto",
                   help="auto: DDP when launched with several processes")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton", "cuda"],
                   help="dprope kernel backend")
    p.add_argument("--fused-projection", action="store_true",
                   help="compute q, k, v with one fused projection + norm + RoPE kernel per layer")
    p.add_argument("--save-every", type=integer_in(1), default=200)
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue the run in --output from its newest "
                     "complete checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="delete an earlier run in --output and start over")
    p.add_argument("--byte-tokenizer", action="store_true", help="UTF-8 bytes as tokens (models without one)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not Path(args.model).is_dir():
        p.error(f"--model {args.model}: no such directory")
    problems = data_file_problems(args.data)
    if problems:
        p.error(f"--data: {'; '.join(problems)}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        p.error(f"--output {args.output}: not a directory")
    try:
        files.check_writable(args.output)  # a read-only place is refused now, not after the model loads
    except FileProblem as err:
        p.error(str(err))
    earlier = checkpoints.previous_run(Path(args.output))
    if earlier and not (args.resume or args.overwrite):
        p.error(f"--output {args.output} holds an earlier run ({', '.join(earlier[:4])}); pass --resume to "
                "continue it or --overwrite to start over")
    args.error = p.error
    return args


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
    """The model's config with the planned DPRoPE rope; refusals end the process before anything is
    written."""
    from transformers import AutoConfig

    from dprope_kernels.hf_config import plan_for_config
    from dprope_kernels.integrations.transformers import configure_dprope

    dk.register_dprope_rope_type()
    config = AutoConfig.from_pretrained(args.model)
    try:
        plan = plan_for_config(config, where=f"--model {args.model}", **lengths(args), **plan_options(args))
    except (TypeError, ValueError) as err:
        args.error(f"cannot plan the extension: {err}")
    if plan.target_max_position > MAX_LENGTH:
        args.error(f"the target length {plan.target_max_position} is past 2**62")
    if rank == 0:
        print(plan.format_table())
    args.seq_len = args.seq_len or plan.target_max_position
    args.settings = run_settings(args, plan)
    return configure_dprope(config, plan)


OPTION_SETTINGS = {"bins": "bins", "threshold": "threshold", "num_interpolated_dims": "n_hat",
                   "precision": "precision", "selection": "selection", "direction": "direction",
                   "extra_candidates": "candidate", "attention_factor": "attention_factor", "ramp": "ramp"}


def run_settings(args, plan) -> dict:
    """What defines the run: the rope table and the stream of batches. A resume must match it."""
    options = plan_options(args)
    settings = {
        "target_length": plan.target_max_position, "original_length": plan.original_max_position,
        **{name: options.get(key) for key, name in OPTION_SETTINGS.items()},
        "seq_len": args.seq_len, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "lr": args.lr, "seed": args.seed, "dtype": args.dtype, "model": str(Path(args.model).resolve()),
        "data": [str(Path(d).resolve()) for d in args.data], "rope": plan.rope_config(),
    }
    return json.loads(json.dumps(settings))  # as it reads back from run.json


def setting_differences(recorded: dict, current: dict) -> list[str]:
    """Each setting of ``current`` that differs from ``recorded``, as 'what was old, now new'."""
    def shown(value):
        return "unset" if value is None else value

    flags = [f"--{key.replace('_', '-')} was {shown(recorded.get(key))}, now {shown(current[key])}"
             for key in current if key != "rope" and recorded.get(key) != current[key]]
    if flags:
        return flags  # the rope follows from them
    old, new = recorded.get("rope") or {}, current["rope"]
    return [f"the planned rope's {key} was {old.get(key)}, now {new.get(key)}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def claim_output(args, output: Path, rank: int):
    """Lock ``output`` (rank 0 holds the lock for the run) and check or record the run's settings,
    before anything in it changes. Returns the lock to keep open."""
    output.mkdir(parents=True, exist_ok=True)
    held, refusal = None, None
    if rank == 0:
        try:
            held = files.lock_directory(output)
        except files.DirectoryInUse as err:
            refusal = str(err)
    if any(checkpoints.gather(refusal)):
        if rank == 0:
            args.error(refusal)
        sys.exit(2)
    recorded = checkpoints.recorded_settings(output) if args.resume else None
    if recorded is not None:
        differences = setting_differences(recorded, args.settings)
        if differences:
            args.error(f"--resume: the run in {output} was started with other settings: "
                       f"{'; '.join(differences)} (resume it with its settings, or use another --output)")
    if args.overwrite and rank == 0:
        checkpoints.clear_previous_run(output)
    if rank == 0 and recorded is None:
        checkpoints.record_settings(output, args.settings)
    return held


def build_model(args, config, device, world):
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, config=config).to(device, dtype)
    dk.apply_dprope_kernels(model, backend=args.backend, fused_projection=args.fused_projection)
    # transformers 5 renamed it (the old name warns); 4.x has the old one only
    if args.gradient_checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.train()
    parallel = args.parallel if args.parallel != "auto" else ("ddp" if world > 1 else "none")
    if parallel == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)
    elif parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        wrapped = fully_shard(model)
    else:
        wrapped = model
    return model, wrapped


def batches(blocks: torch.Tensor, step: int, batch_size: int, rank: int, world: int,
            seed: int) -> torch.Tensor:
    """The micro-batch of ``step`` for ``rank``: a seeded permutation per epoch, so resuming is exact."""
    per_step = batch_size * world
    per_epoch = max(1, blocks.shape[0] // per_step)
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(seed + epoch))
    start = index * per_step + rank * batch_size
    return blocks[order[start : start + batch_size]]


def train_step(wrapped, optimizer, blocks: torch.Tensor, step: int, *, batch_size: int, grad_accum: int,
               rank: int, world: int, seed: int, device) -> float:
    """One optimizer step over the micro-batches of ``step`` (``blocks``: ``[n_blocks, seq_len]``, in the
    order :func:`batches` gives); returns the loss, averaged over micro-batches and ranks. A loss that
    is not finite ends the process, naming the step."""
    total_loss = 0.0
    for micro in range(grad_accum):
        ids = batches(blocks, step * grad_accum + micro, batch_size, rank, world, seed).to(device)
        loss = wrapped(input_ids=ids, labels=ids).loss / grad_accum
        loss.backward()
        total_loss += loss.detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if world > 1:
        dist.all_reduce(total_loss, op=dist.ReduceOp.AVG)
    loss_value = float(total_loss)
    if not math.isfinite(loss_value):
        raise SystemExit(f"loss is {loss_value} at step {step + 1}")
    return loss_value


def or_exit(rank: int, checkpoint_action, *args):
    """Run a checkpoint save or resume; when it fails, end the process with its message (exit 1)."""
    try:
        return checkpoint_action(*args)
    except checkpoints.CheckpointError as err:
        raise SystemExit(f"error: {err}" if rank == 0 else 1) from None


def training_blocks(args, world: int):
    """``(tokenizer, [n_blocks, seq_len] token blocks)``, or the process ends with a one-line error."""
    try:
        tokenizer = load_tokenizer(args.model, args.byte_tokenizer)
        blocks = token_blocks(read_texts(args.data), tokenizer, args.seq_len)
    except DataError as err:
        args.error(str(err))
    if blocks.shape[0] < args.batch_size * world:
        args.error(f"--data: {blocks.shape[0]} blocks of {args.seq_len} tokens cannot fill one step of "
                   f"{args.batch_size} sequences on {world} ranks")
    return tokenizer, blocks


def save_final(model, tokenizer, full_state, output: Path, byte_tokenizer: bool) -> None:
    """``output/final``: the model (and tokenizer), written whole under a temporary name, then renamed."""
    with files.writing(output / "final", directory=True, replace=True) as tmp:  # a resumed run's replaces it
        model.save_pretrained(tmp, state_dict=full_state)
        if not byte_tokenizer:
            tokenizer.tokenizer.save_pretrained(tmp)


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed)
    # the plan and the data are checked before anything in --output is deleted or written
    config = dprope_config(args, rank)
    tokenizer, blocks = training_blocks(args, world)
    output = Path(args.output)
    lock = claim_output(args, output, rank)  # noqa: F841 - held until the process exits
    model, wrapped = build_model(args, config, device, world)
    seq_len = args.seq_len
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    log = print if rank == 0 else (lambda *_: None)
    step = or_exit(rank, checkpoints.resume, output, wrapped, optimizer, rank, log) if args.resume else 0

    # a with block: the bar is drawn for the last time before an error's message, not after it
    with tqdm(total=args.steps, initial=step, disable=rank != 0, desc="dprope fine-tune") as progress:
        metrics = open(output / checkpoints.METRICS, "a") if rank == 0 else None
        while step < args.steps:
            start = time.perf_counter()
            loss_value = train_step(wrapped, optimizer, blocks, step, batch_size=args.batch_size,
                                    grad_accum=args.grad_accum, rank=rank, world=world, seed=args.seed,
                                    device=device)
            step += 1
            tokens_per_s = args.grad_accum * args.batch_size * world * seq_len / (time.perf_counter() - start)
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_per_s:,.0f}")
            if metrics:
                metrics.write(json.dumps({"step": step, "loss": loss_value, "tokens_per_s": tokens_per_s})
                              + "\n")
                metrics.flush()
            if step % args.save_every == 0 or step == args.steps:
                or_exit(rank, checkpoints.save, output, step, wrapped, optimizer, rank)

    full_state = get_model_state_dict(wrapped,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        dk.revert_dprope_kernels(model)
        save_final(model, tokenizer, full_state, output, args.byte_tokenizer)
        print(f"saved {output / 'final'}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
