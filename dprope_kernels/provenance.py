"""Which code a result came from: the package's own commit where it is known, never another's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENV_VAR = "DPROPE_SOURCE_COMMIT"
SOURCE = Path(__file__).resolve().parents[1]  # the checkout (or copy) the package was imported from


def source_commit() -> str | None:
    """``DPROPE_SOURCE_COMMIT`` when set (a copy of the tree carries no git history), else the HEAD of
    the git checkout this package was imported from (``+dirty`` with uncommitted changes to tracked
    files) when that checkout is the package's own repository, else None: a copy unpacked inside some
    other repository never reports that repository's commit."""
    given = os.environ.get(ENV_VAR)
    if given:
        return given

    def git(*args) -> str:
        try:
            result = subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True,
                                    check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):  # no git here
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != SOURCE or not (SOURCE / "dprope_kernels").is_dir():
        return None
    head = git("rev-parse", "HEAD")
    if not head:
        return None
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
