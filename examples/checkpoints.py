"""Crash-safe training checkpoints for ``train.py``: a save is complete or it is not there.

A save writes into ``.checkpoint-<step>.partial`` (model and optimizer with
torch.distributed.checkpoint, every rank's RNG state, then ``trainer_state.json`` last), flushes
it to disk and renames it to ``checkpoint-<step>`` in one step. A kill at any moment leaves
either the previous checkpoints untouched or the new one whole. Resuming takes the newest
complete ``checkpoint-<step>`` and says which others it skipped and why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

NAME = re.compile(r"checkpoint-(\d+)")
STATE_FILE = "trainer_state.json"
METRICS = "metrics.jsonl"
# set by the tests: the process dies (like kill -9) in the middle of saving this step
_KILL_DURING_SAVE = os.environ.get("DPROPE_EXAMPLE_KILL_DURING_SAVE")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")) + [path]:
        _fsync(item)


def save(output: Path, step: int, model, optimizer, rank: int) -> Path:
    """Write ``output/checkpoint-<step>`` atomically (every rank calls this)."""
    partial = output / f".checkpoint-{step}.partial"
    final = output / f"checkpoint-{step}"
    if rank == 0 and partial.exists():
        shutil.rmtree(partial)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(partial))
    rng = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, partial / f"rng-{rank}.pt")
    if _KILL_DURING_SAVE == str(step):
        os._exit(137)
    _barrier()
    if rank == 0:
        (partial / STATE_FILE).write_text(json.dumps({"step": step, "complete": True}))
        _fsync_tree(partial)
        if final.exists():  # re-saving a step after a resume: the new copy replaces the old one whole
            stale = output / f".checkpoint-{step}.stale"
            os.replace(final, stale)
            os.replace(partial, final)
            shutil.rmtree(stale)
        else:
            os.replace(partial, final)
        _fsync(output)  # the rename itself reaches the disk
    _barrier()
    return final


@dataclass
class Found:
    complete: list[tuple[int, Path]]  # newest first
    skipped: list[str]  # "name (why)"


def scan(output: Path) -> Found:
    """The complete checkpoints in ``output`` and what else looks like one."""
    complete, skipped = [], []
    for path in sorted(output.iterdir()) if output.is_dir() else []:
        if path.name.startswith(".checkpoint-") and path.name.endswith(".partial"):
            skipped.append(f"{path.name} (a save that did not finish)")
            continue
        if not path.name.startswith("checkpoint"):
            continue
        match = NAME.fullmatch(path.name)
        if match is None or not path.is_dir():
            skipped.append(f"{path.name} (not a checkpoint-<step> directory)")
            continue
        step = int(match.group(1))
        state = path / STATE_FILE
        try:
            recorded = json.loads(state.read_text()).get("step")
        except (OSError, ValueError):
            recorded = None
        if recorded != step or not (path / ".metadata").exists():
            skipped.append(f"{path.name} (incomplete: no {STATE_FILE} and metadata for step {step})")
            continue
        complete.append((step, path))
    complete.sort(reverse=True)
    return Found(complete, skipped)


def load(path: Path, model, optimizer, rank: int) -> int:
    """Restore model, optimizer and this rank's RNG from a complete checkpoint; returns its step."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.random.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / STATE_FILE).read_text())["step"]


def resume(output: Path, model, optimizer, rank: int, log) -> int:
    """Load the newest complete checkpoint that loads (trying older ones when one is damaged), cut
    ``metrics.jsonl`` back to its step, and return the step (0 when there is none)."""
    found = scan(output)
    for note in found.skipped:
        log(f"skipping {note}")
    step = 0
    for candidate, path in found.complete:
        try:
            step = load(path, model, optimizer, rank)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint: say so, try the one before
            log(f"skipping {path.name} (damaged: {type(err).__name__}: {err})")
            continue
        log(f"resumed from {path.name} at step {step}")
        break
    else:
        log("no complete checkpoint to resume from; starting at step 0")
    if rank == 0:
        truncate_metrics(output / METRICS, step)
    _barrier()
    return step


def truncate_metrics(metrics: Path, step: int) -> None:
    """Keep only rows up to ``step`` (a resumed run rewrites the rest), written atomically."""
    if not metrics.exists():
        return
    kept = []
    for line in metrics.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a torn last line from a kill: drop it and everything after
    partial = metrics.with_suffix(".partial")
    partial.write_text("".join(f"{line}\n" for line in kept))
    os.replace(partial, metrics)


def previous_run(output: Path) -> list[str]:
    """What in ``output`` belongs to an earlier run (checkpoints, metrics, final model)."""
    if not output.is_dir():
        return []
    return sorted(p.name for p in output.iterdir()
                  if p.name.startswith(("checkpoint", ".checkpoint-")) or p.name in (METRICS, "final"))


def clear_previous_run(output: Path) -> None:
    for name in previous_run(output):
        path = output / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
