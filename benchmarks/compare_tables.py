"""Markdown tables from the records of a ``dprope compare`` run: perplexity per document and pooled, at
and past the window, and each table's per-document difference from reference tables.

    python benchmarks/compare_tables.py RUN_DIR [--reference yarn --reference ntk] [--tables a,b,c]

RUN_DIR holds ``results.jsonl`` (one record per table and document: the NLL summed over the window's
two halves and over its buckets) and ``tables.json`` (what each table served). Only tables with a record
for every document enter the differences. The last column of a difference table is a rough
within-document noise scale: the per-token difference in every bucket of every document, its mean and
the standard error of that mean.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

PARTS = {"original": "at the window", "past": "past the window"}


def read_run(directory: Path) -> tuple[dict, list[str], dict]:
    """``({(table, document): record}, documents in first-seen order, {table: attention factor})``."""
    records, documents = {}, []
    for line in (directory / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[r["table"], r["document"]] = r
        documents += [r["document"]] if r["document"] not in documents else []
    served = json.loads((directory / "tables.json").read_text())
    factors = {v.get("table", k): v["attention_scaling"] for k, v in served.items()}  # written by older runs
    summary = directory / "summary.json"
    if summary.is_file():  # tables.json is keyed by what each table is; the summary names them
        rows = json.loads(summary.read_text())["tables"]
        factors.update({name: row["attention_scaling"] for name, row in rows.items()})
    return records, documents, factors


def per_token(r: dict, part: str) -> float:
    return r[f"nll_{part}"] / r[f"tokens_{part}"]


def pooled(records: dict, table: str, documents: list[str], part: str) -> float:
    rs = [records[table, d] for d in documents]
    return math.exp(math.fsum(r[f"nll_{part}"] for r in rs) / sum(r[f"tokens_{part}"] for r in rs))


def bucket_noise(a: dict, b: dict, part: str) -> list[float]:
    """Per-token differences of ``a`` and ``b`` in each bucket of the window's half ``part``."""
    half = len(a["bucket_nll"]) // 2
    span = range(half) if part == "original" else range(half, len(a["bucket_nll"]))
    return [(a["bucket_nll"][i] - b["bucket_nll"][i]) / a["bucket_tokens"][i] for i in span
            if a["bucket_tokens"][i]]


def perplexity_table(records, tables, documents, factors, part) -> list[str]:
    lines = [f"**perplexity {PARTS[part]}** (pooled: exp of the summed NLL over the summed tokens)", "",
             f"| table | attention factor | {' | '.join(documents)} | pooled |",
             "|---" * (len(documents) + 3) + "|"]
    for t in tables:
        cells = [f"{math.exp(per_token(records[t, d], part)):.3f}" for d in documents]
        lines.append(f"| {t} | {factors.get(t, float('nan')):.4f} | {' | '.join(cells)} | "
                     f"{pooled(records, t, documents, part):.3f} |")
    return lines


def difference_table(records, tables, documents, reference, part) -> list[str]:
    lines = [f"**{PARTS[part]}: per-document difference from {reference}** (mean NLL per token, nats; "
             f"negative: better than {reference})", "",
             f"| table | {' | '.join(documents)} | mean | min | max | documents better | pooled ppl ratio | "
             "bucket mean ± SE |", "|---" * (len(documents) + 7) + "|"]
    for t in tables:
        if t == reference:
            continue
        gaps = [per_token(records[t, d], part) - per_token(records[reference, d], part) for d in documents]
        noise = [x for d in documents for x in bucket_noise(records[t, d], records[reference, d], part)]
        ratio = pooled(records, t, documents, part) / pooled(records, reference, documents, part)
        lines.append(f"| {t} | {' | '.join(f'{g:+.4f}' for g in gaps)} | {statistics.mean(gaps):+.4f} | "
                     f"{min(gaps):+.4f} | {max(gaps):+.4f} | {sum(g < 0 for g in gaps)}/{len(gaps)} | "
                     f"{ratio:.4f} | {statistics.mean(noise):+.4f} ± "
                     f"{statistics.stdev(noise) / math.sqrt(len(noise)):.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a dprope compare --output directory")
    parser.add_argument("--reference", action="append", default=[], help="table to difference against")
    parser.add_argument("--tables", help="comma-separated tables in this order (default: every complete one)")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=SHOWN",
                        help="show table NAME as SHOWN (e.g. what an older run called it)")
    args = parser.parse_args()
    records, documents, factors = read_run(args.run)
    shown = dict(pair.split("=", 1) for pair in args.label)
    records = {(shown.get(t, t), d): r for (t, d), r in records.items()}
    factors = {shown.get(t, t): f for t, f in factors.items()}
    names = args.tables.split(",") if args.tables else list(dict.fromkeys(t for t, _ in records))
    missing = [f"{t} on {d}" for t in names for d in documents if (t, d) not in records]
    if args.tables and missing:
        parser.error(f"no record of {', '.join(missing)}")
    tables = [t for t in names if all((t, d) in records for d in documents)]
    blocks = [perplexity_table(records, tables, documents, factors, part) for part in PARTS]
    blocks += [difference_table(records, tables, documents, ref, part)
               for ref in args.reference for part in ("past", "original")]
    print("\n\n".join("\n".join(b) for b in blocks))


if __name__ == "__main__":
    main()
