"""What every part of the data code shares, and all of it that config needs besides the
folder scan (`bowflow.data.scan`): source names, the data errors, the report's warnings.

    SOURCES            the sources `bowflow.data.sources.load_source` serves (config
                       validates data.source against this tuple)
    DIGITS_CLASSES     the digits source's class names, "0" .. "9"
    TARBALL_SUFFIXES   the endings that make an imagefolder root a tarball

Bad input (a root that is missing or not a folder/tarball, a corrupt tarball, too few
classes, unknown novel classes, too many unreadable files...) raises `DataError`, whose
message names the parameter (`data.root`, `data.novel_classes`, ...) or the file and what
was expected; `stages.prepare` prints it as one line, without a traceback. What a loader
can carry on past is recorded in its report by `warn` (and printed to stderr).
"""

from __future__ import annotations

import numbers
import sys
from typing import Any

SOURCES = ("digits", "imagefolder", "cifar10", "cifar100", "svhn", "stl10")  # the one list; config imports it
DIGITS_CLASSES = [str(i) for i in range(10)]
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class DataError(ValueError):
    """Bad data or data parameters; the message names the key or file and what was expected."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data root (or the files a source needs) does not exist."""


def check_fraction(name: str, value: Any, open_interval: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        ok = 0 < value < 1 if open_interval else 0 <= value <= 1
    if not ok:
        bounds = "strictly between 0 and 1" if open_interval else "between 0 and 1"
        raise DataError(f"data.{name}: expected a number {bounds}, got {value!r}")


def warn(report: dict[str, Any], message: str) -> None:
    """Record a warning in the report and print it to stderr (unless report["quiet"])."""
    report["warnings"].append(message)
    if not report.get("quiet"):
        print(f"warning: {message}", file=sys.stderr)
