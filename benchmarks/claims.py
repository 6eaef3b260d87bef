"""A record's claims as data: the sentence fragments that the prose beside its tables must
hold, declared in `docs/results/<record>/claims.yaml`, rendered and checked generically.

    let:                                                    # names for the claims below
      best: "max(distill_methods(), key=top1)"
    claims:
      - "+{gap('g1', 'g0', '1-shot')|.1f} (1-shot)"          # a figure, rendered from the record
      - text: "RKD is below it at every seed ({seed_row('RKD').margin|+.2f} on average)"
        holds: "seed_row('RKD').margin_max < 0"             # and a verdict, checked

A claim is text with `{expression}` or `{expression|format spec}` fields. Each expression is
Python evaluated in `ClaimValues(record).names()`: a few functions that read the record
(accuracies, gaps, wall-time minutes, distillation top-1, seed-study rows; listed in that
class), the names of `let:` (each an expression, evaluated in order), `join` and the builtins
`len min max sorted abs round all any`. A claim with `holds:` is a
difference when that expression is false: a verdict in the prose ("below it at every seed")
is then checked, not only the figure beside it. Changing a sentence means editing its
record's claims.yaml, never code.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import yaml

from benchmarks.distill_seeds import spread
from bowflow import report

FIELD = re.compile(r"\{([^{}|]+)(?:\|([^{}]*))?\}")
BUILTINS = {"len": len, "min": min, "max": max, "sorted": sorted, "abs": abs, "round": round,
            "all": all, "any": any}
# Rows of a seed study measured before their method changed: its table shows them (marked
# stale in its prose), no claim rests on them. distill-cpu-seeds: CC, NST and FitNet were
# matched to the benchmark's code (commit ee785ab) after their seeds 1 and 2 were trained.
STALE_SEED_ROWS = {"distill-cpu-seeds": {"distill@cc", "distill@nst", "distill@fitnet"}}


def join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def fmt1(x: float) -> str:
    return f"{x:.1f}"


class ClaimValues:
    """What a claim may read of one record (a folder of docs/results/)."""

    def __init__(self, record: Path):
        self.record = record

    def names(self) -> dict:
        functions = ("minutes acc gap run captured below_control controls arch runs_of_arch parents "
                     "top1 distill_methods seed_rows seed_row vanilla extra_runs extra_minutes")
        return {**BUILTINS, "join": join, **{f: getattr(self, f) for f in functions.split()}}

    # ---------------------------------------------------------------- every pipeline record
    def minutes(self) -> float:
        """The stages' own wall times (metrics' wall_seconds), summed, in minutes."""
        return sum(s for _, s in report.stage_times(self.record / "metrics")) / 60

    # ------------------------------------------------------ one-seed generation/family records
    @cache  # noqa: B019  (one instance per record and check: the record's files are read once)
    def _lineage(self) -> dict[str, dict]:
        from benchmarks.records import lineage
        return {r["name"]: r for r in lineage(self.record)}

    def run(self, name: str) -> dict:
        """A run's evaluation record (bowflow.report.load_lineage): 'parameters', 'train'..."""
        return self._lineage()[name]

    def acc(self, name: str, column: str) -> float:
        """A run's accuracy (%) in a column: 'linear', 'k-NN' or 'N-shot'."""
        return self._columns()[column](self.run(name))

    @cache  # noqa: B019
    def _columns(self) -> dict:
        from benchmarks.records import accuracy_columns
        return accuracy_columns(self.record)

    def gap(self, a: str, b: str, column: str) -> float:
        return self.acc(a, column) - self.acc(b, column)

    def captured(self, name: str) -> float:
        """The fraction of the learnable BoW loss a student captured at its last epoch."""
        return report.read_curve(self.record / "plots" / "train" / f"{name}.csv")[-1]["captured"]

    def controls(self) -> list[str]:
        return [n for n, r in self._lineage().items() if r["method"] == "random_init"]

    def arch(self, name: str) -> str:
        return report.arch_label(self.run(name)["train"])

    def runs_of_arch(self, arch: str) -> list[str]:
        return [n for n in self._lineage() if self.arch(n) == arch]

    def parents(self) -> list[tuple[str, str]]:
        """(run, parent) of every run whose parent is in the record (BoWNet generations)."""
        lineage = self._lineage()
        return [(n, r["parent"]) for n, r in lineage.items() if r.get("parent") in lineage]

    def below_control(self, control: str, among: list[str] | None = None) -> str:
        """'every trained method beats the untrained control on ...; on k-NN X (40.2) is
        below it (41.0)': the runs `among` (default: all but the control) at or below the
        control, column by column."""
        lineage, value = self._lineage(), self._columns()
        trained = [lineage[n] for n in (among if among is not None else lineage) if n != control]
        base = lineage[control]
        below = {c: [r for r in trained if round(f(r), 1) <= round(f(base), 1)] for c, f in value.items()}
        if not any(below.values()):
            return "every trained method beats the untrained control on every column"
        text = "every trained method beats the untrained control on " + join([c for c, rs in below.items() if not rs])
        for c, rs in below.items():
            if rs:
                tie = any(round(value[c](r), 1) == round(value[c](base), 1) for r in rs)
                text += (f"; on {c} " + join([f"{r['label']} ({fmt1(value[c](r))})" for r in rs])
                         + f" {'is' if len(rs) == 1 else 'are'} {'at or ' if tie else ''}below it "
                         f"({fmt1(value[c](base))})")
        return text

    # ------------------------------------------------------------------ distillation records
    @cache  # noqa: B019
    def _distill(self):
        from benchmarks.records import distill_pair
        teacher, student, columns, labels, runs = distill_pair(self.record)
        return {label: float(columns["Top-1 accuracy (%)"][label]) for label in labels}, labels

    def top1(self, label: str) -> float:
        """A row's top-1 (%): 'Teacher (vanilla)', 'Student (vanilla)' or a method's label."""
        return self._distill()[0][label]

    def distill_methods(self) -> list[str]:
        """The distilled rows' labels, in the table's order."""
        return self._distill()[1][2:]

    # -------------------------------------------------------------------- seed-study records
    @cache  # noqa: B019
    def _study(self):
        from benchmarks.records import seed_study
        seeds, top1, vanilla, metrics = seed_study(self.record)
        stale = STALE_SEED_ROWS.get(self.record.name, set())
        rows = [SimpleNamespace(**r, label=metrics[r["row"]]["method_label"]) for r in spread(top1, vanilla)]
        return seeds, vanilla, rows, stale

    def seed_rows(self) -> list[SimpleNamespace]:
        """The distilled students' rows that are not stale: label, mean, sd, margin (mean of
        the per-seed differences to the vanilla student), margin_min, margin_max."""
        _, vanilla, rows, stale = self._study()
        return [r for r in rows if r.row != vanilla and r.row not in stale]

    def seed_row(self, label: str) -> SimpleNamespace:
        return next(r for r in self.seed_rows() if r.label == label)

    def vanilla(self) -> SimpleNamespace:
        _, vanilla, rows, _ = self._study()
        return next(r for r in rows if r.row == vanilla)

    def extra_runs(self) -> int:
        """Trainings beyond seed 0: every row's (the vanilla student's too) other seeds."""
        seeds, _, rows, _ = self._study()
        return len(rows) * (len(seeds) - 1)

    def extra_minutes(self) -> float:
        from benchmarks.records import load_json
        return sum(load_json(p)["wall_seconds"] for p in (self.record / "seeds").glob("s*/*.json")) / 60


