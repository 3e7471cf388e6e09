"""Export a DPRoPE extension to formats that other engines load without this package.

A DPRoPE table divides each pair's pre-trained frequency by ``s_i`` (1 = extrapolated, the factor =
interpolated). Two native formats carry per-pair divisors:

- Hugging Face configs, ``rope_type: "longrope"`` with ``short_factor == long_factor == [s_i]``:
  transformers computes ``inv_freq_i = 1 / (s_i * base ** (2i / d))`` (``modeling_rope_utils.
  _compute_longrope_parameters``, 4.45 .. 5.x) and scales cos/sin by ``attention_factor`` (1.0 given
  here). vLLM and SGLang build their Phi-3 LongRoPE class for it; they ignore ``attention_factor`` and
  scale by ``sqrt(1 + ln(max / orig) / ln(orig))`` unless ``original_max_position_embeddings >=
  max_position_embeddings``, so both are set to the target length and the pre-training length lives
  in a ``dprope`` block that engines ignore. :func:`portable_config`, :func:`export_model_dir` and
  :func:`save_pretrained_portable`.
- GGUF files of the ``llama`` architecture: the tensor ``rope_freqs.weight`` (float32,
  ``[n_rot / 2]``) divides each pair's frequency in llama.cpp's graph (the Llama 3.1 mechanism).
  :func:`export_gguf`.

What a format cannot say is refused with the reason (:class:`ExportError`), never written wrong,
and every refusal comes before the first byte: outputs are written under a temporary name and
renamed once complete (:mod:`dprope_kernels.files`).
"""

from __future__ import annotations

import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import files
from .errors import FileProblem, InvalidType, InvalidValue, OutputExists, require
from .hf_config import (
    ConfigError,
    head_dim_of,
    load_config,
    plan_for_config,
    pretrained_rope_settings,
    rope_parameters,
)
from .planner import RopePlan, plan_dprope
from .strategies import default_inv_freq

# model types whose transformers, vLLM and SGLang code reads rope_scaling / rope_parameters with
# "longrope" for a full-head NeoX rotary (checked per version in tests/test_export.py)
MODEL_TYPES = {"llama": None, "qwen2": None, "qwen3": (4, 51), "mistral": (4, 48)}
MAX_ULP = 2  # the exported table reproduces the plan's float32 table to this many ulp (0 for 2**k factors)
GGUF_ARCHITECTURES = ("llama",)  # llama.cpp graphs that pass rope_freqs.weight to ggml_rope_ext (verified)
_NO_FACTOR_GRAPHS = ("qwen2", "qwen3", "qwen2moe", "qwen3moe")  # named in the refusal
_EXPORT_NOTE = ("written by dprope_kernels: engines read rope_scaling (longrope with the per-pair divisors "
                "and the attention factor); this block records the pre-training length and the table, and "
                "is ignored by them")


class ExportError(InvalidValue):
    """What cannot be expressed in the target format; the message says why."""


IGNORED_ROPE_KEYS = "ignore_keys_at_rope_validation"  # transformers 5: rope keys it reads without warning
ENGINES = ("transformers", "vllm", "sglang", "tgi")
DEFAULT_ENGINES = ("transformers", "vllm", "sglang")


@dataclass(frozen=True)
class ExportedTable:
    """A fixed frequency table and the attention factor served with it: a DPRoPE plan, or any table
    ``dprope compare`` measured (YaRN, NTK, llama3, PI, a table file, a plan variant).

    ``factors`` are the per-pair divisors ``s_i`` of the model's own frequencies (``inv_freq_i =
    base_inv_freq_i / s_i``); ``plan`` is the plan when the table is one, recorded so that the
    export reads back as it (``dprope plan --config``, ``examples/train.py``)."""

    name: str
    head_dim: int
    rope_theta: float
    base_inv_freq: torch.Tensor
    inv_freq: torch.Tensor
    factors: tuple
    attention_factor: float
    original_max_position: int
    target_max_position: int
    plan: RopePlan | None = None
    source: str = ""

    def __post_init__(self) -> None:
        bad = [i for i, s in enumerate(self.factors) if not (math.isfinite(s) and s > 0)]
        if bad:
            raise ExportError(f"table {self.name!r}: pairs {bad} have no finite positive divisor of the "
                              "model's own frequency (a zero frequency: the pair does not rotate); no native "
                              "format can say that")

    @property
    def factor(self) -> float:
        return (self.plan.factor if self.plan is not None
                else self.target_max_position / self.original_max_position)

    @property
    def interpolated_pairs(self) -> list[int]:
        return [i for i, s in enumerate(self.factors) if s != 1.0]

    @classmethod
    def from_plan(cls, plan: RopePlan, name: str = "dprope") -> ExportedTable:
        return cls(name, plan.head_dim, plan.rope_theta, plan.base_inv_freq, plan.inv_freq,
                   tuple(longrope_factors(plan)), plan.attention_factor, plan.original_max_position,
                   plan.target_max_position, plan, "plan_dprope")


