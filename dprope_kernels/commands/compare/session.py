"""One ``dprope compare`` run over its output directory: what is done, what is left, the work, the summary."""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path

from ... import files
from .documents import passkey_case, tokenize
from .model import SMOLLM2
from .report import (
    Progress,
    fmt,
    log,
    markdown_table,
    per_document_table,
    recommend,
    recommendation_text,
    score,
    summary_row,
)
from .store import PASSKEYS, RESULTS


class Session:
    def __init__(self, args, setup, store):
        import transformers

        self.args, self.setup, self.store = args, setup, store
        self.table_keys = {s.name: s.key(transformers.__version__) for s in setup.specs}
        self.window_keys = {(s.name, d.name): store.window_key(d.sha256, self.table_keys[s.name])
                            for s in setup.specs for d in setup.documents}
        self.passkey_keys = {(s.name, t): store.passkey_key(self.table_keys[s.name], t)
                             for s in setup.specs for t in range(args.passkey_trials)}

    # -----------------------------------------------------------------------------------------
    def run(self, model=None, tokenizer=None) -> int:
        setup, args = self.setup, self.args
        done = self.store.records(RESULTS, self.window_keys.values())
        done_pk = self.store.records(PASSKEYS, self.passkey_keys.values())
        todo = [(s, d) for s in setup.specs for d in setup.documents
                if self.window_keys[s.name, d.name] not in done]
        pk_todo = [(s, t) for s in setup.specs for t in range(args.passkey_trials)
                   if self.passkey_keys[s.name, t] not in done_pk]
        served = self.store.served()
        unserved = [s for s in setup.specs if self.table_keys[s.name] not in served]
        windows = len(setup.specs) * len(setup.documents)
        log(f"{len(setup.specs)} tables x {len(setup.documents)} documents, "
            f"{setup.original} -> {setup.target}, "
            f"{setup.dtype} on {setup.device}: {len(todo)} windows and {len(pk_todo)} passkey prompts to run"
            + (f" ({windows - len(todo)} windows done already)" if len(todo) < windows else ""), args.quiet)
        if todo or pk_todo or unserved:
            self._work(todo, pk_todo, model, tokenizer)
        summary = self.summarize(final=True)
        print(self.report(summary))
        print(f"\nresults in {args.output} (summary.json, table.md, results.jsonl"
              + ("" if args.no_plot else ", curve.png") + ")")
        return 0

    # -----------------------------------------------------------------------------------------
    def _load(self, model, tokenizer):
        import torch

        from .model import check_head, load_model, load_tokenizer

        setup, args = self.setup, self.args
        if tokenizer is None:
            tokenizer = load_tokenizer(setup.directory, setup.gguf)
        tokenize(setup.documents, tokenizer, setup.target)
        if args.passkey_trials:
            passkey_case(tokenizer, setup.target, 0, args.passkey_trials, args.seed)
        dtype = torch.bfloat16 if setup.dtype == "bf16" else torch.float32
        if model is None:
            log(f"loading {args.model} ({setup.dtype}, {setup.device}) ...", args.quiet)
            start = time.monotonic()
            model = load_model(setup.directory, setup.gguf, dtype, setup.device)
            log(f"loaded in {time.monotonic() - start:.0f} s", args.quiet)
            check_head(model, setup.documents[0].tokens[:16])
        else:
            param = next(model.parameters())
            if param.dtype != dtype or param.device.type != setup.device.type:
                from .documents import CompareError

                raise CompareError(f"the given model is {param.dtype} on {param.device}, not {dtype} on "
                                   f"{setup.device}")
            check_head(model, setup.documents[0].tokens[:16])
        return model, tokenizer

    def _serve_all(self, mut) -> None:
        """Install every table once and record what it serves (its values, attention factor, disturbance),
        by the table's key: two names for one table share it. What each name is (its source, its plan)
        is its summary row's."""
        import torch

        from ...planner import table_disturbance
        from ...strategies import default_inv_freq

        setup, served = self.setup, {}
        base = default_inv_freq(setup.rotary_dim, setup.rope_theta)  # the config's float32 table
        for spec in setup.specs:
            got = mut.install(spec)
            if len(got.inv_freq) != setup.rotary_dim // 2:
                from .documents import CompareError

                raise CompareError(f"table {spec.name}: the model's rotary module serves "
                                   f"{len(got.inv_freq)} frequencies, but its config says {setup.rotary_dim} "
                                   "rotary dims; compare cannot measure this model")
            pairs = table_disturbance(torch.tensor(got.inv_freq, dtype=torch.float64),
                                      original_max_position=setup.original, target_max_position=setup.target,
                                      base_inv_freq=base)
            served[self.table_keys[spec.name]] = {
                "inv_freq": got.inv_freq, "attention_scaling": got.attention_scaling, "how": got.how,
                "disturbance": float(pairs.mean()), "pair_disturbance": pairs.tolist()}
        mut.uninstall()
        self.store.begin()  # every check has passed: the first write
        self.store.record_served(served)

    def _work(self, todo, pk_todo, model, tokenizer) -> None:
        from .model import ModelUnderTest

        setup, args = self.setup, self.args
        model, tokenizer = self._load(model, tokenizer)
        mut = ModelUnderTest(model, setup.rope_theta, setup.original, setup.target, args.rotary, args.backend)
        progress = Progress(len(todo) + len(pk_todo), args.quiet)
        try:
            self._serve_all(mut)
            current = None
            for spec, doc in todo:
                if current is not spec:
                    mut.install(spec)
                    current = spec
                self._window(model, spec, doc, progress)
            for spec, trial in pk_todo:
                if current is not spec:
                    mut.install(spec)
                    current = spec
                self._passkey(model, tokenizer, spec, trial, progress)
        finally:
            progress.close()
            mut.close()

    def _window(self, model, spec, doc, progress) -> None:
        from .model import token_nll

        setup = self.setup
        progress.describe(f"{spec.name} / {doc.name}")
        start = time.monotonic()
        nll = token_nll(model, doc.tokens[: setup.target])
        record = {"key": self.window_keys[spec.name, doc.name], "document": doc.name,
                  "document_sha256": doc.sha256, "table": spec.name, "table_key": self.table_keys[spec.name],
                  **score(nll, setup.original, setup.bucket), "seconds": time.monotonic() - start,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if not all(math.isfinite(x) for x in nll):
            record["nonfinite_tokens"] = sum(not math.isfinite(x) for x in nll)
        self.store.append(RESULTS, record)
        progress.step(f"{spec.name}/{doc.name}: {fmt(record['ppl_original'])} | {fmt(record['ppl_past'])}")
        self.summarize()

    def _passkey(self, model, tokenizer, spec, trial, progress) -> None:
        from .model import passkey_trial

        setup, args = self.setup, self.args
        progress.describe(f"passkey {spec.name} #{trial}")
        prompt, answer, info = passkey_case(tokenizer, setup.target, trial, args.passkey_trials, args.seed)
        start = time.monotonic()
        result = passkey_trial(model, prompt, answer)
        self.store.append(PASSKEYS, {"key": self.passkey_keys[spec.name, trial], "table": spec.name,
                                     "table_key": self.table_keys[spec.name], "trial": trial,
                                     "length": len(prompt) + len(answer), **info, **result,
                                     "seconds": time.monotonic() - start})
        progress.step(f"passkey {spec.name}: {'ok' if result['correct'] else 'miss'}")
        self.summarize()

    # -----------------------------------------------------------------------------------------
    _last_plot = -math.inf

    def summarize(self, final: bool = False) -> dict:
        """The summary of exactly the documents and tables asked for, from their own records only."""
        setup, args = self.setup, self.args
        windows = self.store.records(RESULTS, self.window_keys.values())
        passkeys = self.store.records(PASSKEYS, self.passkey_keys.values())
        served = self.store.served()
        rows = {}
        for spec in setup.specs:
            mine = {d.name: windows[k] for d in setup.documents
                    if (k := self.window_keys[spec.name, d.name]) in windows}
            trials = [passkeys[k] for t in range(args.passkey_trials)
                      if (k := self.passkey_keys[spec.name, t]) in passkeys]
            rows[spec.name] = dict(summary_row(mine, trials, served[self.table_keys[spec.name]]),
                                   table_key=self.table_keys[spec.name], fixed=spec.is_fixed,
                                   source=spec.source, plan=spec.plan)
        summary = {"original": setup.original, "target": setup.target, "bucket": setup.bucket,
                   "documents": {d.name: {"paths": d.paths, "sha256": d.sha256} for d in setup.documents},
                   "tables": rows}
        summary["recommendation"] = recommend(summary, {s.name for s in setup.specs if s.is_fixed})
        out = Path(args.output)
        files.write_json(out / "summary.json", summary)
        files.write_text(out / "table.md", self.report(summary) + "\n")
        if not args.no_plot and (final or time.monotonic() - self._last_plot > 60):
            self._plot(summary)
        return summary

    def report(self, summary: dict) -> str:
        rec = summary["recommendation"]
        text = recommendation_text(rec, self.setup.original, self.setup.target, summary)
        per_document = "Per document, perplexity at / past the window:\n\n" + per_document_table(summary)
        return "\n\n".join([markdown_table(summary), per_document, text]
                            + ([self._export_line(rec["table"])] if rec else []))

    def _export_line(self, table: str) -> str:
        """The command that exports ``table``, for this model and output directory; or why there is none."""
        setup, args = self.setup, self.args
        if setup.target <= setup.model_original:
            return (f"Not exported: the target {setup.target} is within the model's own "
                    f"{setup.model_original} positions, so an export would shorten the model; compare with a "
                    f"target past {setup.model_original} to export an extension.")
        if setup.gguf:
            model = args.model if args.model == SMOLLM2 else str(Path(setup.directory) / setup.gguf)
            command = f"dprope export --gguf {shlex.quote(model)} OUT.gguf"
        else:
            command = f"dprope export {shlex.quote(str(args.model))} OUT"
        return (f"Export it: {command} --from-compare {shlex.quote(str(args.output))} "
                f"--table {shlex.quote(table)}")

    def _plot(self, summary: dict) -> None:
        from ..figures import plot_curves

        self._last_plot = time.monotonic()
        setup, args = self.setup, self.args
        try:
            plot_curves(summary, Path(args.output) / "curve.png", setup.bucket,
                        f"{Path(str(args.model)).name}: {setup.original} -> {setup.target}, {setup.dtype}, "
                        f"{len(setup.documents)} documents")
        except ImportError as err:
            log(f"no plot: {err}", args.quiet)
            args.no_plot = True
