"""Import rules: tests and benchmarks do not import each other; bowflow/ has no import cycle.

A test checks a benchmark by running it (`python -m benchmarks.NAME`, tests/benchmark_cli.py);
what both need lives in the library (e.g. bowflow/scaffold.py lays out project folders,
bowflow/budget.py is the peer benchmark's time budget). Imports are read with `ast`, at
module level and inside functions alike: `import X`, `from X import Y`,
`importlib.import_module("X")`, `__import__("X")`, and `sys.path.insert/append(...)` of the
other folder (which would let a bare `import name` reach its files).

The modules of bowflow/ import each other as a tree (a directed acyclic graph): a cycle
(networks.py and vit.py once registered through each other) makes what a module holds
depend on which of the two was imported first. Imports inside functions count: a lazy
import that closes a cycle is still one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS, BENCHMARKS, PACKAGE = ROOT / "tests", ROOT / "benchmarks", ROOT / "bowflow"


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
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = ast.unparse(node.func)
            if func in ("importlib.import_module", "import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def path_edits(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, source of the call) for every sys.path.insert/append/extend call."""
    return [
        (node.lineno, ast.unparse(node))
        for node in ast.walk(ast.parse(source, filename))
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) in ("sys.path.insert", "sys.path.append", "sys.path.extend")
    ]


def violations(name: str, source: str, other: Path) -> list[str]:
    """'name:line: reason' for each way `source` (the file `name`) imports from the folder `other`."""
    modules = module_names(other)
    out = [
        f"{name}:{line}: imports {module} from {other.name}/"
        for line, module in imported(source, name)
        if module.split(".")[0] in modules
    ]
    out += [
        f"{name}:{line}: puts {other.name}/ on sys.path: {call}"
        for line, call in path_edits(source, name)
        if f'"{other.name}"' in call or f"'{other.name}'" in call or f"/{other.name}" in call
    ]
    return out


def folder_violations(folder: Path, other: Path) -> list[str]:
    return [
        v
        for path in sorted(folder.rglob("*.py"))
        for v in violations(str(path.relative_to(ROOT)), path.read_text(), other)
    ]


def test_no_test_imports_a_benchmark():
    found = folder_violations(TESTS, BENCHMARKS)
    assert not found, "a test imports a benchmark (run it as `python -m benchmarks.NAME` instead):\n" + "\n".join(found)


def test_no_benchmark_imports_a_test():
    found = folder_violations(BENCHMARKS, TESTS)
    assert not found, "a benchmark imports a test module (move what it needs into bowflow/):\n" + "\n".join(found)


def test_the_rule_sees_every_kind_of_import():
    """The checker itself: each way of importing from the other folder is reported, naming
    the file and line; running a benchmark as a subprocess is not an import."""
    source = "\n".join(
        [
            "import subprocess, sys",
            "from benchmarks import bench_peer",
            "def f():",
            "    import benchmarks.bench_faults as bf",
            "    from bench_vocab import main",
            "    importlib.import_module('benchmarks.records')",
            "    sys.path.insert(0, str(ROOT / 'benchmarks'))",
            "    subprocess.run([sys.executable, '-m', 'benchmarks.records'])",
            "from bowflow.scaffold import make_project",
        ]
    )
    found = violations("tests/test_x.py", source, BENCHMARKS)
    assert [v.split(": ")[0] for v in found] == [f"tests/test_x.py:{n}" for n in (2, 4, 5, 6, 7)], found
    assert violations("benchmarks/x.py", "from synthetic_shapes import make_shapes\nimport tests.tiny", TESTS) == [
        "benchmarks/x.py:1: imports synthetic_shapes from tests/",
        "benchmarks/x.py:2: imports tests.tiny from tests/",
    ]


def package_modules(package: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of `package` ('bowflow.networks',
    'bowflow.methods' for bowflow/methods/__init__.py)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(source: str, module: str, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that the source of `module` imports, at module level or in
    functions: `import a.b` -> a.b; `from a import b` -> a.b if b is a submodule, else a;
    relative imports made absolute; import_module / __import__ of a constant string. A name
    resolves to its longest prefix that is a module; the module itself is left out."""

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            found |= {resolve(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else resolve(base) for alias in node.names
            }
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")
        ):
            found.add(resolve(node.args[0].value))
    return found - {"", module}


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (`imported_modules`)."""
    modules = package_modules(package)
    return {name: imported_modules(path.read_text(), name, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles [a, b, ..., a]: for each module, in sorted order, that is on a cycle
    and on none reported yet, a shortest cycle through it. Empty when the modules import
    each other as a tree."""
    cycles, done = [], set()
    for start in sorted(graph):
        if start in done:
            continue
        # a shortest path back to `start`, breadth first over the sorted edges
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            for nxt in sorted(graph[path[-1]]):
                if nxt == start:
                    cycles.append(path + [start])
                    done |= set(path)
                    paths = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    paths.append(path + [nxt])
        done.add(start)
    return cycles


def test_bowflow_modules_import_each_other_as_a_tree():
    cycles = import_cycles(import_graph(PACKAGE))
    assert not cycles, (
        "bowflow modules import each other in a cycle (move what both need into "
        "a module that imports neither):\n" + "\n".join(" -> ".join(c) for c in cycles)
    )


def test_the_cycle_rule_sees_lazy_relative_and_submodule_imports(tmp_path):
    """The checker itself, on a throw-away package: a cycle closed by an import inside a
    function, a relative import and `from package import module` are all found; a tree
    (a registry importing its architectures, which import a shared base) is not a cycle."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "base.py": "import torch\n",
        "arch.py": "from pkg.base import Base\n",
        "registry.py": "from pkg import arch, base\nfrom .sub import deep\n",
        "sub/__init__.py": "",
        "sub/deep.py": "from .. import base\n",
    }
    for name, source in files.items():
        (package / name).write_text(source)
    graph = import_graph(package)
    assert graph == {
        "pkg": set(),
        "pkg.base": set(),
        "pkg.arch": {"pkg.base"},
        "pkg.registry": {"pkg.arch", "pkg.base", "pkg.sub.deep"},
        "pkg.sub": set(),
        "pkg.sub.deep": {"pkg.base"},
    }, graph
    assert import_cycles(graph) == []
    (package / "base.py").write_text("def build():\n    from pkg.registry import X\n")
    (package / "sub/deep.py").write_text("import importlib\nimportlib.import_module('pkg.arch')\n")
    (package / "arch.py").write_text("from . import base\nfrom pkg.sub import deep\n")
    assert import_cycles(import_graph(package)) == [
        ["pkg.arch", "pkg.sub.deep", "pkg.arch"],
        ["pkg.base", "pkg.registry", "pkg.base"],
    ]
