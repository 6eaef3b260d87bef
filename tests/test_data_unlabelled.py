"""Unlabelled images for the self-supervised stages (`data.unlabelled`, `data.unlabelled_use`),
and torchvision's CIFAR-10 preparing to the same tables as the class-folder tarball.

Generated images (PIL-written PNG and JPEG in nested folders, one corrupt file) at 8 px:
check_params refuses a missing path, a folder with no images and a batch the images cannot
fill; prepare writes unlabelled.parquet and names the corrupt file; the pretrain stage
trains on exactly the unlabelled images (replace) or on them plus the labelled SSL rows
(add); evaluation reads the labelled train/test tables only.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import stages.evaluate
from bowflow.config import ParamsError, check_environment, validate_params
from bowflow.data.prepared import load_prepared, load_ssl_split, read_manifest
from bowflow.data.sources import load_source
from bowflow.sections import load_yaml
from stages import prepare, pretrain

ROOT = Path(__file__).resolve().parent.parent
REAL_TARBALL = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
DIGITS_SSL = 675  # train rows of the digits' base classes (0-4) at the default split


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BOWFLOW_CACHE", str(tmp_path / "cache"))


def photos(root: Path, n: int = 11, corrupt: bool = True) -> Path:
    """n random images at three depths, PNG and JPEG, of several sizes; one corrupt JPEG,
    a text file and a hidden file beside them."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ["", "trip", "trip/day2"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    if corrupt:
        (root / "trip" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "trip" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"hidden")
    return root


def prepare_args(out: Path, unlabelled: Path | str, *extra: str) -> list[str]:
    return [
        "--out",
        str(out),
        "--seed",
        "0",
        "--source",
        "digits",
        "--root",
        "",
        "--image_size",
        "8",
        "--unlabelled",
        str(unlabelled),
        *extra,
    ]


def checked_params(unlabelled: str, **data) -> dict:
    params = load_yaml(ROOT / "params.yaml")
    params["data"].update(unlabelled=unlabelled, **data)
    params["device"] = "cpu"
    return params


def check(params: dict) -> None:
    check_environment(validate_params(params), params)


# ------------------------------------------------------------------- check_params


def test_check_params_names_a_missing_path_an_empty_folder_and_a_small_pool(tmp_path):
    with pytest.raises(ParamsError, match=r"data\.unlabelled: '.*nowhere' does not exist"):
        check(checked_params(str(tmp_path / "nowhere")))
    empty = tmp_path / "empty"
    (empty / "deep").mkdir(parents=True)
    (empty / "deep" / "readme.txt").write_text("no images here")
    with pytest.raises(ParamsError, match=r"data\.unlabelled: no image files .* at any depth under '.*empty'"):
        check(checked_params(str(empty)))
    (tmp_path / "photos.zip").write_bytes(b"PK")
    with pytest.raises(ParamsError, match=r"data\.unlabelled: '.*photos\.zip' is a file but not a tarball"):
        check(checked_params(str(tmp_path / "photos.zip")))
    with pytest.raises(ParamsError, match=r"data\.unlabelled_use: unlabelled_use must be one of \['replace', 'add'\]"):
        validate_params(checked_params("x", unlabelled_use="both"))
    few = photos(tmp_path / "few")  # 12 image files; g0's batch of 64 cannot fill a step
    with pytest.raises(
        ParamsError,
        match=r"pretrain\.g0\.batch_size: 64 images per step, but the run "
        r"trains on only 12 images .*data\.unlabelled",
    ):
        check(checked_params(str(few)))
    check(checked_params(str(few), unlabelled_use="add"))  # + 675 labelled rows: enough
    check(checked_params(""))  # the default: none


# ------------------------------------------------------------------------ prepare


def test_prepare_reads_any_depth_and_names_the_corrupt_file(tmp_path):
    folder = photos(tmp_path / "photos")
    with pytest.raises(
        SystemExit,
        match=r"data\.max_bad_fraction: 1 of 12 image files .* "
        r"First ones: .*trip/broken\.jpg",
    ):
        prepare.main(prepare_args(tmp_path / "strict", folder, "--max_bad_fraction", "0"))
    prepare.main(prepare_args(tmp_path / "prepared", folder, "--max_bad_fraction", "0.1"))
    manifest = read_manifest(tmp_path / "prepared")
    assert manifest["totals"] == {"train": 1346, "test": 451, "unlabelled": 11}
    assert manifest["source"]["unlabelled"] == str(folder)
    skipped = {s["path"]: s["reason"] for s in manifest["report"]["unlabelled"]["skipped"]}
    assert set(skipped) == {"trip/broken.jpg", "trip/notes.txt"}
    assert any("trip/broken.jpg" in w for w in manifest["report"]["unlabelled"]["warnings"])
    table = load_prepared(tmp_path / "prepared", "unlabelled")
    assert table["images"].shape == (11, 3, 8, 8) and set(table["labels"].tolist()) == {-1}
    images, labels, _ = load_ssl_split(tmp_path / "prepared")  # replace: these only
    assert images.shape[0] == 11 and bool((images == table["images"]).all())
    # the labelled tables are those of a preparation without data.unlabelled
    prepare.main(prepare_args(tmp_path / "plain", ""))
    for split in ("train", "test"):
        a, b = load_prepared(tmp_path / "prepared", split), load_prepared(tmp_path / "plain", split)
        assert bool((a["images"] == b["images"]).all()) and bool((a["labels"] == b["labels"]).all())
    assert not (tmp_path / "plain" / "unlabelled.parquet").exists()


