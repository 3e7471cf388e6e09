"""The tables ``dprope compare`` runs: transformers' rope types, DPRoPE plans and their variants, table
files."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from .documents import CompareError, named

HF_TABLES = ("original", "pi", "ntk", "yarn", "llama3", "ntk-dynamic")
_FROM_THE_MODEL = {"head_dim", "rope_theta", "original_max_position", "target_max_position", "factor",
                   "inv_freq"}


@dataclass
class TableSpec:
    name: str
    kind: str  # "hf" (a transformers rope type) or "table" (a fixed table)
    rope: dict | None = None  # rope parameters for kind "hf" (rope_theta included)
    inv_freq: list | None = None  # float64 table for kind "table"
    attention_factor: float = 1.0  # kind "table": the factor on cos and sin (1: a pure rotation)
    source: str = ""  # how it was made, for the record
    plan: dict | None = None  # plan summary of DPRoPE tables

    @property
    def is_fixed(self) -> bool:
        """One table at every length (not dynamic NTK): what ``dprope export`` can write."""
        return self.kind == "table" or self.rope.get("rope_type") != "dynamic"

    def key(self, transformers_version: str) -> str:
        """What the table is, hashed: a rope type's parameters (and the transformers that builds it) or
        the table's values and attention factor. Records made under another key are not reused."""
        what = ([self.rope, transformers_version] if self.kind == "hf"
                else [self.inv_freq, self.attention_factor])
        return hashlib.sha256(json.dumps([self.kind, *what], sort_keys=True).encode()).hexdigest()[:16]