def as_exported(table) -> ExportedTable:
    """An :class:`ExportedTable` of a RopePlan (or one already)."""
    if isinstance(table, ExportedTable):
        return table
    if isinstance(table, RopePlan):
        return ExportedTable.from_plan(table)
    raise InvalidType(f"plan must be a RopePlan (dk.plan_dprope(...)) or an ExportedTable, "
                      f"got {type(table).__name__}")


# ---------------------------------------------------------------------------------------------
# the per-pair divisors
# ---------------------------------------------------------------------------------------------


def longrope_factors(plan: RopePlan) -> list[float]:
    """``s_i`` with ``plan.inv_freq[i] = plan.base_inv_freq[i] / s_i`` (:meth:`RopePlan.divisors`; checked
    by ExportedTable)."""
    return plan.divisors()


def hf_longrope_inv_freq(factors, head_dim: int, rope_theta: float) -> torch.Tensor:
    """transformers' longrope table, float32, computed as ``_compute_longrope_parameters`` does."""
    ext = torch.tensor(factors, dtype=torch.float32)
    shape = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (ext * rope_theta**shape)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in float32 units in the last place between two positive float32 tables."""
    ia = a.float().contiguous().view(torch.int32).long()
    ib = b.float().contiguous().view(torch.int32).long()
    return int((ia - ib).abs().max()) if ia.numel() else 0


def _check_plan_against(plan: ExportedTable, rotary_dim: int, rope_theta: float, where: str) -> None:
    if plan.head_dim != rotary_dim:
        raise ExportError(f"the plan is for head_dim {plan.head_dim}, but {where} rotates {rotary_dim} dims "
                          f"per head")
    if float(np.float32(plan.rope_theta)) != float(np.float32(rope_theta)):
        raise ExportError(f"the plan is for rope_theta {plan.rope_theta:g}, but {where} has {rope_theta:g}")
    own = default_inv_freq(rotary_dim, rope_theta)
    if not torch.equal(plan.base_inv_freq.float(), own.float()):
        raise ExportError(f"the plan was made from another frequency table (inv_freq=...) than {where}'s own "
                          f"1 / rope_theta ** (2i / d); native formats divide the model's own frequencies, "
                          f"so the plan's table is not a per-pair divisor of them")


def _checked_factors(plan: ExportedTable) -> tuple[list[float], int]:
    factors = list(plan.factors)
    table = hf_longrope_inv_freq(factors, plan.head_dim, plan.rope_theta)
    ulp = ulp_distance(table, plan.inv_freq.float())
    if ulp > MAX_ULP:
        raise ExportError(f"1 / (s_i * base ** (2i / d)) reproduces the plan's table only to {ulp} float32 "
                          f"ulp (at most {MAX_ULP} is exported): the table is not a per-pair divisor of the "
                          f"model's own frequencies")
    return factors, ulp


# ---------------------------------------------------------------------------------------------
# Hugging Face configs
# ---------------------------------------------------------------------------------------------


def _installed_transformers() -> tuple[int, int] | None:
    try:
        import transformers
    except ImportError:
        return None
    parts = transformers.__version__.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def portable_config(config: dict, plan=None, *, transformers_version=None, engines=DEFAULT_ENGINES) -> dict:
    """A ``config.json`` dict that transformers 4.45 .. 5.x, vLLM and SGLang load natively with ``plan``.

    Args:
        config: the model's ``config.json`` as a dict (any rope layout: default RoPE, ``dprope``, or an
            earlier export).
        plan: a :class:`~dprope_kernels.RopePlan` or an :class:`ExportedTable` (default: the plan the
            config records).
        transformers_version: ``(major, minor)`` of the transformers that will load it; default the
            installed one (Mistral needs 4.48+: earlier Mistral code ignores rope scaling).
        engines: the engines the config is for (:data:`ENGINES`). The attention factor is carried as
            ``attention_factor`` (transformers) and ``short_mscale`` / ``long_mscale`` (vLLM and SGLang
            read only these; the config names them in ``ignore_keys_at_rope_validation``, so that
            transformers 5 does not warn of them on every load; 4.x still does). TGI reads neither and
            takes the mscale keys as a scale on the angles: a factor other than 1 is refused for it.

    Writes top-level ``rope_theta``, ``head_dim``, ``max_position_embeddings`` and
    ``original_max_position_embeddings`` (both the target length), ``rope_scaling`` = ``{"rope_type":
    "longrope", "short_factor": s, "long_factor": s, "factor": ..., "attention_factor": m,
    "original_max_position_embeddings": target}`` and a ``dprope`` block (pre-training length, factor,
    the plan's ``rope_config()`` or the table's name); ``rope_parameters`` is dropped (transformers 5
    rebuilds it from these).
    """
    if not isinstance(config, dict):
        raise InvalidType(f"config must be a config.json dict, got {type(config).__name__}")
    _check_family(config, transformers_version)
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise InvalidValue(f"engines must be among {ENGINES}, got {unknown}")
    settings = pretrained_rope_settings(config)  # refuses a rope extended another way
    params = rope_parameters(config)
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ExportError(f"partial_rotary_factor {partial}: the exported families rotate the whole head "
                          "(their attention keeps no pass-through dims) while longrope would build "
                          "int(head_dim * factor) dims of factors; a partial rotary model is not exported")
    table = as_exported(plan_for_config(config) if plan is None else plan)
    _check_plan_against(table, settings.rotary_dim, settings.rope_theta, "the config")
    factors, ulp = _checked_factors(table)
    if table.attention_factor != 1.0 and "tgi" in engines:
        raise ExportError(f"TGI cannot carry the attention factor {table.attention_factor:g}: it reads "
                          "neither attention_factor nor (as a factor on cos/sin) short_mscale/long_mscale; "
                          "export for the other engines, or plan with --attention-factor none")
    out = {k: v for k, v in config.items()
           if k not in ("rope_parameters", "rope_scaling", "dprope", IGNORED_ROPE_KEYS)}
    target = table.target_max_position
    out.update(rope_theta=table.rope_theta, head_dim=head_dim_of(config), max_position_embeddings=target,
               original_max_position_embeddings=target)
    out["rope_scaling"] = {"rope_type": "longrope", "short_factor": factors, "long_factor": factors,
                           "factor": table.factor, "attention_factor": table.attention_factor,
                           "original_max_position_embeddings": target}
    if table.attention_factor != 1.0 and {"vllm", "sglang"} & set(engines):
        out["rope_scaling"].update(short_mscale=table.attention_factor, long_mscale=table.attention_factor)
        # transformers 5 warns of rope keys it does not read on every load, except those a config names
        # here; 4.x ignores this key (and warns)
        out[IGNORED_ROPE_KEYS] = ["short_mscale", "long_mscale"]
    out["dprope"] = _block(table, ulp, MODEL_TYPES[config["model_type"]])
    return out


def _check_family(config: dict, transformers_version) -> None:
    if isinstance(config.get("text_config"), dict):
        raise ExportError("the config nests a text_config (a multimodal model); export serves Llama, Qwen2, "
                          "Qwen3 and Mistral causal LMs")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ExportError(f"model_type {model_type!r} is not exported: {sorted(MODEL_TYPES)} are the "
                          "families whose rotary code in transformers, vLLM and SGLang takes per-pair "
                          "longrope factors for a full-head NeoX rotation (checked by running transformers)")
    needed = MODEL_TYPES[model_type]
    version = _installed_transformers() if transformers_version is None else tuple(transformers_version)[:2]
    if needed is not None and version is not None and version < needed:
        reason = ("Mistral's rotary code before 4.48 ignores rope_scaling (the model would silently run "
                  "plain RoPE)" if model_type == "mistral"
                  else f"{model_type} first appears in transformers {needed[0]}.{needed[1]}")
        raise ExportError(f"transformers {version[0]}.{version[1]} cannot load this export: {reason}")


def _block(table: ExportedTable, ulp: int, needed) -> dict:
    """The ``dprope`` block engines ignore: the pre-training length and what the table is."""
    block = {"note": _EXPORT_NOTE, "table": table.name,
             "original_max_position_embeddings": table.original_max_position,
             "target_max_position_embeddings": table.target_max_position, "factor": table.factor,
             "attention_factor": table.attention_factor, "interpolated_pairs": table.interpolated_pairs,
             "inv_freq_max_ulp": ulp}
    if table.plan is not None:
        block["rope_config"] = table.plan.rope_config()
    else:
        block["source"] = table.source
    if needed is not None:
        block["requires_transformers"] = f">={needed[0]}.{needed[1]}"
    return block


def _check_output_directory(output: Path, source: Path | None) -> None:
    """Refuse an output directory that exists with content, or that lies inside the model directory
    copied into it (the copy would contain itself)."""
    if source is not None and source.is_dir():
        if files.inside(output, source):
            where = ("is the model directory" if output.resolve() == source.resolve()
                     else "lies inside the model directory")
            raise ExportError(f"the output {output} {where} {source}, whose files are copied into it; "
                              "choose an output outside it")
        if files.inside(source, output):
            raise ExportError(f"the model directory {source} lies inside the output {output}; "
                              "choose another output")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OutputExists(f"{output} exists and is not an empty directory")


def _write_model_dir(output: Path, portable, copy_from: Path | None = None, save=None) -> dict:
    """Write the directory whole under a temporary name, then rename it to ``output``. ``portable`` is
    the config to write, or a function of the saved ``config.json`` dict returning it."""
    with files.writing(output, directory=True) as tmp:
        if save is not None:
            save(tmp)
        if copy_from is not None:
            for item in copy_from.iterdir():
                if item.name != "config.json":
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        if callable(portable):
            portable = portable(load_config(tmp)[1])
        (tmp / "config.json").write_text(files.dumps(portable, indent=2, sort_keys=True) + "\n")
    return portable


def export_model_dir(source, output, plan=None, *, engines=DEFAULT_ENGINES, **plan_args) -> dict:
    """Write ``output/`` = ``source`` (a model directory or a ``config.json``) with a portable config.

    The other files of a model directory (weights, tokenizer, generation config) are copied as they
    are. ``plan`` is a RopePlan or an :class:`ExportedTable`; else ``plan_args`` (``target_max_position``,
    ``factor``, ``original_max_position``, plan options) plan a config with default RoPE
    (:func:`~dprope_kernels.hf_config.plan_for_config`). ``engines``: see :func:`portable_config`.
    Everything is checked before the first byte is written; the directory appears under its name only once
    complete.
    Returns the written config.
    """
    source, output = Path(source), Path(output)
    path, config = load_config(source)
    _check_output_directory(output, source)
    if plan is None:
        if not {"target_max_position", "factor"} & {k for k, v in plan_args.items() if v is not None} \
                and not _records_a_plan(config):
            raise ExportError("the config has default RoPE: give the target length or the factor to plan "
                              "the extension")
        plan = plan_for_config(config, where=path, **plan_args)
    elif plan_args:
        raise InvalidType("give a plan or planning arguments, not both")
    return _write_model_dir(output, portable_config(config, plan, engines=engines),
                            copy_from=source if source.is_dir() else None)


def _records_a_plan(config: dict) -> bool:
    try:
        return pretrained_rope_settings(config).parameters.get("rope_type") == "dprope"
    except ConfigError:
        return False


def save_pretrained_portable(model, save_directory, plan=None, *, engines=DEFAULT_ENGINES,
                             **save_kwargs) -> dict:
    """``model.save_pretrained(save_directory)`` with a portable ``config.json``
    (see :func:`portable_config`).

    ``plan`` defaults to the one ``model.config`` records (rope type ``dprope``). A model patched with
    :func:`~dprope_kernels.apply_dprope_kernels` saves the same weights (the patch holds no persistent
    state). The config is checked before anything is written; ``save_directory`` must not exist or be
    empty, and appears only once complete. Returns the written config.
    """
    save_directory = Path(save_directory)
    _check_output_directory(save_directory, None)
    # refusals come before any weights are written
    portable_config(model.config.to_dict(), plan, engines=engines)
    return _write_model_dir(save_directory, lambda saved: portable_config(saved, plan, engines=engines),
                            save=lambda tmp: model.save_pretrained(tmp, **save_kwargs))


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp)
# ---------------------------------------------------------------------------------------------

_FACTOR_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


UINT32_MAX = (1 << 32) - 1  # llama.cpp reads context lengths as uint32


def _field(reader, key, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _required(reader, key):
    value = _field(reader, key)
    if value is None:
        raise ExportError(f"the GGUF file has no {key!r}, which llama.cpp needs for this architecture")
    return value


def _gguf():
    return require("gguf", "GGUF export", "pip install 'dprope_kernels[gguf]' (or pip install gguf)")


def read_gguf(source):
    """A ``gguf.GGUFReader`` of ``source``, or an ExportError saying what the file is not."""
    gguf = _gguf()
    source = Path(source)
    if not source.is_file():
        raise ExportError(f"{source}: no such file (give a .gguf model file)")
    try:
        return gguf.GGUFReader(str(source))
    except OSError as err:
        raise ExportError(f"{source}: cannot read it ({err.strerror or err})") from None
    except (ValueError, struct.error, IndexError, EOFError) as err:
        raise ExportError(f"{source} is not a readable GGUF file (a llama.cpp model file: it begins with the "
                          f"magic bytes 'GGUF', then a version, key-value metadata and tensors): "
                          f"{err}") from None


def gguf_rope_settings(reader) -> dict:
    """Architecture, rotary dims, base and context length of a GGUF file, refusing what cannot take factors.

    The rotary dims follow llama.cpp (``llama_model_loader``): ``rope.dimension_count``, else the key
    head size ``attention.key_length``, else ``embedding_length / attention.head_count``.
    """
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        if arch in _NO_FACTOR_GRAPHS:
            why = (f"llama.cpp's {arch} graph passes no frequency factors to ggml_rope_ext "
                   f"(rope_freqs would be ignored)")
        else:
            why = f"only {list(GGUF_ARCHITECTURES)} graphs are verified to apply rope_freqs.weight"
        raise ExportError(f"GGUF architecture {arch!r} is not exported: {why}")
    names = {t.name for t in reader.tensors}
    carried = sorted(names & set(_FACTOR_TENSORS))
    if carried:
        raise ExportError(f"the file carries rope factors already ({', '.join(carried)}); DPRoPE divides the "
                          "model's own frequencies, so export from the file without them")
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    factor = _field(reader, f"{arch}.rope.scaling.factor", _field(reader, f"{arch}.rope.scale_linear", 0.0))
    attn = _field(reader, f"{arch}.rope.scaling.attn_factor", 1.0)
    # llama.cpp's converter writes type "longrope" and no factors for an exported (longrope) config: llama.cpp
    # then looks for rope_factors_long/short, finds none and runs plain RoPE. Such a file is taken (the
    # type is dropped so that rope_freqs applies), its context_length being the target already.
    converted = scaling == "longrope" and factor in (0.0, 1.0) and attn == 1.0
    if not converted and (scaling not in (None, "none", "linear") or factor not in (0.0, 1.0) or attn != 1.0):
        raise ExportError(f"the file has rope scaling already (type {scaling!r}, factor {factor}, "
                          f"attn_factor {attn}); llama.cpp would apply it on top of the per-pair factors")
    n_rot = _field(reader, f"{arch}.rope.dimension_count", _field(reader, f"{arch}.attention.key_length"))
    if n_rot is None:
        n_rot = (int(_required(reader, f"{arch}.embedding_length"))
                 // int(_required(reader, f"{arch}.attention.head_count")))
    return {"architecture": arch, "rotary_dim": int(n_rot),
            "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            "context_length": int(_required(reader, f"{arch}.context_length")),
            "converted_longrope": converted}


def _gguf_plan(settings: dict, source: Path, plan, target_max_position, factor, original_max_position,
               plan_options) -> ExportedTable:
    if settings["converted_longrope"] and plan is None and original_max_position is None:
        raise ExportError("the file says rope scaling type 'longrope' but carries no factors (llama.cpp's "
                          "converter makes this of an exported config; llama.cpp runs it as plain RoPE) and "
                          "its context_length is the target length already: give the pre-training length "
                          "(--original)")
    if plan is None:
        if original_max_position is not None and (isinstance(original_max_position, bool) or not isinstance(
                original_max_position, int) or original_max_position < 1):
            raise ExportError(f"the pre-training length must be a positive integer, "
                              f"got {original_max_position!r}")
        plan = plan_dprope(head_dim=settings["rotary_dim"], rope_theta=settings["rope_theta"],
                           original_max_position=(settings["context_length"] if original_max_position is None
                                                  else original_max_position),
                           target_max_position=target_max_position, factor=factor, **plan_options)
    elif (target_max_position is not None or factor is not None or original_max_position is not None
          or plan_options):
        raise InvalidType("give a plan or planning arguments, not both")
    plan = as_exported(plan)
    _check_plan_against(plan, settings["rotary_dim"], settings["rope_theta"], str(source))
    for name, length in (("target", plan.target_max_position), ("original", plan.original_max_position)):
        if length > UINT32_MAX:
            raise ExportError(f"the {name} length {length} does not fit GGUF's uint32 context length "
                              f"(at most {UINT32_MAX})")
    return plan


def export_gguf(source, output, plan=None, *, target_max_position: int | None = None,
                factor: float | None = None, original_max_position: int | None = None, **plan_options):
    """Copy a ``llama`` GGUF file adding ``rope_freqs.weight`` = the table's ``s_i``, the target context
    length and, when it is not 1, the attention factor (``{arch}.rope.scaling.attn_factor``: llama.cpp
    multiplies cos and sin by it for every architecture when the scaling type is none or linear).

    ``plan`` (a RopePlan or an :class:`ExportedTable`) is made, unless given, from the file's rotary
    dims, ``rope.freq_base`` and ``context_length`` (or ``original_max_position``) with
    ``target_max_position`` / ``factor`` and plan options. The file gains ``dprope.*`` keys
    (pre-training length, factor, interpolated pairs, the table's name) that llama.cpp ignores. Every
    refusal comes before the first byte; the file is written under a temporary name beside ``output``
    and renamed once complete. Returns the plan (or the table given).
    """
    source, output = Path(source), Path(output)
    if output.exists():
        raise OutputExists(f"{output} exists")
    if not output.parent.is_dir():
        raise FileProblem(f"{output.parent} is not a directory (the output file's folder must exist)")
    reader = read_gguf(source)
    settings = gguf_rope_settings(reader)
    table = _gguf_plan(settings, source, plan, target_max_position, factor, original_max_position,
                       plan_options)
    with files.writing(output) as tmp:
        _write_gguf(reader, settings, table, tmp)
    return table.plan if table.plan is not None else table


def _write_gguf(reader, settings: dict, plan: ExportedTable, path: Path) -> None:
    gguf = _gguf()

    arch = settings["architecture"]
    factors = np.asarray(plan.factors, dtype=np.float32)
    writer = gguf.GGUFWriter(str(path), arch, endianess=reader.endianess)
    alignment = _field(reader, "general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment)
    context_key = f"{arch}.context_length"
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        if field.name == f"{arch}.rope.scaling.type" and settings["converted_longrope"]:
            continue  # llama.cpp's llama graph reads rope_freqs only when the type is not longrope
        if field.name == f"{arch}.rope.scaling.attn_factor" and plan.attention_factor != 1.0:
            continue  # 1.0 in the source (Llama 3.1 conversions write it): the table's own is written below
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = plan.target_max_position if field.name == context_key else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    if plan.attention_factor != 1.0:
        writer.add_float32(f"{arch}.rope.scaling.attn_factor", plan.attention_factor)
    writer.add_uint32("dprope.original_context_length", plan.original_max_position)
    writer.add_float32("dprope.factor", plan.factor)
    writer.add_string("dprope.table", plan.name)
    if plan.interpolated_pairs:
        writer.add_array("dprope.interpolated_pairs", plan.interpolated_pairs)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.add_tensor_info("rope_freqs.weight", factors.shape, factors.dtype, factors.nbytes,
                           gguf.GGMLQuantizationType.F32)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
        writer.write_tensor_data(factors)
    finally:
        writer.close()