def test_prepare_reads_a_tarball_and_caps_the_pool(tmp_path):
    folder = photos(tmp_path / "photos", corrupt=False)
    tarball = tmp_path / "photos.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="photos")
    prepare.main(prepare_args(tmp_path / "prepared", tarball, "--unlabelled_use", "add", "--ssl_max_images", "100"))
    manifest = read_manifest(tmp_path / "prepared")
    assert manifest["totals"]["unlabelled"] == 11
    images, labels, _ = load_ssl_split(tmp_path / "prepared")
    assert images.shape[0] == 100 and int((labels >= 0).sum()) + int((labels == -1).sum()) == 100


# ------------------------------------------------ the SSL stage trains on them, evaluation does not


@pytest.mark.parametrize("use, expected, batch", [("replace", 11, 8), ("add", DIGITS_SSL + 11, 64)])
def test_pretrain_trains_on_the_unlabelled_images_and_evaluate_on_the_labelled(
    tmp_path, monkeypatch, use, expected, batch
):
    folder = photos(tmp_path / "photos")
    prepared = tmp_path / "prepared"
    prepare.main(prepare_args(prepared, folder, "--unlabelled_use", use, "--max_bad_fraction", "0.1"))
    metrics = tmp_path / "g0.json"
    monkeypatch.chdir(tmp_path)
    pretrain.main(
        [
            "--prepared",
            str(prepared),
            "--model",
            str(tmp_path / "g0" / "model.pt"),
            "--metrics",
            str(metrics),
            "--history",
            str(tmp_path / "g0.csv"),
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--seed",
            "0",
            "--device",
            "cpu",
            "--method",
            "rotnet",
            "--arch",
            "convnet",
            "--width",
            "4",
            "--epochs",
            "1",
            "--batch_size",
            str(batch),
            "--padding",
            "1",
        ]
    )
    assert json.loads(metrics.read_text())["train_images"] == expected

    read = []
    real = stages.evaluate.load_prepared
    monkeypatch.setattr(stages.evaluate, "load_prepared", lambda p, split: read.append(split) or real(p, split))
    out = tmp_path / "eval.json"
    stages.evaluate.main(
        [
            "--prepared",
            str(prepared),
            "--model",
            str(tmp_path / "g0" / "model.pt"),
            "--out",
            str(out),
            "--seed",
            "0",
            "--device",
            "cpu",
            "--linear_epochs",
            "1",
            "--few_shot_shots",
            "1",
            "5",
            "--few_shot_episodes",
            "5",
        ]
    )
    assert sorted(read) == ["test", "train"]  # never the unlabelled table
    result = json.loads(out.read_text())
    assert set(result["few_shot"]) == {"1", "5"} and 0 <= result["knn_all"] <= 100


# ------------------------------------------- torchvision's CIFAR-10 prepares as the tarball does


def _tarball_slice(per_class: int) -> dict[str, dict[str, list[bytes]]]:
    """{split: {class: the first per_class JPEG files' bytes}} of the real tarball."""
    taken: dict[str, dict[str, list[bytes]]] = {"train": {}, "test": {}}
    with tarfile.open(REAL_TARBALL, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4:
                files = taken[parts[1]].setdefault(parts[2], [])
                if len(files) < per_class:
                    files.append(tar.extractfile(member).read())
            if all(len(c) == 10 and all(len(f) == per_class for f in c.values()) for c in taken.values()):
                break
    return taken


@pytest.mark.skipif(not REAL_TARBALL.is_file(), reason=f"{REAL_TARBALL} not present")
def test_torchvision_cifar10_prepares_as_the_class_folder_tarball(tmp_path, monkeypatch):
    """A slice of the tarball written both ways: as class folders (its own layout) and as
    torchvision's cifar-10-batches-py (the classes interleaved, as in the real batches).
    Both sources give the same prepared rows: pixels, labels, class names, order."""
    from torchvision import datasets

    per_class = 4
    taken = _tarball_slice(per_class)
    classes = sorted(taken["train"])
    folder = tmp_path / "cifar10-jpeg"
    batches = tmp_path / "torchvision" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for split, by_class in taken.items():
        rows = []  # interleaved: i-th image of every class, then the next
        for i in range(per_class):
            for k, name in enumerate(classes):
                data = by_class[name][i]
                (folder / split / name).mkdir(parents=True, exist_ok=True)
                (folder / split / name / f"{i:04d}.jpg").write_bytes(data)
                pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.uint8)
                rows.append((pixels.transpose(2, 0, 1).reshape(-1), k))  # torchvision's CHW rows
        batch = {"data": np.stack([r[0] for r in rows]), "labels": [r[1] for r in rows]}
        names = ["data_batch_1"] if split == "train" else ["test_batch"]
        for name in names:
            (batches / name).write_bytes(pickle.dumps(batch))
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (batches / name).write_bytes(pickle.dumps({"data": np.zeros((0, 3072), np.uint8), "labels": []}))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    import torchvision.datasets.cifar

    monkeypatch.setattr(datasets.CIFAR10, "_check_integrity", lambda self: True)  # not the real md5s
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)

    tv_train, tv_test, _ = load_source("cifar10", tmp_path / "torchvision", image_size=32)
    jpg_train, jpg_test, _ = load_source("imagefolder", folder, image_size=32)
    for a, b in ((tv_train, jpg_train), (tv_test, jpg_test)):
        assert a.class_names == b.class_names == classes
        assert len(a) == len(b) == 10 * per_class
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.images, b.images)
