"""The entries of the four run sections (pretrain:, generations:, teachers:, distill:), each
on its own: a run name, a registered method of the section's role (or `import`, read and
checked against its architecture), its keys and types; a generation's parent defined above
it; a distillation run's teacher among teachers: and paired with it (`check_pair`). Every
name is new. -> the checked sections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from bowflow.paramcheck.backbones import run_architecture
from bowflow.paramcheck.runs import ROLE_OF_SECTION, methods_of
from bowflow.paramcheck.schema import check_run_name, check_section, did_you_mean, keyed
from bowflow.roles.base import get_method
from bowflow.sections import ParamsError, VocabParams
from bowflow.weights import IMPORT, IMPORT_SECTIONS, ImportParams, check_teacher, read_import

if TYPE_CHECKING:
    from bowflow.roles.distiller import Distiller

GENERATION_KEYS = ["parent", "student", "vocab"]


def check_pretrain(pretrain: Any) -> dict:
    """Each entry of `pretrain:` is a named run: a method and its parameters."""
    if not isinstance(pretrain, dict) or not pretrain:
        raise ParamsError("pretrain: expected a non-empty mapping run name -> {method: ..., ...}")
    checked = {}
    for name, section in pretrain.items():
        check_run_name(name, f"pretrain.{name}")
        where = f"pretrain.{name}"
        params_cls = method_params(section, where)
        check_role(section["method"], "pretrain", where)
        checked[name] = check_import(check_section(params_cls, section, where), "pretrain", where)
    return checked


def check_generations(generations: Any, pretrain: dict) -> dict:
    """Every generation names an existing parent: a pretrain run or a generation defined
    above it (so the chain has no cycle), and no name is used twice."""
    if not isinstance(generations, dict):
        raise ParamsError("generations: expected a mapping name -> {parent, vocab, student} ({} for none)")
    checked, known = {}, set(pretrain)
    for name, item in generations.items():
        where = f"generations.{name}"
        check_run_name(name, where)
        if name in pretrain:
            raise ParamsError(f"{where}: '{name}' is already a pretrain run's name; pick another")
        if not isinstance(item, dict) or set(item) != set(GENERATION_KEYS):
            if isinstance(item, dict) and set(item) - set(GENERATION_KEYS):
                extra = sorted(set(item) - set(GENERATION_KEYS), key=str)[0]
                raise ParamsError(
                    f"{where}.{extra}: unknown key"
                    f"{did_you_mean(extra, GENERATION_KEYS)} (expected "
                    f"exactly the keys {GENERATION_KEYS})"
                )
            got = sorted(item, key=str) if isinstance(item, dict) else item
            raise ParamsError(f"{where}: expected exactly the keys {GENERATION_KEYS}, got {got}")
        parent = item["parent"]
        if not isinstance(parent, str):
            raise ParamsError(f"{where}.parent: expected the name of one run (str), got {parent!r}")
        if parent == name:
            raise ParamsError(
                f"{where}.parent: a generation cannot be its own parent "
                f"(expected a pretrain run or a generation defined above '{name}')"
            )
        if parent not in known:
            raise ParamsError(
                f"{where}.parent: '{parent}' is not a pretrain run or a "
                f"generation defined above it (known: {sorted(known)})" + parent_cycle(generations, name)
            )
        vocab = check_section(VocabParams, item["vocab"], f"{where}.vocab")
        student_cls = method_params(item["student"], f"{where}.student")
        check_role(item["student"]["method"], "generations", f"{where}.student")
        student = check_section(student_cls, item["student"], f"{where}.student")
        checked[name] = {"parent": parent, "vocab": vocab, "student": student}
        known.add(name)
    return checked


def parent_cycle(generations: dict, start: str) -> str:
    """Why `start`'s parent is not known yet: '; the parents form a cycle a -> b -> a' when
    following parents loops back, '; move 'b' above 'a'' when the parent is defined below."""
    chain, name = [start], start
    while True:
        item = generations.get(name)
        parent = item.get("parent") if isinstance(item, dict) else None
        if not isinstance(parent, str) or parent not in generations:
            later = generations[start].get("parent")
            return f"; move '{later}' above '{start}'" if later in generations else ""
        chain.append(parent)
        if parent in chain[:-1]:
            return f"; the parents form a cycle {' -> '.join(chain[chain.index(parent) :])}"
        name = parent


def check_supervised(teachers: Any, distill: Any, taken: set[str]) -> tuple[dict, dict]:
    """`teachers:` entries train from labels alone (method `supervised`); each `distill:`
    entry names a distillation method and a `teacher` from `teachers:`. Every name is new
    (run names share data/models/). -> (checked teachers, checked distill runs)."""
    checked: list[dict] = []
    for section, entries in (("teachers", teachers), ("distill", distill)):
        if not isinstance(entries, dict):
            raise ParamsError(f"{section}: expected a mapping run name -> {{method: ..., ...}} ({{}} for none)")
        runs = {}
        for name, values in entries.items():
            where = f"{section}.{name}"
            check_run_name(name, where)
            if name in taken:
                raise ParamsError(f"{where}: '{name}' is already the name of another run; pick another")
            params_cls = method_params(values, where)
            cls = None if values["method"] == IMPORT else get_method(values["method"])
            check_role(values["method"], section, where)
            run = check_import(check_section(params_cls, values, where), section, where)
            network = run_architecture(run, where)
            if section == "distill":
                if run.teacher not in checked[0]:
                    raise ParamsError(
                        f"{where}.teacher: {run.teacher!r} is not an entry of teachers: (known: {sorted(checked[0])})"
                    )
                teacher = checked[0][run.teacher]
                try:
                    distiller = cast("type[Distiller]", cls)  # check_role: a distill: entry is a distiller
                    distiller.check_pair(run, network, run_architecture(teacher, f"teachers.{run.teacher}"))
                except ValueError as error:
                    raise ParamsError(
                        keyed(where, str(error), params_cls) + f" (teacher '{run.teacher}': {teacher.arch})"
                    ) from None
            runs[name] = run
            taken.add(name)
        checked.append(runs)
    return checked[0], checked[1]


def method_params(section: Any, where: str) -> type:
    """The Params dataclass of the entry's `method:` (ImportParams for `import`)."""
    if not isinstance(section, dict) or "method" not in section:
        raise ParamsError(f"{where}.method: missing (expected a registered method name)")
    if section["method"] == IMPORT:
        return ImportParams
    try:
        return get_method(section["method"]).Params
    except ValueError as error:
        raise ParamsError(f"{where}.method: {error}") from None


