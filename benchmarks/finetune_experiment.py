"""DPRoPE after fine-tuning: which table to start from when a model is fine-tuned for 4x its context.

    python benchmarks/finetune_experiment.py --output benchmarks/results/finetune/cpu        # 2 CPU cores
    python benchmarks/finetune_experiment.py --preset gpu --output runs/finetune-gpu         # one GPU
    python benchmarks/finetune_experiment.py --preset gpu --dry-run --output runs/gpu-dry    # 2 steps each

One command, nothing downloaded. Real text on the machine (the running Python's standard library
sources) is split by file into pre-training, fine-tuning and held-out sets; UTF-8 bytes are the
tokens. A transformers Llama is pre-trained from scratch at context L with its own table on the
package's kernels; then every table (PI, NTK, YaRN, llama3, the default DPRoPE plan, the paper's
selection: built as ``dprope compare`` builds them, served by the kernels at 4L) gets the same
fine-tuning (steps, data order, seed) from the same weights, for each fine-tuning seed. Held-out
perplexity at [1, L) and [L, 4L), per position, and passkey retrieval across depths are measured
before fine-tuning (training-free) and after. Training is ``examples/train.py``'s step and data
order. The decision rule was fixed before the first run (benchmarks/results/finetune/prereg.md);
the summary applies it.

Into --output: data.json (the split: every file with its size and sha256, where each held-out
window comes from), run.json (the settings), results.jsonl (a flushed line per measurement: a
rerun does only what is missing), tables.json, summary.json, table.md, curve.png (each written
whole, then renamed); the pre-trained models go to --output/models/ (not committed). Another
setting into the same --output is refused (--fresh discards the old results).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import train  # noqa: E402 - examples/train.py: its training step and data order
from text_data import ByteTokenizer, token_blocks  # noqa: E402

import dprope_kernels as dk  # noqa: E402
from dprope_kernels import files  # noqa: E402
from dprope_kernels.commands.compare.documents import CompareError, passkey_case  # noqa: E402
from dprope_kernels.commands.compare.model import ModelUnderTest, passkey_trial, token_nll  # noqa: E402
from dprope_kernels.commands.compare.report import ppl, score  # noqa: E402
from dprope_kernels.commands.compare.tables import build_table_specs  # noqa: E402
from dprope_kernels.hf_config import rope_settings  # noqa: E402

TABLES = ("pi", "ntk", "yarn", "llama3", "dprope", "dprope-paper")  # extended, fine-tuned and compared
REFERENCE = "original"  # the pre-trained table extrapolated: measured before fine-tuning only
CANDIDATE = "dprope"  # the table the pre-registered rule is about
NEAR_TOLERANCE = 1.01  # the rule's condition 2: at most 1% above the best table at the window
GATE_PPL = 8.0  # the rule's validity gate: the pre-trained model at the window, its own table
RESULTS = "results.jsonl"


@dataclasses.dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    original: int  # L, the pre-training length; the target is factor * L
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    pretrain_seeds: tuple
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float
    finetune_seeds: tuple
    eval_windows: int
    bucket: int
    passkey_depths: int
    passkey_keys: int
    dtype: str  # autocast on a GPU (weights stay float32); a CPU runs fp32 unless --dtype bf16
    factor: int = 4
    rope_theta: float = 10000.0


PRESETS = {
    # the committed CPU run (benchmarks/results/finetune/prereg.md): 3.3M parameters, L = 256
    "cpu": Preset(256, 4, 4, 704, 256, 1000, 16, 1e-3, (0,), 50, 4, 3e-4, (0, 1, 2), 64, 32, 10, 2, "bf16"),
    # one H200 in under 8 minutes (predicted from about 2.3e16 FLOP, not measured): 26M parameters, L = 1024
    "gpu": Preset(512, 8, 8, 1408, 1024, 400, 64, 1e-3, (0, 1), 40, 8, 3e-4, (0, 1, 2), 64, 128, 10, 2,
                  "bf16"),
    # the test suite's end-to-end run: seconds, not evidence
    "toy": Preset(64, 2, 4, 128, 64, 40, 8, 3e-3, (0,), 4, 2, 1e-3, (0, 1, 2), 8, 16, 4, 1, "bf16"),
}


def dry(preset: Preset) -> Preset:
    """Two steps of one sequence per stage, one seed each, two windows: shows the preset runs."""
    return dataclasses.replace(preset, pretrain_steps=2, pretrain_batch=1, finetune_steps=2, finetune_batch=1,
                               pretrain_seeds=preset.pretrain_seeds[:1],
                               finetune_seeds=preset.finetune_seeds[:1],
                               eval_windows=2, passkey_depths=2, passkey_keys=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="results directory")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--dry-run", action="store_true", help="two steps per stage, one seed each")
    p.add_argument("--corpus", default=sysconfig.get_paths()["stdlib"],
                   help="directory of .py sources (default: this Python's standard library)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton", "cuda"],
                   help="the kernels' backend")
    p.add_argument("--dtype", choices=["fp32", "bf16"],
                   help="bf16: autocast, weights float32 (default: the preset's on a GPU, fp32 on a CPU)")
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --output")
    args = p.parse_args(argv)
    if not Path(args.corpus).is_dir():
        p.error(f"--corpus {args.corpus}: no such directory")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        p.error(f"--output {args.output}: not a directory")
    args.error = p.error
    return args


# ---------------------------------------------------------------------------------------------
# data: split by file before anything runs
# ---------------------------------------------------------------------------------------------

SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "encodings", "lib-dynload",
                "pydoc_data", "__pycache__"}
SPLIT_RULE = ("*.py under the corpus outside test, tests, idle_test, site-packages, dist-packages, "
              "encodings, lib-dynload, pydoc_data, config-* and without _sysconfigdata*; UTF-8 only; the "
              "first path (sorted) of each content; split by sha256(relative path) mod 100: < 80 pretrain, "
              "< 90 finetune, else heldout")


def split_of(relative: str) -> str:
    bucket = int(hashlib.sha256(relative.encode()).hexdigest()[:8], 16) % 100
    return "pretrain" if bucket < 80 else "finetune" if bucket < 90 else "heldout"


def corpus(root: Path) -> dict[str, bytes]:
    """``{relative path: content}`` of the corpus's sources, by :data:`SPLIT_RULE`."""
    found, seen = {}, set()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        dirs = relative.parts[:-1]
        if SKIPPED_DIRS & set(dirs) or (dirs and dirs[0].startswith("config-")) \
                or relative.name.startswith("_sysconfigdata") or not path.is_file():
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if digest not in seen:
            seen.add(digest)
            found[relative.as_posix()] = data
    return found


