"""The docs cite our code by line (`bowflow/train.py:150-154`); those numbers drift when code
moves (a reformat, an edit above the cited lines) and nothing else notices. This catches the
obvious drift: every such reference in README.md and docs/**/*.md names an existing file,
lines within it, and a first line (each line of a comma list) that is not blank. Whether the
line is still the code the sentence describes is left to the reader."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REF = re.compile(r"((?:bowflow|stages|benchmarks|workflow|tests)/[a-z_/0-9]+\.py):(\d+)(?:-(\d+))?((?:,\d+)*)")


def doc_refs() -> list[tuple[str, str, int, int, list[int]]]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    refs = []
    for doc in docs:
        for m in REF.finditer(doc.read_text()):
            first = int(m[2])
            extra = [int(n) for n in m[4].split(",")[1:]]
            refs.append((f"{doc.relative_to(ROOT)}: {m[0]}", m[1], first, int(m[3] or first), extra))
    return refs


def test_refs_found():
    assert len(doc_refs()) >= 30  # the pattern still matches the docs' way of citing


@pytest.mark.parametrize("where, path, first, last, extra", [pytest.param(*r, id=r[0]) for r in doc_refs()])
def test_doc_line_ref(where, path, first, last, extra):
    source = ROOT / path
    assert source.is_file(), f"{where}: no file {path}"
    lines = source.read_text().splitlines()
    assert 1 <= first <= last <= len(lines), f"{where}: {path} has {len(lines)} lines"
    for n in [first, *extra]:
        assert 1 <= n <= len(lines), f"{where}: {path} has {len(lines)} lines"
        assert lines[n - 1].strip(), f"{where}: line {n} is blank (the number drifted)"
