"""Crash-safe training checkpoints for ``train.py``: a save is complete or it is not there.

A save writes into ``.checkpoint-<step>.partial`` (model and optimizer with
torch.distributed.checkpoint, every rank's RNG state, then ``trainer_state.json`` last), flushes
it to disk and renames it to ``checkpoint-<step>`` in one step. A kill at any moment leaves
either the previous checkpoints untouched or the new one whole. Resuming takes the newest
complete ``checkpoint-<step>`` that loads and says which others it skipped and why. A save that
fails (a full disk) removes its partial directory and says so; the checkpoints before it stay.

The output directory also holds ``run.json`` (the settings that define the run, which a resume
must match) and ``.lock``, locked by the run using the directory so that a second one is refused
(``dprope_kernels.files.lock_directory``, which ``dprope compare`` uses too).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from dprope_kernels.files import fsync

NAME = re.compile(r"checkpoint-(\d+)")
STATE_FILE = "trainer_state.json"
METRICS = "metrics.jsonl"
SETTINGS = "run.json"
NEARLY_FULL = 1 << 20  # bytes free below which a failed write is put down to a full disk
# set by the tests: the process dies (like kill -9) in the middle of saving this step
_KILL_DURING_SAVE = os.environ.get("DPROPE_EXAMPLE_KILL_DURING_SAVE")


class CheckpointError(Exception):
    """A checkpoint could not be written, or none could be read; the message says which and why."""


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather(item) -> list:
    """``item`` from every rank (just this process's outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [item]
    items = [None] * dist.get_world_size()
    dist.all_gather_object(items, item)
    return items


def _fsync_tree(path: Path) -> None:
    for item in sorted(path.rglob("*")) + [path]:
        fsync(item)


def _first_line(text: str, limit: int = 200) -> str:
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(err: BaseException) -> str:
    """One line for an error; for a CheckpointException, the errors it wraps instead of its tracebacks."""
    if isinstance(err, CheckpointException):
        return "; ".join(dict.fromkeys(describe(inner) for inner, _ in err.failures.values()))
    text = _first_line(str(err)) or ("a file ends early" if isinstance(err, EOFError) else "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _interrupt_inside(err: BaseException) -> BaseException | None:
    """A KeyboardInterrupt or SystemExit that torch.distributed.checkpoint wrapped into ``err``."""
    if isinstance(err, CheckpointException):
        for inner, _ in err.failures.values():
            if not isinstance(inner, Exception):
                return inner
    return None


def _chain(err: BaseException) -> list[BaseException]:
    """``err``, the errors it wraps and their causes and contexts."""
    seen: list[BaseException] = []
    todo = [err]
    while todo:
        item = todo.pop()
        if item is None or any(item is known for known in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
        if isinstance(item, CheckpointException):
            todo += [inner for inner, _ in item.failures.values()]
    return seen


def _megabytes(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _write_failure(err: BaseException, output: Path) -> str:
    """What a failed write says, put down to a full disk when the errno or the free space says so
    (torch.save reports a failed write as ``enforce fail at inline_container.cc``, without errno)."""
    free = shutil.disk_usage(output).free
    out_of_space = any(isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT)
                       for item in _chain(err))
    if out_of_space or free < NEARLY_FULL:
        return f"no space left on device ({_megabytes(free)} free in {output}; {describe(err)})"
    return describe(err)


def _attempt(write, output: Path) -> str | None:
    """Run ``write``; None when it worked, else what went wrong."""
    try:
        write()
    except (CheckpointException, Exception) as err:  # CheckpointException is a BaseException
        interrupt = _interrupt_inside(err)
        if interrupt is not None:
            raise interrupt from err
        return _write_failure(err, output)
    return None


def _newest_complete(output: Path) -> Path | None:
    complete = scan(output).complete
    return complete[0][1] if complete else None


def save(output: Path, step: int, model, optimizer, rank: int) -> Path:
    """Write ``output/checkpoint-<step>`` atomically (every rank calls this). When a rank cannot
    write its part, the partial directory is removed and CheckpointError says why."""
    partial = output / f".checkpoint-{step}.partial"
    final = output / f"checkpoint-{step}"
    previous = _newest_complete(output)
    if rank == 0 and partial.exists():
        shutil.rmtree(partial)
    _barrier()
    failure = _attempt(lambda: _write_states(partial, step, model, optimizer, rank), output)
    _stop_if_failed(failure, partial, step, previous, rank)
    failure = _attempt(lambda: _publish(output, partial, final, step), output) if rank == 0 else None
    _stop_if_failed(failure, partial, step, previous, rank)
    return final


def _write_states(partial: Path, step: int, model, optimizer, rank: int) -> None:
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(partial))
    rng = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, partial / f"rng-{rank}.pt")
    if _KILL_DURING_SAVE == str(step):
        os._exit(137)


def _publish(output: Path, partial: Path, final: Path, step: int) -> None:
    """Rank 0: mark the partial directory complete, flush it and rename it to ``final``."""
    (partial / STATE_FILE).write_text(json.dumps({"step": step, "complete": True}))
    _fsync_tree(partial)
    if final.exists():  # re-saving a step after a resume: the new copy replaces the old one whole
        stale = output / f".checkpoint-{step}.stale"
        os.replace(final, stale)
        os.replace(partial, final)
        shutil.rmtree(stale)
    else:
        os.replace(partial, final)
    fsync(output)  # the rename itself reaches the disk


def _stop_if_failed(failure: str | None, partial: Path, step: int, previous: Path | None, rank: int) -> None:
    """Every rank learns whether any rank failed; then rank 0 removes the partial directory and all raise."""
    failures = [item for item in gather(failure) if item]
    if not failures:
        return
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
    kept = (f"the previous checkpoint, {previous.name}, is intact" if previous
            else "there is no earlier checkpoint")
    raise CheckpointError(f"saving checkpoint-{step} failed: {'; '.join(dict.fromkeys(failures))}; {kept}")


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


@contextmanager
def _without_library_warnings():
    """torch.distributed.checkpoint logs every unreadable metadata file with its traceback on the
    root logger; a damaged checkpoint is reported in one line instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load(path: Path, model, optimizer, rank: int) -> int:
    """Restore model, optimizer and this rank's RNG from a complete checkpoint; returns its step."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with _without_library_warnings():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=True)
        torch.random.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / STATE_FILE).read_text())["step"]


