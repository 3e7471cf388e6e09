"""Shared pieces of the GPU benchmarks: the report header and the JSON writer."""

from __future__ import annotations

import datetime
import json
import subprocess

import torch


def report_header(**measured) -> dict:
    """Device, date, commit and versions, plus any hardware rates measured in the run."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "torch": torch.__version__,
        **measured,
        "runs": [],
    }


def write_report(report: dict, out: str | None) -> None:
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
