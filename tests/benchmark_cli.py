"""Run a benchmark as a person does, `python -m benchmarks.NAME ARGS` from the project root,
and read its `RESULT {json}` line. Tests check benchmarks only this way: no test imports a
benchmark module (tests/test_import_rules.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(
    name: str, *args, env: dict | None = None, check: bool = True, timeout: float | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python -m benchmarks.<name> *args` in the project root (cwd `cwd` if given), with
    os.environ updated by `env` (a None value removes the variable); fails showing its
    output's tail when `check` and it exits non-zero."""
    environ = {**os.environ, **(env or {})}
    environ = {k: v for k, v in environ.items() if v is not None}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *map(str, args)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"benchmarks.{name} {' '.join(map(str, args))} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def result_line(result: subprocess.CompletedProcess) -> dict:
    """The JSON of the last `RESULT ` line of a benchmark's output (its last line)."""
    lines = result.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("RESULT "), result.stdout[-2000:]
    return json.loads(lines[-1][len("RESULT ") :])


def benchmark_result(name: str, *args, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run the benchmark (it must exit 0) and return its RESULT."""
    return result_line(run_benchmark(name, *args, env=env, cwd=cwd))


def imports(path: Path) -> set[str]:
    """The modules a script imports (ast, at any depth) outside the standard library: what a
    peer runner needs in its throw-away env."""
    import ast

    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module)
    return {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names}
