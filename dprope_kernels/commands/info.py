"""``dprope info``: the kernel backends this machine can run, and why not the others."""

from __future__ import annotations


def add_parser(sub) -> None:
    sub.add_parser("info", help="which kernel backends this machine can run, and why not")


def run(args) -> int:
    from ..backends import backend_report

    print(backend_report())
    return 0