def check_role(method: str, section: str, where: str) -> None:
    """The method's role must be the one `section` runs (its stage gives only that role's
    inputs): ParamsError naming `where`.method otherwise. `import` (a weights file as a run)
    belongs in pretrain: and teachers:."""
    if method == IMPORT:
        if section not in IMPORT_SECTIONS:
            raise ParamsError(
                f"{where}.method: 'import' (a weights file as a run) belongs in "
                f"{' or '.join(s + ':' for s in IMPORT_SECTIONS)}, not in {section}:"
            )
        return
    cls = get_method(method)
    if cls.section != section:
        raise ParamsError(
            f"{where}.method: '{method}' is {ROLE_OF_SECTION.get(cls.section, cls.role)}, "
            f"so its runs belong in {cls.section}:; an entry of {section}: must be "
            f"{ROLE_OF_SECTION[section]}: one of {methods_of(section)}"
        )


def check_import(run: Any, section: str, where: str) -> Any:
    """An imported run (`method: import`, bowflow/weights.py): its file read and checked
    against its architecture (a missing key, an unexpected one, a shape: ParamsError naming
    `where`.weights, the file and the key); -> the run with a bowflow file's own arch, width,
    depth and arch_params. Any other run is returned as it is."""
    if not isinstance(run, ImportParams):
        return run
    try:
        imported = read_import(run)
        if section == "teachers":
            check_teacher(imported, run.weights)
    except ValueError as error:
        first = str(error).split(" ", 1)[0].rstrip(":")
        key = first if first in ("arch", "width", "depth", "arch_params") else "weights"
        raise ParamsError(f"{where}.{key}: {error}") from None
    return imported.params
