"""Bad input, one table: every way a user's image folder or params.yaml can be wrong.

Each row builds a bad input in a temporary folder and runs the entry point a user runs:

    python -m bowflow.config <params.yaml> --manifest ...        (the check_params stage)
    python -m stages.prepare --out ... --seed 0 --source imagefolder --root ... ...
    python -m stages.pretrain ... --device cuda                   (the first stage using a device)

and expects one of two outcomes:

    Fails(phrases)   exit code != 0, no "Traceback" on stderr, and one stderr line holding
                     every phrase (the file or key, and what was expected); a failing
                     `prepare` writes no output, and `before_decode` rows stop before any
                     image is decoded;
    Prepared(...)    exit code 0, the skipped files listed by name in
                     data/prepared/manifest.json and the dataset right (classes, counts,
                     and pixels where the row checks them).

Speed: starting a fresh interpreter costs ~5 s here (importing torch), too slow for ~80
rows on 2 cores. So each row runs in a child forked from this already-warm interpreter,
which executes the module as `__main__` with the row's argv (`runpy`, as `python -m`
does), its own stdout/stderr files and exit code, and an uncaught exception printed as a
traceback exactly like the interpreter would. `test_fresh_interpreter` runs a few rows in
a real `python -m` subprocess to keep that honest; BOWFLOW_TEST_SUBPROCESS=1 runs every row
that way.
"""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import tarfile
import traceback
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import bowflow.config  # noqa: F401  (warm the parent: children fork with these imported)
import stages.prepare  # noqa: F401
import stages.pretrain  # noqa: F401
from bowflow.cli import render_args
from bowflow.sections import load_yaml

ROOT = Path(__file__).resolve().parent.parent
FRESH = os.environ.get("BOWFLOW_TEST_SUBPROCESS") == "1"
SIZE = 8  # image_size of every prepare row (the smallest allowed)
CLASSES = ("a", "b", "c", "d")  # the good tree: 4 classes x 3 images, novel = c, d
PER_CLASS = 3


# --------------------------------------------------------------------------------------
# Running an entry point


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    argv: list[str] = field(default_factory=list)


def run_entry(argv: list[str], tmp: Path, fresh: bool = FRESH) -> Result:
    """`python -m argv[0] argv[1:]` from the repository root, tarballs cached under tmp."""
    env = {"BOWFLOW_CACHE": str(tmp / "cache")}
    if fresh:
        done = subprocess.run(
            [sys.executable, "-m", *argv],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="backslashreplace",
            timeout=300,
        )
        return Result(done.returncode, done.stdout, done.stderr)
    return _run_forked(argv, tmp, env)


