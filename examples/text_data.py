"""Local text for the examples: .txt / .jsonl files, a tokenizer, and fixed-length token blocks."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class DataError(ValueError):
    """Data or a tokenizer that cannot be used; the message says which file and why."""


class ByteTokenizer:
    """UTF-8 bytes as token ids (0..255): for models without a tokenizer, e.g. tiny test models."""

    eos_token_id = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The text's UTF-8 bytes (there are no special tokens to add; the keyword is transformers')."""
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer behind the same two methods."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.eos_token_id = self.tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)


def load_tokenizer(model_dir: str, byte_level: bool):
    if byte_level:
        return ByteTokenizer()
    try:
        return HFTokenizer(model_dir)
    # what transformers raises for a missing tokenizer
    except (OSError, ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"--model {model_dir}: no tokenizer could be loaded from it ({first[:160]}); add "
                        "one, or pass --byte-tokenizer to use UTF-8 bytes as tokens") from None


SUFFIXES = (".txt", ".jsonl")


def data_file_problems(paths: list[str]) -> list[str]:
    """What keeps each of ``paths`` from being read as data (empty when all can be)."""
    problems = []
    for path in map(Path, paths):
        if not path.is_file():
            problems.append(f"{path}: no such file")
        elif path.suffix not in SUFFIXES:
            problems.append(f"{path}: expected a .txt or .jsonl file")
    return problems


def read_texts(paths: list[str]) -> list[str]:
    """Documents from ``.txt`` files (one document each) and ``.jsonl`` files (a ``text`` field per line)."""
    texts = []
    for path in map(Path, paths):
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        if path.suffix == ".jsonl":
            texts += _jsonl_texts(path, content)
        elif path.suffix == ".txt":
            texts.append(content)
        else:
            raise DataError(f"{path}: expected a .txt or .jsonl file")
    return texts


def _jsonl_texts(path: Path, content: str) -> list[str]:
    texts = []
    for line_no, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line_no}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{line_no}: a jsonl record needs a 'text' field holding a string")
        texts.append(record["text"])
    return texts


def token_blocks(texts: list[str], tokenizer, length: int) -> torch.Tensor:
    """``[n_blocks, length]`` int64: the documents' tokens (eos between them) cut into full blocks."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    n_blocks = len(ids) // length
    if n_blocks == 0:
        raise DataError(f"--data has {len(ids)} tokens, fewer than one block of {length}")
    return torch.tensor(ids[: n_blocks * length], dtype=torch.int64).view(n_blocks, length)
