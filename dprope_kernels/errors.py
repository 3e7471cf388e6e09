"""The errors the package raises on purpose: every refusal of an input or a state is a :class:`DPRoPEError`.

Its message is one line that says what the package found (and, where it can, what to do). The command
line turns every one of them into ``dprope <command>: error: <message>`` and exit status 2, in one
place (``commands/__init__.py``); anything else is a bug and surfaces as a traceback. Each subclass
also derives from the built-in error its kind of refusal has always been (``ValueError`` for a bad
value, ``OSError`` for a file, ...), so callers' ``except ValueError`` keeps working.

A library's error that a bad input causes (a file that is not JSON, a model transformers cannot
load) is caught where it is raised and said again as one of these, naming the input.
"""

from __future__ import annotations

import sys


class DPRoPEError(Exception):
    """An input or a state the package refuses; ``str(err)`` says what it found, in one line."""


class InvalidValue(DPRoPEError, ValueError):
    """A value the package cannot take."""


class InvalidType(DPRoPEError, TypeError):
    """An argument of a type the package does not take."""


class InvalidKey(DPRoPEError, KeyError):
    """Keys a mapping (rope parameters) lacks or should not have."""

    def __str__(self) -> str:  # KeyError quotes its argument
        return str(self.args[0]) if self.args else ""


class Unsupported(DPRoPEError, NotImplementedError):
    """What a backend, a build or a call cannot do (a RuntimeError, as NotImplementedError is)."""


class MissingDependency(DPRoPEError, ImportError):
    """An optional package a feature needs is not installed; the message says how to get it."""


class FileProblem(DPRoPEError, OSError):
    """A file or directory that cannot be read or written; the message names it and the reason."""


class OutputExists(FileProblem, FileExistsError):
    """An output that exists already and would be overwritten."""


def file_problem(what: str, err: OSError) -> FileProblem:
    """A :class:`FileProblem` for ``err`` (an OSError the system raised), ``what`` naming the file and the
    action, with the errno kept."""
    reason = err.strerror or str(err) or type(err).__name__
    problem = FileProblem(f"{what}: {reason}")
    problem.errno = err.errno  # str() stays the message: no strerror or filename set
    return problem


def require(module: str, purpose: str, install: str):
    """The top-level ``module``, imported, or a :class:`MissingDependency` saying ``purpose`` needs it and
    how to ``install`` it."""
    try:
        __import__(module)
    except ImportError as err:
        raise MissingDependency(f"{purpose} needs {module} ({err}): {install}") from None
    return sys.modules[module]