def eval_windows(texts: dict[str, bytes], length: int, count: int) -> list[tuple[str, int]]:
    """``count`` non-overlapping ``length``-byte windows ``(path, offset)``, evenly spread over every
    complete window of the held-out files (in path order)."""
    every = [(path, offset) for path, data in sorted(texts.items())
             for offset in range(0, len(data) - length + 1, length)]
    if len(every) < count:
        raise ValueError(f"the held-out files hold {len(every)} windows of {length} bytes; {count} are "
                         "needed")
    if count == 1:
        return every[:1]
    return [every[round(i * (len(every) - 1) / (count - 1))] for i in range(count)]


def prepare_data(root: Path, preset: Preset) -> tuple[dict, dict]:
    """``(manifest, tensors)``: the split with sizes and hashes, and the token blocks and windows."""
    found = corpus(root)
    if not found:
        raise ValueError(f"--corpus {root}: no .py sources in it")
    by_split = {name: {p: d for p, d in found.items() if split_of(p) == name}
                for name in ("pretrain", "finetune", "heldout")}
    target = preset.factor * preset.original
    windows = eval_windows(by_split["heldout"], target, preset.eval_windows)
    def blocks(split: str, length: int) -> torch.Tensor:
        return token_blocks([d.decode() for d in by_split[split].values()], ByteTokenizer(), length)

    tensors = {
        "pretrain": blocks("pretrain", preset.original),
        "finetune": blocks("finetune", target),
        "windows": torch.tensor([list(found[p][o:o + target]) for p, o in windows], dtype=torch.int64),
    }
    files_list = [{"path": p, "split": split_of(p), "bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                  for p, d in found.items()]
    manifest = {"corpus": str(root), "python": platform.python_version(), "rule": SPLIT_RULE,
                "splits": {n: {"files": len(s), "bytes": sum(map(len, s.values()))}
                           for n, s in by_split.items()},
                "eval_windows": [{"path": p, "offset": o, "bytes": target} for p, o in windows],
                "files": files_list}
    manifest["digest"] = hashlib.sha256(json.dumps([files_list, windows]).encode()).hexdigest()[:16]
    return manifest, tensors


# ---------------------------------------------------------------------------------------------
# models and tables
# ---------------------------------------------------------------------------------------------


def model_config(preset: Preset):
    """A Llama over bytes: tied embeddings, the default rope at ``rope_theta``, L positions."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=256, hidden_size=preset.hidden, intermediate_size=preset.intermediate,
                       num_hidden_layers=preset.layers, num_attention_heads=preset.heads,
                       num_key_value_heads=preset.heads, max_position_embeddings=preset.original,
                       rope_theta=preset.rope_theta, tie_word_embeddings=True)


def new_model(preset: Preset, seed: int, setup):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(model_config(preset)).to(setup.device)


def load_model(path: Path, setup):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path).to(setup.device)


def precision(setup):
    """bf16 autocast where asked (float32 weights and optimizer state), else float32 throughout."""
    return torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=setup.bf16)


def table_specs(config, preset: Preset) -> list:
    """The reference and the six tables, exactly as ``dprope compare`` builds them for this model."""
    settings = rope_settings(config)
    shape = SimpleNamespace(rotary_dim=settings.rotary_dim, rope_theta=settings.rope_theta,
                            original=preset.original, target=preset.factor * preset.original)
    wanted = SimpleNamespace(no_default_variants=False, dprope_variant=[], table_file=[],
                             tables=",".join([REFERENCE, *TABLES]))
    return build_table_specs(wanted, shape, {})


def under_test(model, preset: Preset, setup) -> ModelUnderTest:
    settings = rope_settings(model.config)
    return ModelUnderTest(model, settings.rope_theta, preset.original, preset.factor * preset.original,
                          "kernels", setup.backend)


def train_steps(model, blocks: torch.Tensor, steps: int, batch: int, lr: float, seed: int, setup,
                what: str) -> dict:
    """``steps`` of examples/train.py's step (AdamW, constant lr, no weight decay) in its data order.
    Returns the losses and ``data_order``: a digest of the batches, made from the same arguments."""
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses, seen, start = [], hashlib.sha256(), time.perf_counter()
    for step in range(steps):
        seen.update(train.batches(blocks, step, batch, 0, 1, seed).numpy().tobytes())
        with precision(setup):
            losses.append(train.train_step(model, optimizer, blocks, step, batch_size=batch, grad_accum=1,
                                           rank=0, world=1, seed=seed, device=setup.device))
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            rate = (step + 1) * batch * blocks.shape[1] / (time.perf_counter() - start)
            print(f"  {what}: step {step + 1}/{steps}, loss {losses[-1]:.4f}, {rate:,.0f} tokens/s",
                  flush=True)
    model.eval()
    return {"losses": losses, "data_order": seen.hexdigest()[:16]}


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


def passkey_lengths(preset: Preset) -> list[int]:
    """L and 4L, where a passkey prompt fits in bytes."""
    lengths = []
    for length in (preset.original, preset.factor * preset.original):
        try:
            passkey_case(ByteTokenizer(), length, 0, 1, 0)
            lengths.append(length)
        except CompareError:
            pass
    return lengths


def passkeys(model, preset: Preset) -> dict:
    """Per length: accuracy over depths x keys, mean key NLL per byte, and hits per depth."""
    out = {}
    for length in passkey_lengths(preset):
        by_depth, nll = [], []
        for depth in range(preset.passkey_depths):
            hits = 0
            for key in range(preset.passkey_keys):
                prompt, answer, _ = passkey_case(ByteTokenizer(), length, depth, preset.passkey_depths, key)
                result = passkey_trial(model, prompt, answer)
                hits += result["correct"]
                nll.append(result["key_nll"] / len(answer))
            by_depth.append(hits)
        trials = preset.passkey_depths * preset.passkey_keys
        out[str(length)] = {"accuracy": sum(by_depth) / trials, "trials": trials, "hits_by_depth": by_depth,
                            "key_nll_per_byte": statistics.fmean(nll)}
    return out


def evaluate(model, windows: torch.Tensor, preset: Preset) -> dict:
    """Held-out perplexity at [1, L) and [L, 4L) pooled over the windows, per position bucket and per
    window, and passkey retrieval."""
    model.eval()
    near, far, buckets, per_window = [0.0, 0], [0.0, 0], None, []
    for window in windows:
        s = score(token_nll(model, window), preset.original, preset.bucket)
        near = [near[0] + s["nll_original"], near[1] + s["tokens_original"]]
        far = [far[0] + s["nll_past"], far[1] + s["tokens_past"]]
        pairs = list(zip(s["bucket_nll"], s["bucket_tokens"]))
        buckets = pairs if buckets is None else [(a + x, b + y) for (a, b), (x, y) in zip(buckets, pairs)]
        per_window.append([s["ppl_original"], s["ppl_past"]])
    return {"ppl_near": ppl(*near), "ppl_far": ppl(*far), "nll_near": near[0], "tokens_near": near[1],
            "nll_far": far[0], "tokens_far": far[1], "curve": [ppl(a, b) for a, b in buckets],
            "per_window": per_window, "passkey": passkeys(model, preset)}


# ---------------------------------------------------------------------------------------------
# the run: its identity, its records, its stages
# ---------------------------------------------------------------------------------------------


def run_settings(preset: Preset, args, manifest: dict, setup) -> dict:
    import transformers

    settings = {"preset": args.preset, "dry_run": args.dry_run, **dataclasses.asdict(preset),
                "tables": [REFERENCE, *TABLES], "data": manifest["digest"], "device": setup.device.type,
                "dtype": "bf16 autocast" if setup.bf16 else "fp32", "backend": setup.backend,
                "torch": torch.__version__, "transformers": transformers.__version__}
    return json.loads(json.dumps(settings))  # as it reads back from run.json


def claim_output(output: Path, settings: dict, args):
    """Lock ``output``; refuse results made with other settings unless --fresh. Returns the lock."""
    output.mkdir(parents=True, exist_ok=True)
    try:
        lock = files.lock_directory(output)
    except files.DirectoryInUse as err:
        args.error(str(err))
    recorded = output / "run.json"
    if args.fresh:
        for name in (RESULTS, "run.json", "summary.json", "table.md", "curve.png", "tables.json",
                     "data.json"):
            (output / name).unlink(missing_ok=True)
        shutil.rmtree(output / "models", ignore_errors=True)
    elif recorded.is_file():
        old = json.loads(recorded.read_text())
        changed = [f"{k} {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v]
        if changed:
            args.error(f"--output {output} holds results made with other settings "
                       f"({'; '.join(changed[:4])}); use another --output, or --fresh to discard them")
    files.write_json(recorded, settings)
    return lock


def read_records(output: Path) -> dict[str, dict]:
    """``{key: record}`` of the complete lines of results.jsonl (a line cut by a kill is dropped)."""
    records = {}
    path = output / RESULTS
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["key"]] = record
    return records


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def commit() -> str:
    """The repository's commit, marked ``+changes`` when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


class Run:
    def __init__(self, preset: Preset, setup, output: Path, tensors: dict):
        self.preset, self.setup, self.output, self.tensors = preset, setup, output, tensors
        self.records = read_records(output)
        self.provenance = {"commit": commit(), "machine": machine(setup.device)}

    def record(self, key: str, **fields) -> None:
        record = {"key": key, **fields, **self.provenance,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        files.append_line(self.output / RESULTS, json.dumps(record))
        self.records[key] = record

    def timed(self, key: str, work, **fields) -> None:
        """Run ``work()`` (a dict of results) and record it with its wall and CPU seconds."""
        wall, cpu = time.perf_counter(), time.process_time()
        results = work()
        self.record(key, **fields, **results, seconds=time.perf_counter() - wall,
                    cpu_seconds=time.process_time() - cpu, load_average=os.getloadavg()[0])

    def pretrain(self, seed: int) -> None:
        """Pre-train with ``seed`` and save the model. A model trained again (its files were removed) must
        be the one recorded, bit for bit, or the run stops: its measurements were made with that one."""
        p, path, key = self.preset, self.output / "models" / f"pretrain-s{seed}", f"pretrain/p{seed}"
        recorded = self.records.get(key)

        def work():
            model = new_model(p, seed, self.setup)
            dk.apply_dprope_kernels(model, backend=self.setup.backend)  # its own table, on the kernels
            trained = train_steps(model, self.tensors["pretrain"], p.pretrain_steps, p.pretrain_batch,
                                  p.pretrain_lr, seed, self.setup, f"pre-train p{seed}")
            dk.revert_dprope_kernels(model)
            digest = weights_digest(model)
            if recorded and recorded["weights_sha256"] != digest:
                raise SystemExit(f"error: pre-training p{seed} again gave other weights ({digest}, recorded "
                                 f"{recorded['weights_sha256']}); its measurements in {self.output} were "
                                 "made with the recorded ones: rerun with --fresh")
            path.parent.mkdir(exist_ok=True)
            with files.writing(path, directory=True, replace=True) as tmp:
                model.save_pretrained(tmp)
            return {**trained, "parameters": sum(x.numel() for x in model.parameters()),
                    "weights_sha256": digest}

        print(f"pre-training p{seed} at L = {p.original}", flush=True)
        if recorded:
            work()
        else:
            self.timed(key, work, phase="pretrain", pretrain_seed=seed)

    @staticmethod
    def key(phase: str, table: str, pretrain_seed: int, finetune_seed: int | None) -> str:
        return f"{phase}/p{pretrain_seed}" + (f"/s{finetune_seed}" if phase == "after" else "") + f"/{table}"

    def measure(self, phase: str, spec, pretrain_seed: int, finetune_seed: int | None) -> None:
        """Install ``spec`` on the pre-trained model, fine-tune it (``after``), measure, record."""
        p = self.preset

        def work():
            model = load_model(self.output / "models" / f"pretrain-s{pretrain_seed}", self.setup)
            mut = under_test(model, p, self.setup)
            served = mut.install(spec)  # the table on the kernels, at 4L
            out = {"inv_freq": served.inv_freq, "attention_factor": served.attention_scaling,
                   "how": served.how}
            if phase == "after":
                blocks = self.tensors["finetune"]
                out.update(train_steps(model, blocks, p.finetune_steps, p.finetune_batch, p.finetune_lr,
                                       finetune_seed, self.setup, f"fine-tune {spec.name} s{finetune_seed}"))
            with precision(self.setup):
                out.update(evaluate(model, self.tensors["windows"], p))
            mut.close()
            return out

        key = self.key(phase, spec.name, pretrain_seed, finetune_seed)
        self.timed(key, work, phase=phase, table=spec.name, pretrain_seed=pretrain_seed,
                   finetune_seed=finetune_seed)
        r = self.records[key]
        print(f"{key}: ppl [1, {p.original}) {r['ppl_near']:.4f}, [{p.original}, {p.factor * p.original}) "
              f"{r['ppl_far']:.4f} ({r['seconds']:.0f} s)", flush=True)

    def all(self, specs) -> None:
        """Every pre-training seed: pre-train, every table before fine-tuning, then per fine-tuning seed
        every table fine-tuned; only what results.jsonl lacks (a finished run loads no model)."""
        p = self.preset
        for pretrain_seed in p.pretrain_seeds:
            todo = [("before", spec, None) for spec in specs]
            todo += [("after", spec, s) for s in p.finetune_seeds for spec in specs if spec.name != REFERENCE]
            todo = [(phase, spec, s) for phase, spec, s in todo
                    if self.key(phase, spec.name, pretrain_seed, s) not in self.records]
            model = self.output / "models" / f"pretrain-s{pretrain_seed}" / "config.json"
            if f"pretrain/p{pretrain_seed}" not in self.records or (todo and not model.is_file()):
                self.pretrain(pretrain_seed)
            for phase, spec, finetune_seed in todo:
                self.measure(phase, spec, pretrain_seed, finetune_seed)


# ---------------------------------------------------------------------------------------------
# the summary and the pre-registered decision
# ---------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def phase_row(runs: list[dict]) -> dict:
    """One table in one phase, over its runs (seeds): each band's spread, the curve (geometric mean
    over runs, per bucket: every run scores the same windows), passkey means."""
    curves = [r["curve"] for r in runs]
    lengths = runs[0]["passkey"]
    return {"near": spread([r["ppl_near"] for r in runs]), "far": spread([r["ppl_far"] for r in runs]),
            "runs": [[r["pretrain_seed"], r["finetune_seed"]] for r in runs],
            "attention_factor": runs[0]["attention_factor"],
            "curve": [math.exp(statistics.fmean(math.log(c[i]) for c in curves)) if curves[0][i] else None
                      for i in range(len(curves[0]))],
            "passkey": {n: {what: statistics.fmean(r["passkey"][n][what] for r in runs)
                            for what in ("accuracy", "key_nll_per_byte")} for n in lengths}}


def decide(records: dict, preset: Preset) -> dict:
    """The rule of benchmarks/results/finetune/prereg.md, applied to every table in turn."""
    pairs = [(p, s) for p in preset.pretrain_seeds for s in preset.finetune_seeds]
    after = {(r["table"], r["pretrain_seed"], r["finetune_seed"]): r for r in records.values()
             if r["phase"] == "after"}
    gate = {p: records[f"before/p{p}/{REFERENCE}"]["ppl_near"] for p in preset.pretrain_seeds
            if f"before/p{p}/{REFERENCE}" in records}
    missing = [(t, p, s) for t in TABLES for p, s in pairs if (t, p, s) not in after]
    if missing or len(gate) < len(preset.pretrain_seeds):
        return {"complete": False}
    near = {t: statistics.fmean(after[t, p, s]["ppl_near"] for p, s in pairs) for t in TABLES}
    best_near = min(near.values())
    per_table = {}
    for c in TABLES:
        losses = [[t, p, s] for t in TABLES if t != c for p, s in pairs
                  if not after[c, p, s]["ppl_far"] < after[t, p, s]["ppl_far"]]
        per_table[c] = {"past_window_lower_on_every_seed": not losses, "past_window_losses": losses,
                        "at_window_mean": near[c],
                        "at_window_within_1pct_of_best": near[c] <= NEAR_TOLERANCE * best_near}
    meets = [c for c in TABLES if per_table[c]["past_window_lower_on_every_seed"]
             and per_table[c]["at_window_within_1pct_of_best"]]
    valid = all(v < GATE_PPL for v in gate.values())
    paper = all(after["dprope-paper", p, s]["ppl_far"] < after["yarn", p, s]["ppl_far"] for p, s in pairs)
    return {"complete": True, "valid": valid, "gate_ppl_at_window": gate, "meets_rule": meets,
            "dprope_recommended": valid and CANDIDATE in meets, "per_table": per_table,
            "paper_selection_beats_yarn_past_window_every_seed": paper}


def outcome_text(decision: dict) -> str:
    if not decision.get("complete"):
        return "incomplete: the rule is applied once every table has every seed"
    if not decision["valid"]:
        return (f"invalid: the pre-trained model's perplexity at the window was "
                f"{decision['gate_ppl_at_window']}, not below {GATE_PPL}; the pre-training failed and the "
                "run decides nothing")
    if decision["dprope_recommended"]:
        return "the default DPRoPE plan meets the pre-registered rule: the recommended starting table"
    others, mine = decision["meets_rule"], decision["per_table"][CANDIDATE]
    return (f"the default DPRoPE plan does not meet the pre-registered rule "
            f"({len(mine['past_window_losses'])} paired losses past the window; within 1% at the window: "
            f"{mine['at_window_within_1pct_of_best']}); "
            + (f"{others[0]} meets it" if others else "no table meets it"))


def summarize(records: dict, preset: Preset, settings: dict) -> dict:
    rows = {}
    for name in (REFERENCE, *TABLES):
        row = {}
        for phase in ("before", "after"):
            runs = sorted((r for r in records.values() if r.get("table") == name and r["phase"] == phase),
                          key=lambda r: (r["pretrain_seed"], r["finetune_seed"] or 0))
            if runs:
                row[phase] = phase_row(runs)
        rows[name] = row
    timing = {}
    for phase in ("pretrain", "before", "after"):
        mine = [r for r in records.values() if r["phase"] == phase]
        timing[phase] = {"runs": len(mine), "seconds": sum(r["seconds"] for r in mine),
                         "cpu_seconds": sum(r["cpu_seconds"] for r in mine),
                         "load_average": [min(r["load_average"] for r in mine),
                                          max(r["load_average"] for r in mine)] if mine else None}
    pretrain = {r["pretrain_seed"]: {"parameters": r["parameters"], "first_loss": r["losses"][0],
                                     "last_loss": r["losses"][-1]}
                for r in records.values() if r["phase"] == "pretrain"}
    decision = decide(records, preset)
    made = {"commits": sorted({r.get("commit", "unrecorded") for r in records.values()}),
            "machines": sorted({r.get("machine", "unrecorded") for r in records.values()}),
            "first_finished": min(r["finished"] for r in records.values()),
            "last_finished": max(r["finished"] for r in records.values())}
    return {"settings": settings, "made": made, "original": preset.original,
            "target": preset.factor * preset.original,
            "bucket": preset.bucket, "pretrain": pretrain, "tables": rows, "decision": decision,
            "outcome": outcome_text(decision), "timing": timing}


def fmt_band(band: dict | None) -> str:
    if band is None:
        return "—"
    if band["n"] == 1:
        return f"{band['mean']:.4f}"
    return f"{band['mean']:.4f} ± {band['std']:.4f} ({band['min']:.4f} .. {band['max']:.4f})"


def markdown(summary: dict) -> str:
    L, T = summary["original"], summary["target"]
    lines = [f"| table | attention factor | before: ppl [1, {L}) | before: ppl [{L}, {T}) | "
             f"after: ppl [1, {L}) | after: ppl [{L}, {T}) | passkey before | passkey after |",
             "|---" * 8 + "|"]
    for name, row in summary["tables"].items():
        before, after = row.get("before"), row.get("after")
        factor = (before or after or {}).get("attention_factor")

        def keys(r):
            if not (r and r["passkey"]):
                return "—"
            return " / ".join(f"{v['accuracy']:.2f}" for v in r["passkey"].values())

        lines.append(f"| {name} | {factor:.4g} | {fmt_band(before and before['near'])} | "
                     f"{fmt_band(before and before['far'])} | {fmt_band(after and after['near'])} | "
                     f"{fmt_band(after and after['far'])} | {keys(before)} | {keys(after)} |")
    lengths = next(iter(summary["tables"].values())).get("before", {}).get("passkey", {})
    seeds = summary["settings"]
    lines += ["", f"after: mean ± standard deviation (min .. max) over fine-tuning seeds "
              f"{seeds['finetune_seeds']} x pre-training seeds {seeds['pretrain_seeds']}; passkey: accuracy "
              f"at lengths {' / '.join(lengths)}",
              "", f"Outcome (pre-registered rule): {summary['outcome']}", "", timing_line(summary)]
    return "\n".join(lines)


def timing_line(summary: dict) -> str:
    made, timing = summary["made"], summary["timing"]
    parts = ", ".join(f"{phase} {t['seconds']:.0f} s ({t['cpu_seconds']:.0f} CPU s, {t['runs']} runs)"
                      for phase, t in timing.items() if t["runs"])
    loads = [x for t in timing.values() if t["load_average"] for x in t["load_average"]]
    return (f"Measured at commit {', '.join(made['commits'])} on {', '.join(made['machines'])}, records "
            f"finished {made['first_finished']} .. {made['last_finished']}; wall time {parts}; 1-minute load "
            f"average at the records' ends {min(loads):.1f} .. {max(loads):.1f}")


def plot(summary: dict, path: Path) -> None:
    from dprope_kernels.commands.figures import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, phase in zip(axes, ("before", "after")):
        for color, (name, row) in enumerate(summary["tables"].items()):  # a table's colour in both panels
            if phase not in row:
                continue
            curve = row[phase]["curve"]
            xs = [(i + 0.5) * summary["bucket"] for i, v in enumerate(curve) if v is not None]
            ax.plot(xs, [v for v in curve if v is not None], lw=1.3, color=f"C{color}",
                    label=f"{name} ({row[phase]['far']['mean']:.3f})",
                    ls="--" if name.startswith("dprope") else "-")
        ax.axvline(summary["original"], color="k", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel(f"position (buckets of {summary['bucket']} bytes); dotted: L = {summary['original']}")
        ax.set_title("before fine-tuning (training-free)" if phase == "before"
                     else "after fine-tuning (geometric mean over seeds)", fontsize=10)
        ax.legend(fontsize=8, title=f"table (ppl on [{summary['original']}, {summary['target']}))",
                  title_fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("held-out perplexity per byte")
    fig.tight_layout()
    save(fig, path)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    from transformers.utils import logging as transformers_logging

    args = parse_args(argv)
    started = time.perf_counter()
    preset = dry(PRESETS[args.preset]) if args.dry_run else PRESETS[args.preset]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or (preset.dtype if device.type == "cuda" else "fp32")
    setup = SimpleNamespace(device=device, bf16=dtype == "bf16", backend=args.backend)
    transformers_logging.disable_progress_bar()  # a "Loading weights" bar per table otherwise
    try:
        manifest, tensors = prepare_data(Path(args.corpus), preset)
    except ValueError as err:
        args.error(str(err))
    output = Path(args.output)
    settings = run_settings(preset, args, manifest, setup)
    lock = claim_output(output, settings, args)  # noqa: F841 - held until the process exits
    files.write_json(output / "data.json", manifest)
    print(f"data: {manifest['splits']} from {manifest['corpus']} (Python {manifest['python']}); "
          f"{device.type}, {settings['dtype']}, {torch.get_num_threads()} threads", flush=True)
    specs = table_specs(model_config(preset), preset)
    files.write_json(output / "tables.json", {s.name: {"kind": s.kind, "rope": s.rope, "source": s.source,
                                                       "plan": s.plan} for s in specs})
    run = Run(preset, setup, output, tensors)
    run.all(specs)
    summary = summarize(run.records, preset, settings)
    files.write_json(output / "summary.json", summary)
    text = markdown(summary)
    files.write_text(output / "table.md", text + "\n")
    plot(summary, output / "curve.png")
    print(text)
    print(f"\nthis invocation: {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f} "
          f"at its end, {torch.get_num_threads()} threads")
    return summary


if __name__ == "__main__":
    main()
