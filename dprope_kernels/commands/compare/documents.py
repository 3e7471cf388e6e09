"""The texts ``dprope compare`` scores: documents read from files, and passkey prompts made of filler."""

from __future__ import annotations

import gzip
import hashlib
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InvalidValue

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


class CompareError(InvalidValue):
    """A bad argument or input, said in one line."""


def named(spec: str, what: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> ``(NAME, VALUE)``, both stripped and non-empty."""
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise CompareError(f"{what} {spec!r} must look like NAME=VALUE")
    return name.strip(), value.strip()


@dataclass
class Document:
    name: str
    paths: list[str]
    text: str
    sha256: str  # of the text as scored (files joined by blank lines)
    tokens: list[int] = field(default_factory=list, repr=False)


def _read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise CompareError(f"document {path} does not exist or is not a file")
    try:
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # unreadable; gzip: BadGzipFile (an OSError), cut short
        reason = getattr(err, "strerror", None) or err
        raise CompareError(f"document {path} cannot be read ({reason})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CompareError(f"document {path} is not UTF-8 text") from None


def parse_documents(specs: list[str]) -> list[Document]:
    """``PATH`` or ``NAME=PATH[,PATH...]`` (files concatenated with blank lines between them)."""
    documents = []
    for spec in specs:
        if "=" in spec and not Path(spec).exists():
            name, value = named(spec, "document")
            paths = [x for x in value.split(",") if x]
        else:
            name, paths = Path(spec).name.split(".")[0] or Path(spec).name, [spec]
        text = "\n\n".join(_read_text(p) for p in paths)
        if not text.strip():
            raise CompareError(f"document {name} is empty")
        documents.append(Document(name, paths, text, hashlib.sha256(text.encode()).hexdigest()))
    names = [d.name for d in documents]
    if len(set(names)) != len(names):
        raise CompareError(f"document names must be unique (name them NAME=PATH), got {names}")
    return documents


def tokenize(documents: list[Document], tokenizer, target: int) -> None:
    """Each document's tokens; one shorter than the window is refused."""
    for doc in documents:
        doc.tokens = tokenizer(doc.text, add_special_tokens=True)["input_ids"]
        if len(doc.tokens) < target:
            raise CompareError(f"document {doc.name} has {len(doc.tokens)} tokens; the window needs {target} "
                               "(concatenate files: NAME=PATH,PATH)")


def passkey_case(tokenizer, length: int, trial: int, trials: int,
                 seed: int) -> tuple[list[int], list[int], dict]:
    """``(prompt, key tokens, info)``: a 5-digit key at depth ``(trial + 0.5) / trials`` in filler, the
    prompt and key together ``length`` tokens."""
    rng = random.Random(seed * 1_000_003 + trial)
    key = str(rng.randint(10000, 99999))
    depth = (trial + 0.5) / trials

    def enc(text):
        return tokenizer.encode(text, add_special_tokens=False)

    intro = enc("There is important info hidden inside a lot of irrelevant text. Find it and memorize it. ")
    needle = enc(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    question = enc("What is the pass key? The pass key is")
    answer = enc(f" {key}")
    budget = length - len(intro) - len(needle) - len(question) - len(answer)
    if budget < 0:
        raise CompareError(f"passkey prompts need more than {length} tokens")
    unit = enc(FILLER)
    filler = (unit * (budget // len(unit) + 1))[:budget]
    cut = int(len(filler) * depth)
    prompt = intro + filler[:cut] + needle + filler[cut:] + question
    return prompt, answer, {"passkey": key, "depth": depth, "needle_position": len(intro) + cut}
