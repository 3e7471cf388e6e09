"""The results of ``dprope compare`` in its output directory: a run with an identity, records that never mix.

The directory belongs to one run at a time (a lock, like ``examples/train.py``'s) and to one set of
settings (``run.json``: the model's files, lengths, dtype, device, rotary path, bucket, passkey seed
and layout, transformers' version); a command with other settings is refused in one line, or
``--fresh`` clears the earlier results, once every check of the command has passed (:meth:`Store.begin`:
nothing is discarded or written before). A damaged ``run.json`` or ``tables.json`` is refused naming
it; ``--fresh`` discards it unread. Each record carries a key: a hash of the settings, the
document's text and the table's definition, so a record is reused only for exactly what it
measured, and summaries read only the records of the documents and tables asked for. Files are
appended line by line (a line cut by a kill is dropped and redone) or replaced whole.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ... import files
from .documents import CompareError

RESULTS, PASSKEYS, TABLES, RUN = "results.jsonl", "passkey.jsonl", "tables.json", "run.json"
OUTPUTS = (RESULTS, PASSKEYS, TABLES, RUN, "summary.json", "table.md", "curve.png")


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict]:
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by an interruption; its work is redone
    return records


def _read_json(path: Path):
    """The JSON in ``path`` (None when there is none), or a CompareError naming the damaged file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        raise CompareError(f"--output: {path} is damaged ({err}); --fresh discards the results "
                           "in the directory") from None


class Store:
    """An output directory held by this run; :meth:`close` releases it. Nothing in it changes until
    :meth:`begin`."""

    def __init__(self, out: Path, settings: dict, fresh: bool, model: dict | None = None):
        self.out, self.settings, self.fresh, self.begun = out, settings, fresh, False
        self.model = model  # what run.json says of the model besides its settings (not in any key)
        if out.exists() and not out.is_dir():
            raise CompareError(f"--output {out} exists and is not a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CompareError(f"--output {out}: cannot create it ({err.strerror or err})") from None
        self._lock = files.lock_directory(out)
        try:
            self._claim(fresh)
        except BaseException:
            self.close()
            raise
        self.settings_key = _hash(settings)

    def _claim(self, fresh: bool) -> None:
        if fresh:
            return  # the old results are discarded unread, by begin()
        old = _read_json(self.out / RUN)
        self.served()  # a damaged tables.json is refused now, not after the model loaded
        if old is not None and old.get("settings") != self.settings:
            recorded = old.get("settings") or {}
            diff = [f"{k} {recorded.get(k)!r} -> {self.settings.get(k)!r}"
                    for k in sorted(set(recorded) | set(self.settings))
                    if recorded.get(k) != self.settings.get(k)]
            raise CompareError(
                f"--output {self.out} holds results made with other settings "
                f"({'; '.join(diff) or 'an older format'}); use another --output, or --fresh to discard them")

    def begin(self) -> None:
        """Before the first write, once every check has passed: discard the old results (``--fresh``) and
        record the run's settings."""
        if self.begun:
            return
        if self.fresh:
            for name in OUTPUTS:
                (self.out / name).unlink(missing_ok=True)
        if not (self.out / RUN).is_file():
            files.write_json(self.out / RUN, {"settings": self.settings, "model": self.model})
        self.begun, self.fresh = True, False

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def window_key(self, document_sha256: str, table_key: str) -> str:
        return _hash(self.settings_key, "window", document_sha256, table_key)

    def passkey_key(self, table_key: str, trial: int) -> str:
        return _hash(self.settings_key, "passkey", table_key, trial)

    def records(self, name: str, keys) -> dict[str, dict]:
        """``{key: record}`` of the records in ``name`` whose key is one of ``keys`` (the last one wins);
        none while ``--fresh`` is to discard them."""
        keys = set(keys)
        if self.fresh:
            return {}
        return {r["key"]: r for r in read_jsonl(self.out / name) if r.get("key") in keys}

    def append(self, name: str, record: dict) -> None:
        assert self.begun, "a record is written only after begin()"
        files.append_line(self.out / name, files.dumps(record))

    def served(self) -> dict:
        """``{table key: what was served}`` recorded by earlier runs (none while ``--fresh`` is to discard
        them)."""
        served = {} if self.fresh else _read_json(self.out / TABLES) or {}
        if not isinstance(served, dict):
            raise CompareError(f"--output: {self.out / TABLES} is damaged (not a JSON object); --fresh "
                               "discards the results in the directory")
        return served

    def record_served(self, served: dict) -> None:
        assert self.begun, "tables.json is written only after begin()"
        files.write_json(self.out / TABLES, {**self.served(), **served})
