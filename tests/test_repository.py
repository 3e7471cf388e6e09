"""The repository carries everything its tests and code read: nothing outside the checkout."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIBLING = "sha" + "red"  # spelled in pieces, so this guard does not match itself in a text search
OUTSIDE = re.compile(rf"\.\./{SIBLING}|parent\s*/\s*[\"']{SIBLING}[\"']|DPROPE_{SIBLING.upper()}")


def test_no_file_reads_a_sibling_shared_directory():
    offenders = []
    for folder in ("dprope_kernels", "tests", "examples", "benchmarks", ".ci"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".sh", ""} and path != Path(__file__):
                if OUTSIDE.search(path.read_text(errors="ignore")):
                    offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"these files refer to a directory outside the repository: {offenders}"


def test_reference_fixture_is_in_the_repository(reference_data):
    assert reference_data["selections_from_public_code"][0]["target_max_position"] == 8192
    assert reference_data["table3_paper"]["16k"]["DPRoPE"] == 22.92