def evaluate(expression: str, names: dict):
    """An expression of a claims.yaml (our own documents) with `names` as its only globals,
    so comprehensions and lambdas see them too."""
    return eval(expression, {"__builtins__": {}, **names})  # noqa: S307


def render(text: str, names: dict) -> str:
    """`text` with every {expression} or {expression|spec} field evaluated and formatted."""
    return FIELD.sub(lambda m: format(evaluate(m.group(1), names), m.group(2) or ""), text)


def load(record: Path) -> tuple[dict[str, str], list[dict]]:
    """A record's claims.yaml as ({name: expression} of `let:`, [{'text': ..., 'holds': ...}]);
    empty when it has none."""
    path = record / "claims.yaml"
    data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    claims = [{"text": e, "holds": None} if isinstance(e, str) else {"text": e["text"], "holds": e.get("holds")}
              for e in data.get("claims", [])]
    return data.get("let", {}), claims


def rendered(record: Path) -> tuple[list[str], list[str]]:
    """(the claims' text as the record gives it, a difference for each verdict that fails)."""
    let, claims = load(record)
    names = ClaimValues(record).names()
    for name, expression in let.items():
        names[name] = evaluate(expression, names)
    texts, failed = [], []
    for claim in claims:
        text = render(claim["text"], names)
        texts.append(text)
        if claim["holds"] and not evaluate(claim["holds"], names):
            failed.append(f"{record.name}/claims.yaml: '{text}' does not hold: {claim['holds']} is false")
    return texts, failed
