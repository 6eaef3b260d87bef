"""The project's Python files a command runs: the static import closure of a module.

Used by workflow/pipeline.py to list each stage's code as DVC dependencies, and by
tests/test_code_deps.py to prove that every pipeline stage declares, as DVC
dependencies, every file of code it executes, so that no code edit leaves a cached output
stale. Imports are read with `ast` (module level and inside functions alike), following
only the project's own packages (`bowflow`, `stages`); importing a submodule also runs
its packages' `__init__.py`. Method modules load lazily by name (`get_method`), so a
training stage adds `bowflow/methods/<method>.py` and its closure itself.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bowflow", "stages")


def module_file(module: str) -> Path | None:
    """'bowflow.roles.base' -> bowflow/roles/base.py (or the package's __init__.py)."""
    path = ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _with_packages(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def direct_imports(path: Path) -> frozenset[str]:
    """Project modules imported anywhere in the file at `path`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.update(m for m in _with_packages(name) if module_file(m))
    return frozenset(found)


def closure(module: str) -> set[str]:
    """Repository-relative paths of every project file that `python -m module` runs."""
    seen: set[str] = set()
    todo = _with_packages(module)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or str(path.relative_to(ROOT)) in seen:
            continue
        seen.add(str(path.relative_to(ROOT)))
        todo.extend(direct_imports(path))
    return seen
