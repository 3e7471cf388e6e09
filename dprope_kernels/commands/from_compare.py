"""``dprope export --from-compare DIR``: a table ``dprope compare`` measured, checked against the model being
exported before anything is written.

A measured table is exported only to the model it was measured on (the fingerprint of its files in the
run's ``run.json``), only when it was measured on every document of the run with a finite perplexity,
only when the comparison's target is beyond the model's own length (else the export would shorten the
model and divide pairs inside the window it was trained on), and never in place of the DPRoPE plan a
model records (the plan it was trained with), unless it is that plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """The model being exported, as a comparison is checked against it."""

    where: str
    rotary_dim: int
    rope_theta: float
    length: int  # its own length: the config's pre-training length, or the GGUF file's context_length
    files: str  # dprope compare's fingerprint of the files it is loaded from
    config: dict | None = None  # its config.json (None for a GGUF file)


def source_of(path: str, gguf: bool) -> Source:
    """The :class:`Source` of ``path`` (a model directory or config.json, or with ``gguf`` a GGUF file)."""
    from .compare.model import fingerprint

    if gguf:
        from ..export import gguf_rope_settings, read_gguf

        settings = gguf_rope_settings(read_gguf(path))
        file = Path(path)
        return Source(path, settings["rotary_dim"], settings["rope_theta"], settings["context_length"],
                      fingerprint(str(file.parent), file.name))
    from ..hf_config import load_config, pretrained_rope_settings

    file, config = load_config(path)
    settings = pretrained_rope_settings(config, where=file)
    return Source(path, settings.rotary_dim, settings.rope_theta, settings.original_max_position,
                  fingerprint(str(Path(file).parent), None), config)


def _read(root: Path, name: str) -> dict:
    from ..export import ExportError

    path = root / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"--from-compare {root}: it has no {name}; give the --output directory of a dprope "
                          "compare run") from None
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        raise ExportError(f"--from-compare {root}: {path} is damaged ({err}); rerun dprope compare into it "
                          "(--fresh starts over)") from None
    if not isinstance(data, dict):
        raise ExportError(f"--from-compare {root}: {path} is damaged (not a JSON object)")
    return data


def _check_model(root: Path, run: dict, source: Source) -> None:
    """The comparison was made on the files of the model being exported."""
    from ..export import ExportError

    settings = run.get("settings") or {}
    if settings.get("model_files") == source.files:
        return
    model = run.get("model") or {}
    differences = [f"{key} {model[key]:g} there, {mine:g} here" for key, mine in
                   (("rotary_dim", source.rotary_dim), ("rope_theta", source.rope_theta))
                   if isinstance(model.get(key), (int, float)) and model[key] != mine]
    raise ExportError(f"--from-compare {root} measured another model ({settings.get('model', 'unknown')}, "
                      f"files {settings.get('model_files')}) than {source.where} (files {source.files})"
                      + (f": {'; '.join(differences)}" if differences else "")
                      + "; export the model it measured, or compare this one")


def _check_row(root: Path, name: str, summary: dict) -> dict:
    """The summary row of ``name``: a fixed extension measured with a finite perplexity on every document
    of the run."""
    from ..export import ExportError

    row = summary["tables"].get(name)
    if row is None:
        raise ExportError(f"--from-compare {root}: no table {name!r}; it has {', '.join(summary['tables'])}")
    if "fixed" not in row:
        raise ExportError(f"--from-compare {root} was written by an older dprope compare, which did not "
                          "record what each table is: rerun the same command into it (it resumes)")
    if name == "original" or not row["fixed"]:
        raise ExportError(f"table {name!r} is " + ("the model's own" if name == "original" else
                                                  "not one fixed table (it changes with the length)"))
    documents = sorted(summary["documents"])
    if row["documents"] != documents:
        raise ExportError(f"--from-compare {root}: table {name!r} was measured on {len(row['documents'])} of "
                          f"{len(documents)} documents of the comparison; finish it (rerun the same dprope "
                          "compare command: it resumes)")
    if row.get("nonfinite"):
        raise ExportError(f"--from-compare {root}: table {name!r} has a perplexity that is not a number on "
                          f"{', '.join(row['nonfinite'])}")
    return row


def compared_table(directory, name: str | None, source: Source):
    """The :class:`~dprope_kernels.export.ExportedTable` of a table ``dprope compare`` measured in
    ``directory`` (``name``, or the run's recommendation), for ``source``. A DPRoPE plan is rebuilt from
    its options and checked against the table served; any other fixed table is exported by its per-pair
    divisors of the model's own frequencies."""
    import torch

    from ..export import ExportedTable, ExportError
    from ..planner import check_table, plan_dprope
    from ..strategies import default_inv_freq
    from .compare.report import missing
    from .compare.store import RUN, TABLES

    root = Path(directory)
    run, summary, served = (_read(root, file) for file in (RUN, "summary.json", TABLES))
    _check_model(root, run, source)
    if name is None:
        name = (summary.get("recommendation") or {}).get("table")
        if name is None:
            partial = " yet: the comparison is partial (rerun the same command to finish it)" \
                if missing(summary) else ""
            raise ExportError(f"--from-compare {root}: the run recommends no table{partial}; name one with "
                              "--table")
    row = _check_row(root, name, summary)
    original, target = summary["original"], summary["target"]
    if target <= source.length:
        raise ExportError(f"--from-compare {root}: its target {target} is not beyond the model's own "
                          f"{source.length} positions: the export would shorten the model to {target} and "
                          "divide pairs inside the window it was trained on; compare with a target past it")
    entry = served.get(row["table_key"])
    if entry is None:
        raise ExportError(f"--from-compare {root}: {root / TABLES} has no record of table {name!r}; rerun "
                          "the same dprope compare command into it")
    if len(entry["inv_freq"]) != source.rotary_dim // 2:
        raise ExportError(f"table {name!r} has {len(entry['inv_freq'])} frequencies; the model rotates "
                          f"{source.rotary_dim} dims")
    try:  # as every table is checked, whatever made it
        table, attention = check_table(entry["inv_freq"], entry["attention_scaling"], where=f"table {name!r}")
    except (ValueError, TypeError) as err:
        raise ExportError(f"--from-compare {root}: {err}") from None
    options = (row.get("plan") or {}).get("options")
    if options is not None:
        plan = plan_dprope(head_dim=source.rotary_dim, rope_theta=source.rope_theta,
                           original_max_position=original, target_max_position=target, **options)
        if not torch.equal(plan.inv_freq.float().double(), table):
            raise ExportError(f"table {name!r}: planning with its options now gives another table than the "
                              "one measured; rerun dprope compare")
        return ExportedTable.from_plan(plan, name)
    base = default_inv_freq(source.rotary_dim, source.rope_theta)
    divisors = tuple((base / table).tolist())
    return ExportedTable(name, source.rotary_dim, source.rope_theta, base, table, divisors, attention,
                         original, target, None, row.get("source", ""))


def keep_the_trained_plan(table, source: Source):
    """``table``, unless ``source`` records the DPRoPE plan it was trained with: then that plan when the
    table is it (the same float32 table, lengths and attention factor), else refused, as flags that
    disagree with a recorded plan are."""
    import torch

    from ..export import ExportedTable, ExportError
    from ..hf_config import ROPE_TYPE, plan_for_config, pretrained_rope_settings, rope_type_of

    if source.config is None or rope_type_of(pretrained_rope_settings(source.config).parameters) != ROPE_TYPE:
        return table
    plan = plan_for_config(source.config, where=source.where)
    same = (torch.equal(plan.inv_freq.float(), table.inv_freq.float())
            and (plan.original_max_position, plan.target_max_position)
            == (table.original_max_position, table.target_max_position)
            and math.isclose(plan.attention_factor, table.attention_factor, rel_tol=1e-12))
    if same:
        return ExportedTable.from_plan(plan, table.name)
    raise ExportError(f"{source.where} records the DPRoPE plan it was trained with "
                      f"({plan.original_max_position} -> {plan.target_max_position}, attention factor "
                      f"{plan.attention_factor:.4g}); --from-compare would replace it with table "
                      f"{table.name!r} ({table.original_max_position} -> {table.target_max_position}, "
                      f"attention factor {table.attention_factor:.4g}); export the recorded plan (drop "
                      "--from-compare)")