def _load_problem(path: Path, model, optimizer, rank: int) -> str | None:
    """None when ``path`` loaded, else why not."""
    try:
        load(path, model, optimizer, rank)
    except (CheckpointException, Exception) as err:  # CheckpointException is a BaseException
        interrupt = _interrupt_inside(err)
        if interrupt is not None:
            raise interrupt from err
        return describe(err)
    return None


def resume(output: Path, model, optimizer, rank: int, log) -> int:
    """Load the newest complete checkpoint that loads (trying older ones when one is damaged), cut
    ``metrics.jsonl`` back to its step, and return the step (0 when there is none). CheckpointError
    when every checkpoint is damaged: a failed load may have changed the model."""
    found = scan(output)
    for note in found.skipped:
        log(f"skipping {note}")
    step, damaged = 0, []
    for candidate, path in found.complete:
        problems = [item for item in gather(_load_problem(path, model, optimizer, rank)) if item]
        if problems:
            log(f"skipping {path.name} (damaged: {'; '.join(dict.fromkeys(problems))})")
            damaged.append(path.name)
            continue
        step = candidate
        log(f"resumed from {path.name} at step {step}")
        break
    else:
        if damaged:
            raise CheckpointError(f"every checkpoint in {output} is damaged ({', '.join(damaged)}; see "
                                  "above) and a failed load may have changed the model, so the run stops; "
                                  "--overwrite starts over")
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
                  if p.name.startswith(("checkpoint", ".checkpoint-"))
                  or p.name in (METRICS, SETTINGS, "final"))


def clear_previous_run(output: Path) -> None:
    for name in previous_run(output):
        path = output / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def recorded_settings(output: Path) -> dict | None:
    """The settings the run in ``output`` was started with (None for a run that predates them)."""
    path = output / SETTINGS
    return json.loads(path.read_text()) if path.exists() else None


def record_settings(output: Path, settings: dict) -> None:
    partial = output / f"{SETTINGS}.partial"
    partial.write_text(json.dumps(settings, indent=1) + "\n")
    os.replace(partial, output / SETTINGS)
