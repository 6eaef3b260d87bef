"""Tests and benchmarks do not import each other.

A test checks a benchmark by running it (`python -m benchmarks.NAME`, tests/benchmark_cli.py);
what both need lives in the library (e.g. bowflow/scaffold.py lays out project folders,
bowflow/budget.py is the peer benchmark's time budget). Imports are read with `ast`, at
module level and inside functions alike: `import X`, `from X import Y`,
`importlib.import_module("X")`, `__import__("X")`, and `sys.path.insert/append(...)` of the
other folder (which would let a bare `import name` reach its files).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS, BENCHMARKS = ROOT / "tests", ROOT / "benchmarks"


def module_names(folder: Path) -> set[str]:
    """What `import NAME` reaches in `folder`: its package name and, for code that puts the
    folder on sys.path, the bare names of its modules."""
    return {folder.name} | {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}


def imported(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, module) for every module the source imports (absolute imports; a relative
    import is reported as '.NAME')."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = ast.unparse(node.func)
            if func in ("importlib.import_module", "import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def path_edits(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, source of the call) for every sys.path.insert/append/extend call."""
    return [(node.lineno, ast.unparse(node)) for node in ast.walk(ast.parse(source, filename))
            if isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("sys.path.insert", "sys.path.append", "sys.path.extend")]


def violations(name: str, source: str, other: Path) -> list[str]:
    """'name:line: reason' for each way `source` (the file `name`) imports from the folder `other`."""
    modules = module_names(other)
    out = [f"{name}:{line}: imports {module} from {other.name}/"
           for line, module in imported(source, name) if module.split(".")[0] in modules]
    out += [f"{name}:{line}: puts {other.name}/ on sys.path: {call}"
            for line, call in path_edits(source, name)
            if f'"{other.name}"' in call or f"'{other.name}'" in call or f"/{other.name}" in call]
    return out


def folder_violations(folder: Path, other: Path) -> list[str]:
    return [v for path in sorted(folder.rglob("*.py"))
            for v in violations(str(path.relative_to(ROOT)), path.read_text(), other)]


def test_no_test_imports_a_benchmark():
    found = folder_violations(TESTS, BENCHMARKS)
    assert not found, "a test imports a benchmark (run it as `python -m benchmarks.NAME` instead):\n" \
        + "\n".join(found)


def test_no_benchmark_imports_a_test():
    found = folder_violations(BENCHMARKS, TESTS)
    assert not found, "a benchmark imports a test module (move what it needs into bowflow/):\n" \
        + "\n".join(found)


def test_the_rule_sees_every_kind_of_import():
    """The checker itself: each way of importing from the other folder is reported, naming
    the file and line; running a benchmark as a subprocess is not an import."""
    source = "\n".join([
        "import subprocess, sys",
        "from benchmarks import bench_peer",
        "def f():",
        "    import benchmarks.bench_faults as bf",
        "    from bench_vocab import main",
        "    importlib.import_module('benchmarks.records')",
        "    sys.path.insert(0, str(ROOT / 'benchmarks'))",
        "    subprocess.run([sys.executable, '-m', 'benchmarks.records'])",
        "from bowflow.scaffold import make_project"])
    found = violations("tests/test_x.py", source, BENCHMARKS)
    assert [v.split(": ")[0] for v in found] == [f"tests/test_x.py:{n}" for n in (2, 4, 5, 6, 7)], found
    assert violations("benchmarks/x.py", "from synthetic_shapes import make_shapes\nimport tests.tiny", TESTS) \
        == ["benchmarks/x.py:1: imports synthetic_shapes from tests/", "benchmarks/x.py:2: imports tests.tiny from tests/"]
