"""The command line, ``dprope``: ``plan`` (the main job), ``compare`` (every extension on a real model),
``export`` (configs and GGUF files engines load natively) and ``info`` (kernel backends).

Each command is a module with ``add_parser(sub)`` (standard library only: every parser is built on
each call) and ``run(args) -> exit code``. A bad argument or input is one line on stderr, exit 2.
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
    try:
        return importlib.import_module(f".{args.command}", __name__).run(args)
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"dprope {args.command}: error: {err}", file=sys.stderr)
        return 2