def hf_rope_parameters(name: str, theta: float, head_dim: int, original: int, factor: float) -> dict:
    if name == "original":
        return {"rope_type": "default", "rope_theta": theta}
    if name == "pi":
        return {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    if name == "ntk":
        return {"rope_type": "default", "rope_theta": theta * factor ** (head_dim / (head_dim - 2))}
    if name == "yarn":
        return {"rope_type": "yarn", "rope_theta": theta, "factor": factor,
                "original_max_position_embeddings": original}
    if name == "llama3":
        return {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": original}
    if name == "ntk-dynamic":
        return {"rope_type": "dynamic", "rope_theta": theta, "factor": factor}
    raise KeyError(name)


def read_table_file(name: str, path: str, n_pairs: int) -> tuple[list[float], float]:
    """``(inv_freq, attention_factor)`` from a JSON list of frequencies or an object with ``inv_freq``
    (e.g. ``dprope plan --json``) and optionally ``attention_factor``, checked as every table is
    (:func:`~dprope_kernels.planner.check_table`)."""
    from ...planner import check_table

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise CompareError(f"--table-file {name}: cannot read {path}: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CompareError(f"--table-file {name}: {path} is not JSON ({err})") from None
    factor = data.get("attention_factor", 1.0) if isinstance(data, dict) else 1.0
    table = data.get("inv_freq") if isinstance(data, dict) else data
    if not isinstance(table, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              for x in table):
        raise CompareError(f"--table-file {name}: {path} must hold a list of numbers or an object with "
                           f"'inv_freq'")
    if len(table) != n_pairs:
        raise CompareError(f"--table-file {name}: {len(table)} frequencies, the model has {n_pairs} "
                           f"(rotary dims {2 * n_pairs})")
    try:
        checked, factor = check_table(table, factor, n_pairs=n_pairs, where=f"--table-file {name}")
    except (ValueError, TypeError) as err:
        raise CompareError(str(err)) from None
    return checked.tolist(), factor


def variant_options(spec: str) -> tuple[str, dict]:
    name, value = named(spec, "--dprope-variant")
    try:
        options = json.loads(value)
    except json.JSONDecodeError as err:
        raise CompareError(f"--dprope-variant {name}: not JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(options, dict):
        raise CompareError(f"--dprope-variant {name}: give plan_dprope options as a JSON object, got {value}")
    bad = _FROM_THE_MODEL & set(options)
    if bad:
        raise CompareError(f"--dprope-variant {name}: {sorted(bad)} come from the model and the lengths")
    return name, options


def paper_n_hat(head_dim: int, factor: float) -> int:
    """The paper's n_hat rule scaled to ``head_dim``: Llama 2 interpolates 80 of 128 dims at x2 and
    64 of 128 at x4 (linear in log2(factor) between, clamped outside), rounded to even dims."""
    t = min(max(math.log2(factor) - 1.0, 0.0), 1.0)
    fraction = (80 + (64 - 80) * t) / 128
    return int(round(head_dim * fraction / 2)) * 2


def default_variants(head_dim: int, factor: float) -> dict[str, dict]:
    """Beside ``dprope`` (the planner's default: robust, soft cutoff, YaRN's attention factor): the same
    without each of its two additions, and the paper's two rules as published (no attention factor)."""
    n_hat = paper_n_hat(head_dim, factor)
    return {"dprope-hard": {"ramp": 1.0}, "dprope-t1": {"attention_factor": "none"},
            "dprope-paper": {"selection": "paper", "attention_factor": "none"},
            f"dprope-nhat{n_hat}": {"num_interpolated_dims": n_hat, "attention_factor": "none"}}


def _dprope_spec(name: str, options: dict, model) -> TableSpec:
    """A DPRoPE plan of the model's pre-trained table (``model``: rotary_dim, rope_theta, original,
    target)."""
    from ...planner import plan_dprope

    try:
        plan = plan_dprope(head_dim=model.rotary_dim, rope_theta=model.rope_theta,
                           original_max_position=model.original, target_max_position=model.target, **options)
    except TypeError as err:
        raise CompareError(f"--dprope-variant {name}: plan_dprope rejects {options}: {err}") from None
    except ValueError as err:
        raise CompareError(f"--dprope-variant {name}: {err}") from None
    return TableSpec(name, "table", inv_freq=plan.inv_freq.tolist(), attention_factor=plan.attention_factor,
                     source=f"plan_dprope(**{json.dumps(options)})",
                     plan={"options": options, "interpolated_pairs": plan.interpolated_pairs,
                           "attention_factor": plan.attention_factor, "disturbance": plan.disturbance,
                           "baselines": plan.baselines})


def build_table_specs(args, model, dprope_options: dict) -> list[TableSpec]:
    """Every table the command asks for, in run order (``--tables`` picks and orders them)."""
    head_dim, theta, original, target = model.rotary_dim, model.rope_theta, model.original, model.target
    factor = target / original
    specs = []
    for name in ("original", "pi", "ntk", "yarn", "llama3"):
        rope = hf_rope_parameters(name, theta, head_dim, original, factor)
        specs.append(TableSpec(name, "hf", rope=rope, source=f"transformers rope type {rope}"))
    variants = [("dprope", dprope_options)]
    if not args.no_default_variants:
        variants += default_variants(head_dim, factor).items()
    variants += [variant_options(spec) for spec in args.dprope_variant]  # a clash is refused, not swapped in
    _unique([name for name, _ in variants] + [s.name for s in specs] + ["ntk-dynamic"]
            + [named(spec, "--table-file")[0] for spec in args.table_file])
    specs += [_dprope_spec(name, options, model) for name, options in variants]
    specs.append(TableSpec("ntk-dynamic", "hf",
                           rope=hf_rope_parameters("ntk-dynamic", theta, head_dim, original, factor),
                           source="transformers rope type dynamic (the whole L' window scaled for L')"))
    for spec in args.table_file:
        name, path = named(spec, "--table-file")
        table, attention = read_table_file(name, path, head_dim // 2)
        specs.append(TableSpec(name, "table", inv_freq=table, attention_factor=attention,
                               source=f"file {path}"))
    return _chosen(specs, args.tables)


def _unique(names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CompareError(f"table names must be unique; {dupes} given twice (a variant or file named like "
                           f"another table, or twice); name it otherwise")


def _chosen(specs: list[TableSpec], tables: str | None) -> list[TableSpec]:
    names = [s.name for s in specs]
    _unique(names)
    if not tables:
        return specs
    wanted = [t.strip() for t in tables.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in names]
    if unknown:
        raise CompareError(f"--tables: unknown {unknown}; known: {', '.join(names)}")
    by_name = {s.name: s for s in specs}
    return [by_name[name] for name in dict.fromkeys(wanted)]  # in the order given: the run's order
