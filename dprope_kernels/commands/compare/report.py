"""What ``dprope compare`` reports: per-window scores, the summary of exactly what was asked, progress."""

from __future__ import annotations

import math
import sys
import time


def finite_sum(values) -> float | None:
    """The exact sum of ``values``; None when one is None, NaN or infinite (a loss that is not a number:
    the records are strict JSON, which has neither NaN nor infinity)."""
    values = list(values)
    return math.fsum(values) if all(v is not None and math.isfinite(v) for v in values) else None


def ppl(total: float | None, count: int) -> float | None:
    """``exp(total / count)``; None without tokens, or when the sum or the perplexity is not finite."""
    if total is None or not count or total / count > 709:  # exp(709.8) is past float64
        return None
    return math.exp(total / count)


def score(nll: list[float], original: int, bucket: int) -> dict:
    """Sums over target tokens ``[1, L)`` and ``[L, L')`` and per bucket of target positions (None where
    a loss is not finite)."""
    at, past = nll[: original - 1], nll[original - 1:]
    n_buckets = (len(nll) + bucket) // bucket
    values, counts = [[] for _ in range(n_buckets)], [0] * n_buckets
    for j, value in enumerate(nll, start=1):
        values[j // bucket].append(value)
        counts[j // bucket] += 1
    return {"nll_original": finite_sum(at), "tokens_original": len(at), "nll_past": finite_sum(past),
            "tokens_past": len(past), "ppl_original": ppl(finite_sum(at), len(at)),
            "ppl_past": ppl(finite_sum(past), len(past)), "bucket_nll": [finite_sum(v) for v in values],
            "bucket_tokens": counts}


def _finite_record(record: dict) -> bool:
    """Whether a window's losses and perplexities are numbers (a half without tokens has none to be)."""
    return all(record[f"nll_{part}"] is not None
               and (record[f"ppl_{part}"] is not None or not record[f"tokens_{part}"])
               for part in ("original", "past"))


def summary_row(windows: dict, passkeys: list, served: dict) -> dict:
    """One table's row: ``windows`` ``{document: record}``, ``passkeys`` its trial records. A document
    whose perplexity is not finite is listed in ``nonfinite``; the pooled perplexities are then None."""
    row = {"documents": sorted(windows), "disturbance": served["disturbance"], "how": served["how"],
           "attention_scaling": served["attention_scaling"],
           "nonfinite": sorted(d for d, r in windows.items() if not _finite_record(r))}
    for part in ("original", "past"):
        total = finite_sum(r[f"nll_{part}"] for r in windows.values())
        count = sum(r[f"tokens_{part}"] for r in windows.values())
        row[f"ppl_{part}"] = ppl(total, count)
        row[f"per_document_{part}"] = {d: r[f"ppl_{part}"] for d, r in sorted(windows.items())}
    if windows:
        n = max(len(r["bucket_nll"]) for r in windows.values())
        sums, counts = [[] for _ in range(n)], [0] * n
        for r in windows.values():
            for i, (s, c) in enumerate(zip(r["bucket_nll"], r["bucket_tokens"])):
                sums[i].append(s)
                counts[i] += c
        row["curve"] = [ppl(finite_sum(s), c) for s, c in zip(sums, counts)]
    row["passkey"] = [sum(p["correct"] for p in passkeys), len(passkeys)] if passkeys else None
    return row


def fmt(x, digits=2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _cell(row: dict, part: str, document: str | None = None) -> str:
    """A perplexity for a table: pooled (``document`` None) or one document's; "non-finite" where a loss
    was NaN or infinite, "—" where nothing was measured."""
    value = row[f"ppl_{part}"] if document is None else row[f"per_document_{part}"].get(document)
    failed = row.get("nonfinite") or []
    if value is None and (document in failed if document is not None else failed):
        return "non-finite"
    return fmt(value)


def markdown_table(summary: dict) -> str:
    L, Lp = summary["original"], summary["target"]
    lines = [f"| table | ppl [1, {L}) | ppl [{L}, {Lp}) | disturbance x1e-3 | passkey at {Lp} | applied by |",
             "|---|---|---|---|---|---|"]
    n = len(summary.get("documents") or [])
    partial = False
    for name, row in summary["tables"].items():
        pk = "—" if not row["passkey"] else f"{row['passkey'][0]}/{row['passkey'][1]}"
        how = row["how"] + (f", attention x{row['attention_scaling']:.4f}"
                            if row["attention_scaling"] != 1 else "")
        mark = f" ({len(row['documents'])} of {n} documents)" if 0 < len(row["documents"]) < n else ""
        partial |= bool(mark)
        lines.append(f"| {name} | {_cell(row, 'original')}{mark} | {_cell(row, 'past')}{mark} | "
                     f"{row['disturbance'] * 1e3:.3f} | {pk} | {how} |")
    if partial:
        lines += ["", "Rows marked with a count pool only the documents done so far: rerun the command to "
                      "finish them."]
    return "\n".join(lines)


def per_document_table(summary: dict) -> str:
    """Perplexity at / past the window on each document, and past the window per token against the
    recommended table (nats: the mean over documents, and the least and most; negative: better than it)."""
    documents = sorted(summary.get("documents") or [])
    rec = (summary.get("recommendation") or {}).get("table")
    versus = f" | past the window vs {rec}, nats/token: mean (min .. max)" if rec else ""
    lines = [f"| table | {' | '.join(documents)}{versus} |", "|---" * (len(documents) + 1 + bool(rec)) + "|"]
    for name, row in summary["tables"].items():
        cells = [f"{_cell(row, 'original', d)} / {_cell(row, 'past', d)}" for d in documents]
        if rec:
            cells.append("—")
            if row["documents"] == documents == summary["tables"][rec]["documents"] \
                    and not row.get("nonfinite"):
                gaps = [a - b for a, b in zip(_per_token(row, "past", documents),
                                              _per_token(summary["tables"][rec], "past", documents))]
                cells[-1] = f"{sum(gaps) / len(gaps):+.4f} ({min(gaps):+.4f} .. {max(gaps):+.4f})"
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


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


def _per_token(row: dict, part: str, documents: list[str]) -> list[float]:
    return [math.log(row[f"per_document_{part}"][d]) for d in documents]


def _finite(row: dict, documents: list[str]) -> bool:
    """Whether ``row`` has finite perplexities on every one of ``documents``."""
    return row["documents"] == documents and not row.get("nonfinite") \
        and row["ppl_original"] is not None and row["ppl_past"] is not None


def missing(summary: dict) -> dict[str, int]:
    """``{table: documents measured}`` of the tables asked for that lack a document."""
    n = len(summary.get("documents") or [])
    return {name: len(row["documents"]) for name, row in summary["tables"].items()
            if len(row["documents"]) < n}


def recommend(summary: dict, fixed: set[str]) -> dict | None:
    """The table to use, once every table asked for is measured on every document: among the extensions
    with a fixed table (``fixed``; not the model's own ``original``) that are not worse at the window
    than the best one there on every document, the one with the lowest pooled perplexity past the
    window. With the margin to the next best past the window (any extension), and whether it is
    beyond the document-to-document spread: better on every document. None while the comparison is
    partial (:func:`missing`), or when no fixed extension has a finite perplexity on every document."""
    if missing(summary):
        return None
    rows = summary["tables"]
    documents = sorted(summary.get("documents") or [])
    done = {n: r for n, r in rows.items() if n in fixed and n != "original" and _finite(r, documents)}
    if not done:
        return None
    failed = sorted(n for n, r in rows.items() if n in fixed and n != "original" and r.get("nonfinite"))
    best_at = min(done, key=lambda n: done[n]["ppl_original"])
    at_best = _per_token(done[best_at], "original", documents)

    def worse_at_window(name):
        return all(a > b for a, b in zip(_per_token(done[name], "original", documents), at_best))

    eligible = {n: r for n, r in done.items() if n == best_at or not worse_at_window(n)}
    chosen = min(eligible, key=lambda n: eligible[n]["ppl_past"])
    others = [n for n, r in rows.items() if n not in (chosen, "original") and _finite(r, documents)]
    result = {"table": chosen, "ppl_original": rows[chosen]["ppl_original"],
              "ppl_past": rows[chosen]["ppl_past"],
              "excluded_worse_at_window": sorted(set(done) - set(eligible)), "excluded_nonfinite": failed,
              "documents": len(documents)}
    if others:
        runner = min(others, key=lambda n: rows[n]["ppl_past"])
        gaps = [b - a for a, b in zip(_per_token(rows[chosen], "past", documents),
                                      _per_token(rows[runner], "past", documents))]
        result.update(runner_up=runner, margin=rows[runner]["ppl_past"] / rows[chosen]["ppl_past"] - 1,
                      better_on=sum(g > 0 for g in gaps), per_document_gap=[min(gaps), max(gaps)])
    return result


def recommendation_text(rec: dict | None, original: int, target: int, summary: dict) -> str:
    if rec is None:
        lacking = missing(summary)
        if lacking:
            n = len(summary["documents"])
            parts = "; ".join(f"{name}: {done} of {n} documents" for name, done in lacking.items())
            return (f"No recommendation yet: the comparison is partial ({parts}); rerun the same command to "
                    "finish it.")
        return "No recommendation: no fixed extension table has a finite perplexity on every document."
    text = (f"Recommended: **{rec['table']}**, perplexity {rec['ppl_past']:.2f} past the window "
            f"[{original}, {target}) and {rec['ppl_original']:.2f} at it")
    if rec["excluded_worse_at_window"]:
        text += (f" (not considered, worse at the window on every document: "
                 f"{', '.join(rec['excluded_worse_at_window'])})")
    if rec.get("excluded_nonfinite"):
        text += f" (not considered, perplexity not a number: {', '.join(rec['excluded_nonfinite'])})"
    if "runner_up" in rec:
        n = rec["documents"]
        spread = ("beyond the document-to-document spread: better on every document" if rec["better_on"] == n
                  else f"inside the document-to-document spread: better on {rec['better_on']} of {n} "
                       f"documents")
        text += (f". Best other table past the window: {rec['runner_up']}, {100 * rec['margin']:+.2f}% "
                 f"perplexity; {spread} (per-document gap {rec['per_document_gap'][0]:+.4f} .. "
                 f"{rec['per_document_gap'][1]:+.4f} nats per token)")
    return text + "."
