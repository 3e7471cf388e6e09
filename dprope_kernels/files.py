"""Files the tools write: whole or not at all, and output directories used by one run at a time.

Every file or directory a command writes is written under a temporary name beside its final one
(``.NAME.partial-PID``) and renamed once complete, so an error, a full disk or a kill leaves either
nothing or the finished result under the final name (a killed run can leave a ``.partial-PID``
file, which no later run reads or is blocked by).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DPRoPEError, FileProblem, file_problem

LOCK = ".lock"


class DirectoryInUse(DPRoPEError, RuntimeError):
    """Another process holds the directory's lock."""


def partial_name(path: Path) -> Path:
    """The temporary name ``path`` is written under: hidden, beside it, unique to this process."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def fsync(path) -> None:
    """Flush ``path`` (a file or a directory: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove ``path`` if it can be: a clean-up, which never hides the error that called for it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _said(what: str):
    """An OSError the system raises inside becomes a one-line FileProblem naming ``what``."""
    try:
        yield
    except DPRoPEError:
        raise
    except OSError as err:
        raise file_problem(what, err) from err


@contextlib.contextmanager
def writing(path, *, directory: bool = False, replace: bool = False):
    """Yield a temporary path beside ``path`` to write a file (or, with ``directory``, a directory
    created for you) into; on success it is flushed and renamed to ``path``, on any error or
    interrupt it is removed. A file replaces ``path``; a directory must not exist (an empty one
    may), unless ``replace``: then the old one is set aside and removed once the new one is in place."""
    path = Path(path)
    tmp = partial_name(path)
    _remove(tmp)
    try:
        with _said(f"cannot write {path}"):
            if directory:
                tmp.mkdir(parents=False)
            yield tmp
            written = [*sorted(tmp.rglob("*")), tmp] if directory else [tmp]
            for item in written:
                if not item.is_symlink():
                    fsync(item)
            stale = None
            if directory and path.is_dir() and (replace or not any(path.iterdir())):
                stale = path.with_name(f".{path.name}.stale-{os.getpid()}")
                os.rename(path, stale)  # the finished directory takes its place
            os.rename(tmp, path)
            fsync(path.parent)
        if stale is not None:
            _remove(stale)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one rename."""
    path = Path(path)
    tmp = partial_name(path)
    try:
        with _said(f"cannot write {path}"), open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with _said(f"cannot write {path}"):
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def dumps(data, indent: int | None = None, **options) -> str:
    """``data`` as strict JSON: a NaN or an infinity is a bug in what wrote it, refused (ValueError), never
    written as ``NaN`` / ``Infinity``, which Python reads but JSON does not have."""
    return json.dumps(data, indent=indent, allow_nan=False, **options)


def write_json(path, data, indent: int | None = 1) -> None:
    write_text(path, dumps(data, indent=indent) + "\n")


def append_line(path, line: str) -> None:
    """Append one line to ``path`` and flush it to disk; a line an interruption cut short before is ended
    first."""
    path = Path(path)
    with _said(f"cannot append to {path}"):
        cut = path.is_file() and path.stat().st_size > 0 and not _ends_with_newline(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(("\n" if cut else "") + line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def lock_directory(directory, flag: str = "--output"):
    """Lock ``directory`` for this process until it exits or the returned handle is closed.

    :class:`DirectoryInUse` when another process holds it. The OS drops the lock when its process
    dies, so a killed run leaves no stale lock.
    """
    directory = Path(directory)
    with _said(f"{flag} {directory}: cannot lock it"):
        handle = open(directory / LOCK, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        who = f"another run (pid {holder})" if holder.isdigit() else "another run"
        raise DirectoryInUse(f"{flag} {directory}: {who} is using this directory "
                             f"(it holds {directory / LOCK}); "
                             f"wait for it to finish or choose another {flag}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def check_writable(path, flag: str = "--output") -> None:
    """Refuse (a :class:`~dprope_kernels.errors.FileProblem` naming ``flag``) a ``path`` this process could
    not write: a file or directory it would create or replace, tried by creating and removing a file in
    the directory that would hold it (``path`` itself when it is a directory, else the nearest existing
    folder above it). Nothing is left behind."""
    path = Path(path)
    folder = path if path.is_dir() else next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not folder.is_dir():
        raise FileProblem(f"{flag} {path}: {folder} is not a directory")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".dprope-probe-", dir=folder)
    except OSError as err:
        raise file_problem(f"{flag} {path}: cannot write in {folder}", err) from None
    os.close(descriptor)
    _remove(Path(probe))


def inside(path, directory) -> bool:
    """Whether ``path`` is ``directory`` or lies inside it (symlinks resolved)."""
    path, directory = Path(path).resolve(), Path(directory).resolve()
    return path == directory or directory in path.parents
