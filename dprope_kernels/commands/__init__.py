"""The command line, ``dprope``: ``plan`` (the main job), ``compare`` (every extension on a real model),
``export`` (configs and GGUF files engines load natively) and ``info`` (kernel backends).

Each command is a module with ``add_parser(sub)`` (standard library only: every parser is built on
each call) and ``run(args) -> exit code``. Every refusal the package raises is a
:class:`~dprope_kernels.errors.DPRoPEError`; :func:`main` turns each into one line on stderr and exit
status 2, here and nowhere else. Anything else is a bug, and its traceback is left to show it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("plan", "compare", "export", "info")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="dprope", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"dprope_kernels {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv or ["plan"])
    from ..errors import DPRoPEError

    try:
        return importlib.import_module(f".{args.command}", __name__).run(args)
    except DPRoPEError as err:
        message = " ".join(str(err).splitlines())  # one line, whatever the message held
        print(f"dprope {args.command}: error: {message}", file=sys.stderr)
        return 2
