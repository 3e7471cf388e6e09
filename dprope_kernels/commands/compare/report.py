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
    for name, row in summary["tables"].items():
        pk = "—" if not row["passkey"] else f"{row['passkey'][0]}/{row['passkey'][1]}"
        how = row["how"] + (f", attention x{row['attention_scaling']:.4f}" if row["attention_scaling"] != 1 else "")
        lines.append(f"| {name} | {fmt(row['ppl_original'])} | {fmt(row['ppl_past'])} | "
                     f"{row['disturbance'] * 1e3:.3f} | {pk} | {how} |")
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
