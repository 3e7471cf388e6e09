"""What ``dprope compare`` reports: per-window scores, the summary of exactly what was asked, progress."""

from __future__ import annotations

import math
import sys
import time


def ppl(total: float, count: int) -> float | None:
    return math.exp(total / count) if count else None


def score(nll: list[float], original: int, bucket: int) -> dict:
    """Sums over target tokens ``[1, L)`` and ``[L, L')`` and per bucket of target positions."""
    at, past = nll[: original - 1], nll[original - 1:]
    n_buckets = (len(nll) + bucket) // bucket
    sums, counts = [0.0] * n_buckets, [0] * n_buckets
    for j, value in enumerate(nll, start=1):
        sums[j // bucket] += value
        counts[j // bucket] += 1
    return {"nll_original": math.fsum(at), "tokens_original": len(at), "nll_past": math.fsum(past),
            "tokens_past": len(past), "ppl_original": ppl(math.fsum(at), len(at)),
            "ppl_past": ppl(math.fsum(past), len(past)), "bucket_nll": sums, "bucket_tokens": counts}


def summary_row(windows: dict, passkeys: list, served: dict) -> dict:
    """One table's row: ``windows`` ``{document: record}``, ``passkeys`` its trial records."""
    row = {"documents": sorted(windows), "disturbance": served["disturbance"], "how": served["how"],
           "attention_scaling": served["attention_scaling"]}
    for part in ("original", "past"):
        total = math.fsum(r[f"nll_{part}"] for r in windows.values())
        count = sum(r[f"tokens_{part}"] for r in windows.values())
        row[f"ppl_{part}"] = ppl(total, count)
        row[f"per_document_{part}"] = {d: r[f"ppl_{part}"] for d, r in sorted(windows.items())}
    if windows:
        n = max(len(r["bucket_nll"]) for r in windows.values())
        sums, counts = [0.0] * n, [0] * n
        for r in windows.values():
            for i, (s, c) in enumerate(zip(r["bucket_nll"], r["bucket_tokens"])):
                sums[i] += s
                counts[i] += c
        row["curve"] = [ppl(s, c) for s, c in zip(sums, counts)]
    row["passkey"] = [sum(p["correct"] for p in passkeys), len(passkeys)] if passkeys else None
    return row


def fmt(x, digits=2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


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
        lines.append(f"| {name} | {fmt(row['ppl_original'])}{mark} | {fmt(row['ppl_past'])}{mark} | "
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
        cells = [f"{fmt(row['per_document_original'].get(d))} / {fmt(row['per_document_past'].get(d))}"
                 for d in documents]
        if rec:
            cells.append("—")
            if row["documents"] == documents == summary["tables"][rec]["documents"]:
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


def recommend(summary: dict, fixed: set[str]) -> dict | None:
    """The table to use: among the extensions with a fixed table (``fixed``; not the model's own
    ``original``) that are not worse at the window than the best one there on every document, the
    one with the lowest pooled perplexity past the window. With the margin to the next best past the
    window (any extension), and whether it is beyond the document-to-document spread: better on
    every document. None when fewer than one extension has every document."""
    rows = summary["tables"]
    documents = sorted(summary.get("documents") or [])
    done = {n: r for n, r in rows.items() if n in fixed and n != "original" and r["ppl_past"] is not None
            and r["documents"] == documents}
    if not done:
        return None
    best_at = min(done, key=lambda n: done[n]["ppl_original"])
    at_best = _per_token(done[best_at], "original", documents)

    def worse_at_window(name):
        return all(a > b for a, b in zip(_per_token(done[name], "original", documents), at_best))

    eligible = {n: r for n, r in done.items() if n == best_at or not worse_at_window(n)}
    chosen = min(eligible, key=lambda n: eligible[n]["ppl_past"])
    others = [n for n, r in rows.items() if n not in (chosen, "original") and r["ppl_past"] is not None
              and r["documents"] == documents]
    result = {"table": chosen, "ppl_original": rows[chosen]["ppl_original"],
              "ppl_past": rows[chosen]["ppl_past"],
              "excluded_worse_at_window": sorted(set(done) - set(eligible)), "documents": len(documents)}
    if others:
        runner = min(others, key=lambda n: rows[n]["ppl_past"])
        gaps = [b - a for a, b in zip(_per_token(rows[chosen], "past", documents),
                                      _per_token(rows[runner], "past", documents))]
        result.update(runner_up=runner, margin=rows[runner]["ppl_past"] / rows[chosen]["ppl_past"] - 1,
                      better_on=sum(g > 0 for g in gaps), per_document_gap=[min(gaps), max(gaps)])
    return result


def recommendation_text(rec: dict | None, original: int, target: int) -> str:
    if rec is None:
        return "No recommendation: no extension table has results on every document yet."
    text = (f"Recommended: **{rec['table']}**, perplexity {rec['ppl_past']:.2f} past the window "
            f"[{original}, {target}) and {rec['ppl_original']:.2f} at it")
    if rec["excluded_worse_at_window"]:
        text += (f" (not considered, worse at the window on every document: "
                 f"{', '.join(rec['excluded_worse_at_window'])})")
    if "runner_up" in rec:
        n = rec["documents"]
        spread = ("beyond the document-to-document spread: better on every document" if rec["better_on"] == n
                  else f"inside the document-to-document spread: better on {rec['better_on']} of {n} "
                       f"documents")
        text += (f". Best other table past the window: {rec['runner_up']}, {100 * rec['margin']:+.2f}% "
                 f"perplexity; {spread} (per-document gap {rec['per_document_gap'][0]:+.4f} .. "
                 f"{rec['per_document_gap'][1]:+.4f} nats per token)")
    return text + ". Export it: dprope export MODEL OUT --from-compare DIR --table NAME."