def _run_forked(argv: list[str], tmp: Path, env: dict[str, str]) -> Result:
    out_path, err_path = tmp / ".stdout", tmp / ".stderr"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: behave like `python -m`
        code = 1
        try:
            signal.alarm(300)  # a hung child must not hang the suite
            os.chdir(ROOT)
            os.environ.update(env)
            for fd, path in ((1, out_path), (2, err_path)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            sys.stdout = io.TextIOWrapper(
                open(1, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
            )
            sys.stderr = io.TextIOWrapper(
                open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
            )
            sys.argv = [argv[0], *argv[1:]]
            sys.modules.pop(argv[0], None)  # run it afresh as __main__, like -m
            try:
                runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exit_:  # as the interpreter handles it
                if exit_.code is None:
                    code = 0
                elif isinstance(exit_.code, int):
                    code = exit_.code
                else:
                    print(exit_.code, file=sys.stderr)
                    code = 1
            except BaseException:  # noqa: BLE001 - uncaught, as python prints it
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    read = lambda p: p.read_text(encoding="utf-8", errors="backslashreplace")  # noqa: E731
    return Result(os.waitstatus_to_exitcode(status), read(out_path), read(err_path))


# --------------------------------------------------------------------------------------
# Building inputs


def img(path: Path, mode: str = "RGB", size=(SIZE, SIZE), color=(200, 30, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def tree(root: Path, classes=CLASSES, per_class=PER_CLASS) -> Path:
    for k, name in enumerate(classes):
        for i in range(per_class):
            img(root / name / f"{i}.png", color=(40 * k, 60 * i, 90))
    return root


def noise_png(path: Path, side: int = 48) -> bytes:
    """A PNG of random pixels (incompressible, so half of it is a truncated image)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def prepare(tmp: Path, root: Path, novel=("c", "d"), *extra: str) -> list[str]:
    return [
        "stages.prepare",
        "--out",
        str(tmp / "prepared"),
        "--seed",
        "0",
        "--source",
        "imagefolder",
        "--root",
        str(root),
        "--image_size",
        str(SIZE),
        "--test_fraction",
        "0.34",
        "--max_bad_fraction",
        "0.5",
        "--novel_classes",
        *novel,
        *extra,
    ]


def tarball(tmp: Path, folder: Path, name: str, arcname: str | None) -> Path:
    path = tmp / name
    with tarfile.open(path, "w:gz") as tar:
        if arcname is None:  # classes at the top level
            for child in sorted(folder.iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(folder, arcname=arcname)
    return path


def shipped_params() -> dict:
    """params.yaml as plain, unshared dicts (its YAML anchors would alias g1 and g2)."""
    return json.loads(json.dumps(load_yaml(ROOT / "params.yaml")))


def check_params(
    tmp: Path, edit: Callable[[dict], None] | None = None, text: str | None = None, manifest: Path | None = None
) -> list[str]:
    """Write params.yaml (shipped params changed by `edit`, or raw `text`) -> config argv."""
    path = tmp / "params.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    else:
        params = shipped_params()
        edit(params)
        from bowflow.scaffold import write_yaml

        write_yaml(params, path)
    return ["bowflow.config", str(path), "--manifest", str(manifest or tmp / "no-manifest.json")]


def setter(dotted: str, value) -> Callable[[dict], None]:
    """An edit setting params[a][b][c] = value for dotted = 'a.b.c'."""
    *parents, last = dotted.split(".")

    def edit(params: dict) -> None:
        node = params
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def edits(*fns: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(params: dict) -> None:
        for fn in fns:
            fn(params)

    return edit


def imagefolder_data(root: Path, novel=("c", "d")) -> Callable[[dict], None]:
    """An image-folder data section (and 2-way episodes, as only 2 classes are novel)."""
    return edits(
        setter(
            "data",
            {
                "source": "imagefolder",
                "root": str(root),
                "download": False,
                "image_size": SIZE,
                "test_fraction": 0.34,
                "novel_classes": list(novel),
                "ssl_classes": "base",
                "ssl_max_images": 0,
                "max_bad_fraction": 0.5,
            },
        ),
        setter("evaluate.few_shot_way", len(novel)),
    )


NO_GPU_DEVICE = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


# --------------------------------------------------------------------------------------
# Expected outcomes


@dataclass
class Fails:
    phrases: tuple[str, ...]
    before_decode: bool = False  # prepare must stop before decoding any image


@dataclass
class Prepared:
    classes: list[str]
    total: int  # train + test images
    skipped: list[str] = field(default_factory=list)
    stderr: tuple[str, ...] = ()  # warnings that must name the problem
    pixels: dict[str, tuple] = field(default_factory=dict)  # path -> expected RGB everywhere
    tolerance: int = 2
    splits: dict[str, int] | None = None


def fails(*phrases: str, before_decode: bool = False) -> Fails:
    return Fails(phrases, before_decode)


def prepared_pixels(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for split in ("train", "test"):
        table = pq.read_table(out / f"{split}.parquet", columns=["pixels", "path"])
        for pixels, path in zip(table.column("pixels").to_pylist(), table.column("path").to_pylist()):
            found[path] = np.frombuffer(pixels, np.uint8).reshape(SIZE, SIZE, 3)
    return found


# --------------------------------------------------------------------------------------
# The rows: (case, build(tmp) -> argv, expected outcome)


def _unreadable(tmp):
    root = tree(tmp / "data")
    locked = img(root / "a" / "locked.png")
    locked.chmod(0)
    try:
        locked.read_bytes()
        pytest.skip("this user (root?) reads files of mode 000")
    except PermissionError:
        pass
    return prepare(tmp, root)


def _dangling_link(tmp):
    root = tree(tmp / "data")
    (root / "a" / "gone.png").symlink_to(tmp / "nowhere.png")
    return prepare(tmp, root)


def _truncated(name):
    def build(tmp):
        root = tree(tmp / "data")
        path = root / "a" / name
        if name.endswith(".png"):
            data = noise_png(path)
        else:
            Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
            data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return prepare(tmp, root)

    return build


def _empty_file(tmp):
    root = tree(tmp / "data")
    (root / "b" / "empty.png").write_bytes(b"")
    return prepare(tmp, root)


def _non_images(tmp):
    root = tree(tmp / "data")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "labels.csv").write_text("file,label\n0.png,b\n")
    (root / "c" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored silently
    return prepare(tmp, root)


def _text_as_image(tmp):
    root = tree(tmp / "data")
    (root / "d" / "fake.jpg").write_text("hello, I am text")
    return prepare(tmp, root)


def _modes(tmp):
    root = tree(tmp / "data")
    img(root / "a" / "rgba.png", "RGBA", color=(255, 0, 0, 128))  # half-transparent red on white
    img(root / "a" / "gray.png", "L", color=90)
    Image.new("RGB", (SIZE, SIZE), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        root / "a" / "palette.png"
    )
    img(root / "b" / "cmyk.jpg", "CMYK", color=(0, 255, 255, 0))  # red in CMYK
    img(root / "b" / "cmyk.tif", "CMYK", color=(255, 0, 255, 0))  # green in CMYK
    deep = np.full((SIZE, SIZE), 0x8000, dtype=np.uint16)  # 16-bit grey, half scale
    Image.fromarray(deep).save(root / "b" / "deep16.png")
    img(root / "c" / "bilevel.png", "1", color=1)
    img(root / "c" / "gray_alpha.png", "LA", color=(0, 0))  # transparent -> white
    return prepare(tmp, root)


def _sizes(tmp):
    root = tree(tmp / "data")
    wide = Image.new("RGB", (3 * SIZE, SIZE), (0, 0, 255))  # blue | green | blue
    wide.paste((0, 255, 0), (SIZE, 0, 2 * SIZE, SIZE))
    (root / "a").mkdir(exist_ok=True)
    wide.save(root / "a" / "wide.png")
    tall = Image.new("RGB", (SIZE, 5 * SIZE), (0, 0, 255))
    tall.paste((255, 255, 0), (0, 2 * SIZE, SIZE, 3 * SIZE))
    tall.save(root / "b" / "tall.png")
    img(root / "c" / "big.jpg", size=(64, 48), color=(250, 250, 250))
    img(root / "d" / "tiny.png", size=(3, 3), color=(7, 8, 9))  # upscaled
    return prepare(tmp, root)


def _empty_class(tmp):
    root = tree(tmp / "data")
    (root / "e_empty").mkdir()
    return prepare(tmp, root)


def _empty_novel_class(tmp):
    root = tree(tmp / "data")
    (root / "e").mkdir()
    return prepare(tmp, root, ("c", "e"))


def _unreadable_novel_class(tmp):
    root = tree(tmp / "data", classes=("a", "b", "c"))
    for i in range(3):
        (root / "d" / f"{i}.png").parent.mkdir(exist_ok=True)
        (root / "d" / f"{i}.png").write_text("text, not a png")
    return prepare(tmp, root, ("c", "d"), "--max_bad_fraction", "0.3")


def _too_many_bad(tmp):
    root = tree(tmp / "data")
    for i in range(3):
        (root / "a" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 broken")
    return prepare(tmp, root, ("c", "d"), "--max_bad_fraction", "0.1")


def _single_class(tmp):
    root = tree(tmp / "data", classes=("a",), per_class=6)
    return prepare(tmp, root, ("a", "b"))


def _unknown_novel(tmp):
    return prepare(tmp, tree(tmp / "data"), ("c", "zebra"))


def _non_ascii(tmp):
    root = tree(tmp / "data", classes=("b", "chat_é", "猫", "犬"))
    img(root / "猫" / "猫の写真.png")
    img(root / "chat_é" / "été.png")
    return prepare(tmp, root, ("猫", "犬"))


def _nfd_folder(tmp):
    root = tree(tmp / "data", classes=("a", "b", unicodedata.normalize("NFD", "chat_é")))
    return prepare(tmp, root, ("b", "chat_é"))  # typed in NFC


def _undecodable_name(tmp):
    root = tree(tmp / "data")
    name = os.path.join(os.fsencode(root / "a"), b"caf\xe9.png")  # latin-1 byte, not UTF-8
    Image.new("RGB", (SIZE, SIZE), (1, 2, 3)).save(os.fsdecode(name), format="PNG")
    return prepare(tmp, root)


def _nested(tmp):
    root = tree(tmp / "data")
    img(root / "a" / "more" / "x.png")
    img(root / "a" / "more" / "deeper" / "y.png")
    img(root / "d" / "sub" / "z.png")
    return prepare(tmp, root)


def _split_layout(tmp):
    root = tmp / "data"
    tree(root / "train")
    tree(root / "test", per_class=1)
    img(root / "test" / "a" / "extra.png")
    return prepare(tmp, root)


def _single_top_folder(tmp):
    tree(tmp / "data" / "mydataset")
    return prepare(tmp, tmp / "data")


def _no_root(tmp):
    return prepare(tmp, tmp / "does_not_exist")


def _root_is_file(tmp):
    (tmp / "images.zip").write_bytes(b"PK\x03\x04 not really")
    return prepare(tmp, tmp / "images.zip")


def _corrupt_tarball(tmp):
    (tmp / "data.tar.gz").write_bytes(os.urandom(2048))
    return prepare(tmp, tmp / "data.tar.gz")


def _truncated_tarball(tmp):
    root = tree(tmp / "src" / "data")
    for k in range(4):  # make it big enough to cut
        noise_png(root / CLASSES[k] / "noise.png", side=64)
    path = tarball(tmp, root, "data.tar.gz", "data")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return prepare(tmp, path)


def _tarball_top_folder(tmp):
    return prepare(tmp, tarball(tmp, tree(tmp / "src" / "data"), "data.tar.gz", "data"))


def _tarball_flat(tmp):
    return prepare(tmp, tarball(tmp, tree(tmp / "src" / "data"), "flat.tgz", None))


def _loose_images_only(tmp):
    for i in range(4):
        img(tmp / "data" / f"{i}.png")
    return prepare(tmp, tmp / "data")


def _no_image_files(tmp):
    for name in CLASSES:
        (tmp / "data" / name).mkdir(parents=True)
        (tmp / "data" / name / "readme.txt").write_text("x")
    return prepare(tmp, tmp / "data")


def _cli_flag_type(tmp):
    argv = prepare(tmp, tree(tmp / "data"))
    argv[argv.index("--image_size") + 1] = "eight"
    return argv


def _cli_seed(tmp):
    argv = prepare(tmp, tree(tmp / "data"))
    argv[argv.index("--seed") + 1] = "-1"
    return argv


def _cli_image_size(tmp):
    argv = prepare(tmp, tree(tmp / "data"))
    argv[argv.index("--image_size") + 1] = "4"
    return argv


def _shots_exceed_novel(tmp):
    """A real prepared manifest (3 images per novel class), then evaluate asks for 50+15."""
    data = imagefolder_data(tree(tmp / "data"))
    params = shipped_params()
    data(params)
    argv = [
        "stages.prepare",
        "--out",
        str(tmp / "prepared"),
        "--seed",
        str(params["seed"]),
        *shlex.split(render_args(params["data"])),
    ]
    result = run_entry(argv, tmp)
    assert result.rc == 0, result.stderr
    return check_params(tmp, data, manifest=tmp / "prepared" / "manifest.json")


def _teacher_on_missing_gpu(tmp):
    return [
        "stages.pretrain",
        "--prepared",
        str(tmp / "prepared"),
        "--model",
        str(tmp / "g0/model.pt"),
        "--metrics",
        str(tmp / "g0.json"),
        "--history",
        str(tmp / "g0.csv"),
        "--seed",
        "0",
        "--device",
        NO_GPU_DEVICE,
        "--method",
        "rotnet",
        "--epochs",
        "1",
    ]


def _pretrain_bad_compute(tmp):
    """The pretrain stage with a --compute that is no mode: argparse stops it before the
    data are read (check_params stops the same value in params.yaml first under DVC)."""
    return [
        "stages.pretrain",
        "--prepared",
        str(tmp / "prepared"),
        "--model",
        str(tmp / "g0/model.pt"),
        "--metrics",
        str(tmp / "g0.json"),
        "--history",
        str(tmp / "g0.csv"),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--compute",
        "fp16",
        "--method",
        "rotnet",
        "--epochs",
        "1",
    ]


def _dvc_yaml_for_other_seeds(tmp):
    """check_params as dvc.yaml runs it (--pipeline-seeds: the seeds dvc.yaml has stages
    for), after params.yaml's seeds were edited without rewriting dvc.yaml."""
    return check_params(tmp, setter("seeds", [0, 1, 2, 3])) + ["--pipeline-seeds", "0", "1", "2"]


def _distill_pair(edit_run: dict) -> Callable[[dict], None]:
    """A teachers: entry 't' and a FitNet distill: entry 'fit' from it (their methods'
    defaults, small convnets), the FitNet run changed by `edit_run`."""

    def edit(params: dict) -> None:
        from bowflow.scaffold import distill_runs

        teachers, distill = distill_runs(["fitnet"])
        params["teachers"] = {"t": teachers["teacher"]}
        params["distill"] = {"fit": distill["fitnet"] | {"teacher": "t"} | edit_run}

    return edit


def _with_needs(edit: Callable[[dict], None]) -> Callable[[Path], list[str]]:
    """check_params on the shipped params changed by `edit` (digits), which must pass and
    write its stamp, then the prepare argv that reads the stamp: what `dvc repro` runs."""

    def build(tmp: Path) -> list[str]:
        argv = check_params(tmp, edit) + ["--stamp", str(tmp / "checked_params.txt")]
        result = run_entry(argv, tmp)
        assert result.rc == 0, result.stderr
        params = load_yaml(tmp / "params.yaml")
        return [
            "stages.prepare",
            "--out",
            str(tmp / "prepared"),
            "--seed",
            str(params["seed"]),
            "--needs",
            str(tmp / "checked_params.txt"),
            *shlex.split(render_args(params["data"])),
        ]

    return build


def _batch_over_prepared_manifest(tmp):
    """Data already prepared (digits): check_params reads its manifest and stops a batch
    larger than the SSL images without rerunning prepare."""
    params = shipped_params()
    argv = [
        "stages.prepare",
        "--out",
        str(tmp / "prepared"),
        "--seed",
        str(params["seed"]),
        *shlex.split(render_args(params["data"])),
    ]
    result = run_entry(argv, tmp)
    assert result.rc == 0, result.stderr
    return check_params(tmp, setter("pretrain.g0.batch_size", 1000), manifest=tmp / "prepared" / "manifest.json")


def _params_root_plain_file(tmp):
    (tmp / "list.txt").write_text("a/0.png\n")
    return check_params(tmp, imagefolder_data(tmp / "list.txt"))


def _cycle(params):
    params["generations"]["g1"]["parent"] = "g2"
    params["generations"]["g2"]["parent"] = "g1"


def _parent_below(params):
    params["generations"]["g1"]["parent"] = "g2"
    params["generations"]["g2"]["parent"] = "g0"


def _bad_generation_name(params):
    params["generations"]["../g3"] = params["generations"]["g2"]


A = ["a", "b", "c", "d"]
ROWS = [
    # ---- image folder: files that are skipped, by name, with the dataset right
    ("unreadable file (mode 000)", _unreadable, Prepared(A, 12, ["a/locked.png"])),
    ("dangling symlink", _dangling_link, Prepared(A, 12, ["a/gone.png"])),
    ("truncated PNG", _truncated("cut.png"), Prepared(A, 12, ["a/cut.png"], stderr=("a/cut.png",))),
    ("truncated JPEG", _truncated("cut.jpg"), Prepared(A, 12, ["a/cut.jpg"])),
    ("empty 0-byte file", _empty_file, Prepared(A, 12, ["b/empty.png"], stderr=("empty file",))),
    (
        "non-image files (.txt, .csv)",
        _non_images,
        Prepared(A, 12, ["a/notes.txt", "b/labels.csv"], stderr=("non-image file",)),
    ),
    ("text file with an image extension", _text_as_image, Prepared(A, 12, ["d/fake.jpg"])),
    # ---- image folder: images that must load, correctly
    (
        "RGBA, L, P, CMYK, 16-bit, 1-bit, LA convert to RGB",
        _modes,
        Prepared(
            A,
            20,
            pixels={
                "a/rgba.png": (255, 127, 127),
                "a/gray.png": (90, 90, 90),
                "a/palette.png": (10, 200, 30),
                "b/cmyk.tif": (0, 255, 0),
                "b/deep16.png": (128, 128, 128),
                "c/bilevel.png": (255, 255, 255),
                "c/gray_alpha.png": (255, 255, 255),
            },
        ),
    ),
    ("CMYK JPEG converts to RGB", _modes, Prepared(A, 20, pixels={"b/cmyk.jpg": (255, 0, 0)}, tolerance=12)),
    (
        "mixed sizes: centre crop + resize",
        _sizes,
        Prepared(
            A,
            16,
            pixels={
                "a/wide.png": (0, 255, 0),
                "b/tall.png": (255, 255, 0),
                "c/big.jpg": (250, 250, 250),
                "d/tiny.png": (7, 8, 9),
            },
            tolerance=3,
        ),
    ),
    ("nested folders inside class folders", _nested, Prepared(A, 15, pixels={"a/more/deeper/y.png": (200, 30, 30)})),
    ("train/ and test/ layout", _split_layout, Prepared(A, 17, splits={"train": 12, "test": 5})),
    ("folder holding a single top folder", _single_top_folder, Prepared(A, 12, stderr=("mydataset",))),
    (
        "non-ASCII class and file names",
        _non_ascii,
        Prepared(["b", "chat_é", "犬", "猫"], 14, pixels={"猫/猫の写真.png": (200, 30, 30)}),
    ),
    ("NFD folder name, NFC novel class", _nfd_folder, Prepared(["a", "b", "chat_é"], 9)),
    ("file name that is not UTF-8", _undecodable_name, Prepared(A, 13, pixels={"a/caf\\xe9.png": (1, 2, 3)})),
    ("empty class folder", _empty_class, Prepared(A, 12, stderr=("e_empty", "no image files"))),
    ("tarball with a single top folder", _tarball_top_folder, Prepared(A, 12)),
    ("tarball with classes at the top", _tarball_flat, Prepared(A, 12)),
    # ---- image folder: errors naming the key or file
    ("root does not exist", _no_root, fails("data.root", "does_not_exist", "does not exist", "expected a folder")),
    (
        "root is a file but not a tarball",
        _root_is_file,
        fails("data.root", "images.zip", "not a tarball", "expected a folder"),
    ),
    (
        "corrupt .tar.gz",
        _corrupt_tarball,
        fails("data.root", "data.tar.gz", "not a readable tar archive", "expected a complete"),
    ),
    (
        "truncated .tar.gz",
        _truncated_tarball,
        fails("data.root", "data.tar.gz", "not a readable tar archive", "expected a complete"),
    ),
    (
        "single class",
        _single_class,
        fails("data.root", "only 1 class folder", "expected at least 3", before_decode=True),
    ),
    (
        "novel class not in the data",
        _unknown_novel,
        fails("data.novel_classes", "zebra", "not found", "expected names of its class folders", before_decode=True),
    ),
    (
        "empty class folder named as novel",
        _empty_novel_class,
        fails("data.novel_classes", "'e'", "hold no image files", "expected images", before_decode=True),
    ),
    (
        "novel class with only unreadable files",
        _unreadable_novel_class,
        fails("data.novel_classes", "'d'", "no readable images", "expected readable images"),
    ),
    (
        "more unreadable files than max_bad_fraction",
        _too_many_bad,
        fails("data.max_bad_fraction", "3 of 15", "a/bad0.jpg"),
    ),
    ("only loose images, no class folders", _loose_images_only, fails("data.root", "no class folders", "expected")),
    (
        "class folders without image files",
        _no_image_files,
        fails("data.root", "no image files", ".png", before_decode=True),
    ),
    ("--image_size not an integer", _cli_flag_type, fails("--image_size", "invalid int value: 'eight'")),
    ("--seed negative", _cli_seed, fails("--seed", "expected an integer in [0, 2**32 - 1]", "-1")),
    ("--image_size too small", _cli_image_size, fails("image_size must be >= 8", "got 4")),
    # ---- params.yaml (python -m bowflow.config)
    (
        "negative seed",
        lambda t: check_params(t, setter("seed", -1)),
        fails("seed", "expected an integer in [0, 2**32 - 1]", "-1"),
    ),
    ("seeds not a list", lambda t: check_params(t, setter("seeds", 0)), fails("seeds", "expected list", "0")),
    ("no seeds", lambda t: check_params(t, setter("seeds", [])), fails("seeds", "expected at least one seed", "[]")),
    (
        "seed listed twice",
        lambda t: check_params(t, setter("seeds", [0, 1, 0])),
        fails("seeds", "expected distinct seeds", "[0, 1, 0]"),
    ),
    (
        "seed that is not an integer",
        lambda t: check_params(t, setter("seeds", [0, "1"])),
        fails("seeds[1]", "expected an integer in [0, 2**32 - 1]", "'1'"),
    ),
    (
        "negative seed in seeds",
        lambda t: check_params(t, setter("seeds", [-2])),
        fails("seeds[0]", "expected an integer in [0, 2**32 - 1]", "-2"),
    ),
    (
        "seeds edited, dvc.yaml not rewritten",
        _dvc_yaml_for_other_seeds,
        fails(
            "seeds",
            "params.yaml lists [0, 1, 2, 3]",
            "dvc.yaml has stages for seeds [0, 1, 2]",
            "bin/python -m workflow.pipeline",
        ),
    ),
    (
        "unknown compute mode",
        lambda t: check_params(t, setter("compute", "fp32-channels_last")),
        fails("compute", "'fp32-channels_last'", "expected auto, measure, default", "fp32-channels-last-t1"),
    ),
    (
        "compute mode not a string",
        lambda t: check_params(t, setter("compute", 16)),
        fails("compute", "expected str", "16"),
    ),
    (
        "unknown compute mode (pretrain stage)",
        _pretrain_bad_compute,
        fails("--compute", "'fp16'", "expected auto, measure, default"),
    ),
    (
        "unknown top-level key",
        lambda t: check_params(t, setter("epochs", 3)),
        fails("epochs", "unknown top-level key", "expected"),
    ),
    (
        "unknown key in a section",
        lambda t: check_params(t, setter("data.image_sise", 32)),
        fails("data.image_sise", "unknown key", "did you mean 'image_size'"),
    ),
    (
        "unknown key in a generation's vocab",
        lambda t: check_params(t, setter("generations.g1.vocab.sise", 9)),
        fails("generations.g1.vocab.sise", "unknown key", "expected one of"),
    ),
    (
        "unknown key in a generation",
        lambda t: check_params(t, setter("generations.g2.vocabs", {})),
        fails("generations.g2.vocabs", "unknown key", "did you mean 'vocab'"),
    ),
    (
        "string where int",
        lambda t: check_params(t, setter("data.image_size", "32")),
        fails("data.image_size", "expected int", "'32'"),
    ),
    (
        "list where str",
        lambda t: check_params(t, setter("data.root", ["a", "b"])),
        fails("data.root", "expected str", "['a', 'b']"),
    ),
    (
        "bool where int",
        lambda t: check_params(t, setter("pretrain.g0.epochs", True)),
        fails("pretrain.g0.epochs", "expected int", "True"),
    ),
    (
        "float where int",
        lambda t: check_params(t, setter("generations.g1.vocab.size", 64.5)),
        fails("generations.g1.vocab.size", "expected int", "64.5"),
    ),
    (
        "int class names",
        lambda t: check_params(t, setter("data.novel_classes", [5, 6, 7])),
        fails("data.novel_classes[0]", "expected str", "quote it"),
    ),
    (
        "int where list",
        lambda t: check_params(t, setter("evaluate.few_shot_shots", 5)),
        fails("evaluate.few_shot_shots", "expected a list of int"),
    ),
    ("null value", lambda t: check_params(t, setter("data.root", None)), fails("data.root", "expected str", "None")),
    (
        "section that is not a mapping",
        lambda t: check_params(t, setter("evaluate", 5)),
        fails("evaluate", "expected a mapping"),
    ),
    ("missing section", lambda t: check_params(t, lambda p: p.pop("report")), fails("report", "missing top-level key")),
    (
        "negative epochs",
        lambda t: check_params(t, setter("generations.g1.student.epochs", -3)),
        fails("generations.g1.student", "epochs must be > 0", "-3"),
    ),
    ("image_size 0", lambda t: check_params(t, setter("data.image_size", 0)), fails("data", "image_size must be > 0")),
    (
        "test_fraction above 1",
        lambda t: check_params(t, setter("data.test_fraction", 1.5)),
        fails("data", "test_fraction must be in (0, 1)", "1.5"),
    ),
    (
        "max_bad_fraction below 0",
        lambda t: check_params(t, setter("data.max_bad_fraction", -0.1)),
        fails("data", "max_bad_fraction must be in [0, 1]"),
    ),
    (
        "momentum above 1",
        lambda t: check_params(t, setter("pretrain.g0.momentum", 1.5)),
        fails("pretrain.g0", "momentum must be in [0, 1]"),
    ),
    (
        "NaN learning rate",
        lambda t: check_params(t, text=(ROOT / "params.yaml").read_text().replace("lr: 0.1\n", "lr: .nan\n")),
        fails("pretrain.g0.lr", "expected a finite number"),
    ),
    (
        "vocabulary larger than its sample",
        lambda t: check_params(t, setter("generations.g1.vocab.samples", 10)),
        fails("generations.g1.vocab", "size (K=64) must not exceed samples (10)"),
    ),
    (
        "unknown data source",
        lambda t: check_params(t, setter("data.source", "mnist")),
        fails("data", "source must be one of", "imagefolder", "'mnist'"),
    ),
    (
        "imagefolder without data.root",
        lambda t: check_params(t, setter("data.source", "imagefolder")),
        fails("data", "root must name the image folder"),
    ),
    (
        "data.root pointing nowhere",
        lambda t: check_params(t, imagefolder_data(t / "nowhere")),
        fails("data.root", "nowhere", "does not exist", "expected a folder"),
    ),
    (
        "data.root a plain file",
        _params_root_plain_file,
        fails("data.root", "list.txt", "not a tarball", "expected a folder"),
    ),
    (
        "torchvision root missing, no download",
        lambda t: check_params(
            t,
            edits(
                setter("data.source", "cifar10"),
                setter("data.root", str(t / "cifar")),
                setter("data.novel_classes", ["dog", "cat"]),
                setter("evaluate.few_shot_way", 2),
            ),
        ),
        fails("data.root", "cifar", "does not exist", "data.download: true"),
    ),
    (
        "parent that does not exist",
        lambda t: check_params(t, setter("generations.g2.parent", "g7")),
        fails("generations.g2.parent", "'g7'", "generation defined above"),
    ),
    (
        "self-parent",
        lambda t: check_params(t, setter("generations.g1.parent", "g1")),
        fails("generations.g1.parent", "its own parent", "expected a pretrain run"),
    ),
    (
        "parents form a cycle",
        lambda t: check_params(t, _cycle),
        fails("generations.g1.parent", "'g2'", "cycle g1 -> g2 -> g1"),
    ),
    (
        "parent defined below its child",
        lambda t: check_params(t, _parent_below),
        fails("generations.g1.parent", "'g2'", "generation defined above it", "move 'g2' above 'g1'"),
    ),
    (
        "parent that is a list",
        lambda t: check_params(t, setter("generations.g1.parent", ["g0"])),
        fails("generations.g1.parent", "expected the name of one run"),
    ),
    (
        "generation name with a slash",
        lambda t: check_params(t, _bad_generation_name),
        fails("generations.../g3", "expected a name of letters"),
    ),
    (
        "more ways than novel classes",
        lambda t: check_params(t, setter("evaluate.few_shot_way", 6)),
        fails("evaluate.few_shot_way", "data.novel_classes lists 5"),
    ),
    (
        "shots + queries above a novel class's images (prepared manifest)",
        _shots_exceed_novel,
        fails("evaluate.few_shot_shots", "65 images of each novel class", "class 'c' has 3"),
    ),
    (
        "novel class not in the image folder (check_params)",
        lambda t: check_params(t, imagefolder_data(tree(t / "data"), ("c", "zebra"))),
        fails("data.novel_classes", "zebra", "not found", "expected names of its class folders"),
    ),
    (
        "single class (check_params)",
        lambda t: check_params(t, imagefolder_data(tree(t / "data", classes=("c",)), ("c", "d"))),
        fails("data.root", "only 1 class folder", "expected at least 3"),
    ),
    (
        "shots + queries above the image files of a novel class (check_params)",
        lambda t: check_params(t, imagefolder_data(tree(t / "data"))),
        fails("evaluate.few_shot_shots", "65 images of each novel class", "class 'c' has 3", "image files under"),
    ),
    # ---- layer names against the run's architecture (check_params, before any stage)
    (
        "vocabulary layer the parent does not have",
        lambda t: check_params(t, setter("generations.g1.vocab.layer", "stage4")),
        fails(
            "generations.g1.vocab.layer",
            "'stage4'",
            "not a stage of the parent 'g0'",
            "['stage1', 'stage2', 'stage3']",
            "expected 'last' or one of its stages",
        ),
    ),
    (
        "evaluation layer an evaluated model does not have",
        lambda t: check_params(t, setter("evaluate.layer", "stage9")),
        fails("evaluate.layer", "'stage9'", "not a stage of 'g0'", "expected 'last' or a stage"),
    ),
    (
        "FitNet hint stage the networks do not have",
        lambda t: check_params(t, _distill_pair({"hint_stage": "stage5"})),
        fails("distill.fit.hint_stage", "no stage 'stage5'", "stage3"),
    ),
    (
        "architecture size the builder refuses",
        lambda t: check_params(t, edits(setter("pretrain.g0.arch", "resnet"), setter("pretrain.g0.depth", 20))),
        fails("pretrain.g0.depth", "resnet depth must be one of [18, 34]", "got 20"),
    ),
    # ---- batch and few-shot sizes against the images (check_params when params alone
    # tell, else the prepare stage as soon as it has read the images, before writing)
    (
        "batch above data.ssl_max_images",
        lambda t: check_params(t, edits(setter("data.ssl_max_images", 50), setter("pretrain.g0.batch_size", 64))),
        fails("pretrain.g0.batch_size", "data.ssl_max_images = 50", "expected a batch_size <= 50"),
    ),
    (
        "batch above a labelled run's max_images",
        lambda t: check_params(t, _distill_pair({"max_images": 20, "batch_size": 32})),
        fails("distill.fit.batch_size", "its max_images = 20", "expected a batch_size <= 20"),
    ),
    (
        "shots + queries above a digits novel class (prepare)",
        _with_needs(setter("evaluate.few_shot_shots", [1, 5, 170])),
        fails(
            "evaluate.few_shot_shots",
            "170 support",
            "15 queries",
            "185 images of each novel class",
            "class '7' has 179",
            "class '8' has 174",
            "digits",
        ),
    ),
    (
        "SSL batch above the SSL images (prepare)",
        _with_needs(setter("pretrain.g0.batch_size", 1000)),
        fails(
            "pretrain.g0.batch_size",
            "1000 images per step",
            "only 675 images",
            "base classes",
            "expected a batch_size <= 675",
        ),
    ),
    (
        "student batch above the SSL images (prepare)",
        _with_needs(setter("generations.g2.student.batch_size", 700)),
        fails("generations.g2.student.batch_size", "700 images per step", "only 675 images"),
    ),
    (
        "teacher batch above the labelled train images (prepare)",
        _with_needs(edits(_distill_pair({}), setter("teachers.t.batch_size", 1500))),
        fails("teachers.t.batch_size", "1500 images per step", "only 1346 images", "train split"),
    ),
    (
        "SSL batch above the prepared SSL images (check_params, prepared manifest)",
        _batch_over_prepared_manifest,
        fails("pretrain.g0.batch_size", "1000 images per step", "only 675 images", "prepared data"),
    ),
    (
        "novel class not in the data (digits)",
        lambda t: check_params(t, setter("data.novel_classes", ["5", "10"])),
        fails("data", "novel_classes ['10']", "expected names among"),
    ),
    (
        "novel class listed twice",
        lambda t: check_params(t, setter("data.novel_classes", ["5", "6", "5"])),
        fails("data", "novel_classes lists ['5'] more than once"),
    ),
    (
        "GPU requested where there is none",
        lambda t: check_params(t, setter("device", NO_GPU_DEVICE)),
        fails("device", f"'{NO_GPU_DEVICE}' requested", "expected"),
    ),
    (
        "device that is not a device",
        lambda t: check_params(t, setter("device", "gpu")),
        fails("device", "expected 'auto', 'cpu' or 'cuda[:N]'", "'gpu'"),
    ),
    (
        "GPU requested where there is none (teacher stage)",
        _teacher_on_missing_gpu,
        fails("device", f"'{NO_GPU_DEVICE}' requested", "expected"),
    ),
    (
        "YAML syntax error",
        lambda t: check_params(t, text="seed: 0\ndata: [unclosed\n"),
        fails("params.yaml", "not valid YAML", "line"),
    ),
    (
        "duplicate YAML key",
        lambda t: check_params(t, text="seed: 0\nseed: 1\n"),
        fails("params.yaml", "not valid YAML", "duplicate"),
    ),
    ("empty params file", lambda t: check_params(t, text=""), fails("params.yaml", "expected a mapping of sections")),
    (
        "params file missing",
        lambda t: ["bowflow.config", str(t / "params.yml"), "--manifest", str(t / "m.json")],
        fails("params.yml", "not found", "expected a YAML file"),
    ),
]


def check_outcome(result: Result, expected, tmp: Path) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    out = tmp / "prepared"
    if isinstance(expected, Fails):
        assert result.rc != 0, f"exit 0, expected a failure naming {expected.phrases}\n{result.stderr}"
        lines = result.stderr.splitlines()
        assert any(all(p in line for p in expected.phrases) for line in lines), (
            f"no stderr line holds all of {expected.phrases}:\n{result.stderr}"
        )
        if "stages.prepare" in result.argv:
            assert not (out / "manifest.json").exists(), "a failed prepare left a manifest"
        if expected.before_decode:
            assert "decoded " not in result.stderr, "stopped only after decoding the images"
        return
    assert result.rc == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(s["path"] for s in manifest["report"]["skipped"]) == sorted(expected.skipped)
    assert all(s["reason"] for s in manifest["report"]["skipped"])
    assert manifest["class_names"] == expected.classes
    assert sum(manifest["totals"].values()) == expected.total, manifest["totals"]
    if expected.splits:
        assert manifest["totals"] == expected.splits
    for phrase in expected.stderr:
        assert phrase in result.stderr, f"{phrase!r} not in stderr:\n{result.stderr}"
    pixels = prepared_pixels(out)
    assert len(pixels) == expected.total
    for path, rgb in expected.pixels.items():
        got = pixels[path].astype(int)
        assert np.abs(got - np.array(rgb)).max() <= expected.tolerance, (path, got[0, 0], rgb)


@pytest.mark.parametrize("case, build, expected", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input(case, build, expected, tmp_path):
    argv = build(tmp_path)
    result = run_entry(argv, tmp_path)
    result.argv = argv
    check_outcome(result, expected, tmp_path)


FRESH_ROWS = ("unknown key in a section", "truncated PNG")  # one per entry point, one of each outcome


@pytest.mark.parametrize("case", FRESH_ROWS)
def test_fresh_interpreter(case, tmp_path):
    """The same rows in a real `python -m` subprocess of this interpreter."""
    ((_, build, expected),) = [row for row in ROWS if row[0] == case]
    argv = build(tmp_path)
    result = run_entry(argv, tmp_path, fresh=True)
    result.argv = argv
    check_outcome(result, expected, tmp_path)


def test_met_needs_change_no_prepared_file(tmp_path):
    """Data needs the digits meet: prepare with --needs writes exactly the files it writes
    without (so adding the checks to the prepare stage invalidates no downstream stage)."""
    argv = check_params(tmp_path, lambda params: None) + ["--stamp", str(tmp_path / "stamp.txt")]
    assert run_entry(argv, tmp_path).rc == 0
    params = shipped_params()
    common = ["--seed", str(params["seed"]), *shlex.split(render_args(params["data"]))]
    with_needs = run_entry(
        ["stages.prepare", "--out", str(tmp_path / "a"), "--needs", str(tmp_path / "stamp.txt"), *common], tmp_path
    )
    assert with_needs.rc == 0, with_needs.stderr
    assert run_entry(["stages.prepare", "--out", str(tmp_path / "b"), *common], tmp_path).rc == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["manifest.json", "test.parquet", "train.parquet"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# The real pipeline on the tiny configuration (bowflow/scaffold.py): each bad value stops
# `dvc repro` in check_params or prepare, naming the key, before any training stage. Every
# training and evaluation stage exists once per seed (workflow/pipeline.py):
# `pretrain_seed0@g0`, `evaluate_student_seed0@g1`, ...
TRAINING_STAGES = tuple(
    f"{kind}_seed"
    for kind in ("pretrain", "vocab", "student", "teacher", "distill", "evaluate_pretrain", "evaluate_student")
)


def test_training_stage_names_match_the_generated_dvc_yaml():
    """Every training and evaluation stage group of dvc.yaml starts with a TRAINING_STAGES
    prefix, and the stages that train nothing do not (so the test below sees a training
    stage whatever its seed)."""
    from workflow.pipeline import stages

    groups = list(stages([0, 3]))
    training = [g for g in groups if g.startswith(TRAINING_STAGES)]
    assert sorted(set(groups) - set(training)) == ["check_params", "prepare", "report"]
    assert {g.rsplit("_seed", 1)[1] for g in training} == {"0", "3"} and len(training) == 2 * 7


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, value, phrases, last_stage",
    [
        ("generations.g1.vocab.layer", "stage4", ("not a stage of the parent 'g0'",), "check_params"),
        ("evaluate.few_shot_shots", [1, 200], ("215 images of each novel class", "class '5' has 182"), "prepare"),
        ("teachers.teacher.batch_size", 1500, ("1500 images per step", "only 1346 images"), "prepare"),
        ("compute", "fp16", ("'fp16'", "expected auto, measure, default"), "check_params"),
    ],
    ids=["layer", "few-shot", "batch", "compute"],
)
def test_dvc_repro_stops_before_training(key, value, phrases, last_stage, tmp_path):
    from test_pipeline import run  # the user's shell: PATH without the venv, empty cache

    from bowflow.scaffold import make_project, tiny_params

    params = tiny_params()
    params["seeds"] = [0, 1]  # a training stage of either seed would count
    setter(key, value)(params)
    project = make_project(tmp_path / "project", params)
    result = run(project, ".venv/bin/dvc", "repro", check=False)
    output = result.stdout + result.stderr
    ran = re.findall(r"Running stage '([^']+)'", output)
    assert result.returncode != 0, output[-3000:]
    assert any(key in line and all(p in line for p in phrases) for line in output.splitlines()), output[-3000:]
    assert ran[-1] == last_stage and not [s for s in ran if s.startswith(TRAINING_STAGES)], ran
    assert not (project / "data" / "models").exists() and not (project / "data" / "prepared").exists()
