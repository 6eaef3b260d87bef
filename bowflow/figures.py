"""Figures quoted in prose, each re-derived from its record.

A results table is checked cell by cell (benchmarks.records); a figure in a sentence
("the stages took **9.1 min**", "1,346 train images") is checked when an HTML comment right
after it names its record and how to derive it:

    **9.1 min**<!-- = docs/results/distill-digits minutes metrics/**/*.json -->
    1,346<!-- = docs/results/distill-digits field train_images metrics/train/*.json --> train

The text before the comment on its line (`**`, `_` and backticks dropped) must end with the
derived figure. Quantities (PATTERN: a glob under the record, `**` recursive):

    minutes PATTERN...       sum of `wall_seconds` of the matched JSON files, "9.1 min"
    count PATTERN...         how many files match, "28"
    field KEY PATTERN...     the one value of KEY in every matched file, "1,346"
    range KEY PATTERN...     "min-max" of KEY over the files, rounded to whole units, "90-396"

Any quantity takes `-NAME` arguments: leave out the files named NAME.json.

    python -m bowflow.figures check       # exit 1 and list every figure that differs

benchmarks.records runs this check with its own (`python -m benchmarks.records check`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = (
    "README.md",
    "docs/BENCHMARKS.md",
    "docs/ARCHITECTURE.md",
    "docs/precision.md",
    "docs/fidelity/self_supervised.md",
    "docs/fidelity/distillation.md",
)
RECORD_READMES = "docs/results/*/README.md"  # each record's own page: how it was made


def documents(root: Path = ROOT, names: tuple[str, ...] = DOCS) -> list[str]:
    """The published documents under `root`, as paths relative to it: `names` that exist,
    then every record's README.md."""
    found = [n for n in names if (root / n).exists()]
    return found + sorted(str(p.relative_to(root)) for p in root.glob(RECORD_READMES))


FIGURE = re.compile(r"<!--\s*=\s*(?P<record>\S+)\s+(?P<quantity>[\w-]+)\s*(?P<args>[^>]*?)\s*-->")


def matched(record: Path, patterns: list[str], leave_out: frozenset[str] | set[str] = frozenset()) -> list[dict]:
    """The JSON files of a record matching any of `patterns`, sorted by path, without the
    files whose stem is in `leave_out`. A pattern matching nothing is an error."""
    files: set[Path] = set()
    for pattern in patterns:
        found = set(record.glob(pattern))
        if not found:
            raise ValueError(f"no file of {record} matches {pattern!r}")
        files |= found
    return [json.loads(p.read_text()) for p in sorted(files) if p.stem not in leave_out]


def number(x: float) -> str:
    """An integral value with thousands separators ("1,346"), anything else as written."""
    return f"{int(x):,}" if float(x).is_integer() else str(x)


def derive(record: Path, quantity: str, args: list[str]) -> str:
    """The figure `quantity` (see the module docstring) of `record`, as text."""
    leave_out = {a[1:] for a in args if a.startswith("-")}
    args = [a for a in args if not a.startswith("-")]
    if quantity in ("field", "range"):
        key, args = args[0], args[1:]
    files = matched(record, args, leave_out)
    if quantity == "minutes":
        return f"{sum(d['wall_seconds'] for d in files) / 60:.1f} min"
    if quantity == "count":
        return str(len(files))
    if quantity == "field":
        values = {json.dumps(d[key]) for d in files}
        if len(values) != 1:
            raise ValueError(f"{key} is not one value in {args}: {sorted(values)}")
        return number(json.loads(values.pop()))
    if quantity == "range":
        numbers = [d[key] for d in files]
        return f"{min(numbers):,.0f}-{max(numbers):,.0f}"
    raise ValueError(f"unknown quantity {quantity!r} (minutes, count, field, range)")


def plain(text: str) -> str:
    """Prose as compared: emphasis and code marks dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[*_`]", "", text).split())


def check_text(text: str, where: str, root: Path) -> list[str]:
    """Every figure marker of a Markdown text against its record: one line per difference."""
    out = []
    for number_, line in enumerate(text.splitlines(), 1):
        for m in FIGURE.finditer(line):
            record = root / m.group("record")
            try:
                expected = derive(record, m.group("quantity"), m.group("args").split())
            except (ValueError, KeyError, OSError) as err:
                out.append(f"{where}:{number_}: {m.group(0)}: {err}")
                continue
            before = plain(FIGURE.sub("", line[: m.start()]))
            if not before.endswith(expected):
                found = before[-len(expected) - 8 :]
                out.append(
                    f"{where}:{number_}: {m.group('record')} {m.group('quantity')} "
                    f"is {expected!r}; the text before its marker ends '...{found}'"
                )
    return out


def check(root: Path = ROOT) -> list[str]:
    """Every figure marker of the published documents."""
    out = []
    for name in documents(root):
        out += check_text((root / name).read_text(), name, root)
    return out


def count(root: Path = ROOT) -> int:
    """How many figure markers the published documents hold."""
    return sum(len(FIGURE.findall((root / n).read_text())) for n in documents(root))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check"])
    parser.parse_args(argv)
    problems = check()
    for p in problems:
        print(p)
    print(f"{count()} figures checked, {len(problems)} differ")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
