"""Images with object boxes: the detection sources, which are also multi-label classification
sources (VOC07 classification is "which classes have an object in this image").

    BoxSet                 images [N, S, S, 3] uint8 + per image boxes, labels, difficult flags
    load_voc               a PASCAL VOC year folder (VOCdevkit/VOC2007 layout) -> BoxSet
    generate_shapes        a seeded synthetic set of glyphs with boxes: the embedded source
                           (no download), on which the evaluation tests run
    write_voc              a BoxSet -> a VOC year folder (tests, and an example of the layout)
    write_boxes/read_boxes one Parquet table per split, written atomically
    multi_label_targets    VOC07's classification targets: 1 / 0 (difficult only) / -1

BoxSet, read_boxes and multi_label_targets live in `bowflow.data.box_tables` (the reading
side, which the stages after a preparation import without the decoders) and are
re-exported here.
    load_box_source        a params source spec (`shapes` or `voc`) -> (train, test)

Every image is resized whole to S x S (no crop, so no object is cut; the aspect ratio is not
kept) and its boxes scaled with it. Boxes are [x1, y1, x2, y2] in pixels of the S x S image,
x2 and y2 exclusive: VOC's 1-based inclusive corners (xmin, ymin, xmax, ymax) become
(xmin - 1, ymin - 1, xmax, ymax), as detectron2's VOC loader reads them.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bowflow.data.box_tables import BOX_FORMAT, BoxSet
from bowflow.data.box_tables import multi_label_targets as multi_label_targets  # re-exported
from bowflow.data.box_tables import read_boxes as read_boxes  # re-exported
from bowflow.data.decode import _to_rgb
from bowflow.data.specs import DataError, DataNotFoundError
from bowflow.io import atomic_path

BOX_SOURCES = ("shapes", "voc")
# The shapes' glyphs (5 x 5 cells; no two are mirror images, so a flip keeps the class): the
# four of the learning tests' single-glyph task (tests/synthetic_shapes.py), so a network
# trained there has learnt these objects.
GLYPHS = {
    "T": ["#####", "..#..", "..#..", "..#..", "..#.."],
    "L": ["#....", "#....", "#....", "#....", "#####"],
    "F": ["#####", "#....", "####.", "#....", "#...."],
    "P": ["####.", "#...#", "####.", "#....", "#...."],
}


# --- PASCAL VOC ------------------------------------------------------------------------------


def _voc_objects(xml_path: Path) -> list[tuple[str, list[float], bool]]:
    """One annotation file -> [(class name, [xmin - 1, ymin - 1, xmax, ymax], difficult)]."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as error:
        raise DataError(f"{xml_path}: not a readable VOC annotation ({error})") from None
    objects = []
    for obj in root.iter("object"):
        name, box = obj.findtext("name"), obj.find("bndbox")
        if not name or box is None:
            raise DataError(f"{xml_path}: an <object> without <name> or <bndbox>")
        try:
            x1, y1, x2, y2 = (float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise DataError(f"{xml_path}: object {name!r} has a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
        objects.append((name.strip(), [x1 - 1, y1 - 1, x2, y2], (obj.findtext("difficult") or "0").strip() == "1"))
    return objects


def load_voc(root: str | Path, split: str, image_size: int, class_names: list[str] | None = None) -> BoxSet:
    """A VOC year folder's split -> BoxSet, images resized to image_size^2, boxes scaled with them.

    root holds ImageSets/Main/<split>.txt (one image id per line), Annotations/<id>.xml and
    JPEGImages/<id>.jpg. class_names: the classes, in label order (default: every class
    named in the split's annotations, sorted: VOC's 20 in their usual order); an object of
    another class is an error naming its file."""
    root = Path(root)
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    for needed in (root, root / "Annotations", root / "JPEGImages", ids_file):
        if not needed.exists():
            raise DataNotFoundError(
                f"{needed}: not found; a VOC root holds ImageSets/Main/<split>.txt, Annotations/ and JPEGImages/"
            )
    ids = [line.split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{ids_file}: lists no image")
    annotations = [_voc_objects(root / "Annotations" / f"{image_id}.xml") for image_id in ids]
    names = class_names or sorted({name for objects in annotations for name, _, _ in objects})
    if not names:
        raise DataError(f"{root}: the annotations of split {split!r} hold no object")
    index = {name: i for i, name in enumerate(names)}
    images = np.empty((len(ids), image_size, image_size, 3), dtype=np.uint8)
    boxes, labels, difficult, paths = [], [], [], []
    for i, (image_id, objects) in enumerate(zip(ids, annotations)):
        path = root / "JPEGImages" / f"{image_id}.jpg"
        try:
            with Image.open(path) as im:
                width, height = im.size
                images[i] = np.asarray(_to_rgb(im).resize((image_size, image_size), Image.Resampling.BILINEAR))
        except OSError as error:
            raise DataError(f"{path}: unreadable image ({error})") from None
        unknown = sorted({name for name, _, _ in objects} - index.keys())
        if unknown:
            raise DataError(f"{root / 'Annotations' / f'{image_id}.xml'}: classes {unknown} are not among {names}")
        scale = np.array([image_size / width, image_size / height] * 2, dtype=np.float32)
        box = np.array([b for _, b, _ in objects], dtype=np.float32).reshape(-1, 4) * scale
        boxes.append(np.clip(box, 0, image_size))
        labels.append(np.array([index[name] for name, _, _ in objects], dtype=np.int64))
        difficult.append(np.array([hard for _, _, hard in objects], dtype=bool))
        paths.append(str(path))
    return BoxSet(images, boxes, labels, difficult, list(names), paths)


def write_voc(s: BoxSet, root: str | Path, split: str) -> None:
    """Write a BoxSet as a VOC year folder's split (JPEG quality 95; ids <split>_<index>)."""
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{split}_{i:06d}" for i in range(len(s))]
    for image_id, image, boxes, labels, difficult in zip(ids, s.images, s.boxes, s.labels, s.difficult):
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        objects = "".join(
            f"<object><name>{s.class_names[label]}</name><difficult>{int(hard)}</difficult><bndbox>"
            f"<xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>"
            for (x1, y1, x2, y2), label, hard in zip(boxes.tolist(), labels.tolist(), difficult.tolist())
        )
        height, width = image.shape[:2]
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>\n"
        )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


# --- the embedded synthetic source ------------------------------------------------------------


def generate_shapes(n: int, image_size: int = 32, seed: int = 0, max_objects: int = 3) -> BoxSet:
    """n seeded images of image_size^2 px, each with 1..max_objects glyphs (the 4 classes of
    GLYPHS) at random positions and scales, boxes tight around each glyph.

    As the single-glyph task: light glyphs (grey 0.6-1.0 per image) on a dark background
    (0-0.4 per image) under Gaussian pixel noise (std 0.25); a glyph cell is 2 or 3 px (a 10
    or 15 px glyph), a new glyph overlapping an earlier one's box is redrawn elsewhere (up to
    20 tries, then left out). Same arguments, same set on any machine (numpy's PCG64)."""
    if image_size < 12:
        raise DataError(f"shapes: image_size must be at least 12 px (a glyph is 10 px), got {image_size}")
    rng = np.random.default_rng(seed)
    names = list(GLYPHS)
    masks = [np.array([[c == "#" for c in row] for row in GLYPHS[name]], dtype=np.float32) for name in names]
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    boxes, labels = [], []
    for i in range(n):
        background, foreground = rng.uniform(0.0, 0.4), rng.uniform(0.6, 1.0)
        canvas = np.full((image_size, image_size), background, dtype=np.float32)
        placed: list[list[float]] = []
        kinds: list[int] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            kind, cell = int(rng.integers(len(names))), int(rng.integers(2, 4))
            side = 5 * cell
            if side > image_size:
                cell, side = 2, 10
            for _try in range(20):
                x, y = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
                box = [float(x), float(y), float(x + side), float(y + side)]
                if all(box[2] <= p[0] or p[2] <= box[0] or box[3] <= p[1] or p[3] <= box[1] for p in placed):
                    glyph = np.kron(masks[kind], np.ones((cell, cell), dtype=np.float32))
                    region = canvas[y : y + side, x : x + side]
                    region[:] = np.where(glyph > 0, foreground, region)
                    placed.append(box)
                    kinds.append(kind)
                    break
        noisy = canvas + rng.normal(0.0, 0.25, size=canvas.shape).astype(np.float32)
        images[i] = np.repeat(np.clip(noisy * 255 + 0.5, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        boxes.append(np.array(placed, dtype=np.float32).reshape(-1, 4))
        labels.append(np.array(kinds, dtype=np.int64))
    difficult = [np.zeros(len(b), dtype=bool) for b in boxes]
    return BoxSet(images, boxes, labels, difficult, names, [f"shapes/{i}" for i in range(n)])


def load_box_source(
    source: str,
    root: str,
    image_size: int,
    seed: int,
    *,
    train_split: str = "trainval",
    test_split: str = "test",
    n_train: int = 1000,
    n_test: int = 500,
) -> tuple[BoxSet, BoxSet]:
    """A params source spec -> (train, test).

    shapes: n_train + n_test generated images (generate_shapes with `seed`; root unused).
    voc:    root is a VOC year folder, or several joined by '+' whose train splits are
            concatenated (VOC07+12: 'VOCdevkit/VOC2007+VOCdevkit/VOC2012'); the test split
            is read from the first. The classes are the train split's."""
    if source == "shapes":
        both = generate_shapes(n_train + n_test, image_size, seed)
        return _rows(both, slice(0, n_train)), _rows(both, slice(n_train, n_train + n_test))
    if source != "voc":
        raise DataError(f"box source {source!r}: expected one of {', '.join(BOX_SOURCES)}")
    roots = [r for r in str(root).split("+") if r.strip()]
    if not roots:
        raise DataNotFoundError("voc: needs a root (a VOC year folder, or several joined by '+')")
    parts = [load_voc(roots[0], train_split, image_size)]
    parts += [load_voc(r, train_split, image_size, parts[0].class_names) for r in roots[1:]]
    train = _concat(parts)
    return train, load_voc(roots[0], test_split, image_size, train.class_names)


def _rows(s: BoxSet, rows: slice) -> BoxSet:
    return BoxSet(s.images[rows], s.boxes[rows], s.labels[rows], s.difficult[rows], s.class_names, s.paths[rows])


def _concat(parts: list[BoxSet]) -> BoxSet:
    return BoxSet(
        np.concatenate([p.images for p in parts]),
        [b for p in parts for b in p.boxes],
        [b for p in parts for b in p.labels],
        [b for p in parts for b in p.difficult],
        parts[0].class_names,
        [x for p in parts for x in p.paths],
    )


# --- Parquet ----------------------------------------------------------------------------------


def write_boxes(path: str | Path, s: BoxSet) -> None:
    """One split -> a Parquet table (pixels HWC bytes, boxes flattened [4 M], labels, difficult,
    path), the image size and class names in its metadata; written atomically."""
    _, height, width, _ = s.images.shape if len(s) else (0, 0, 0, 3)
    meta = {"format": BOX_FORMAT, "height": str(height), "width": str(width), "class_names": json.dumps(s.class_names)}
    table = pa.table(
        {
            "pixels": pa.array([image.tobytes() for image in s.images], pa.binary()),
            "boxes": pa.array([b.reshape(-1).tolist() for b in s.boxes], pa.list_(pa.float32())),
            "labels": pa.array([b.tolist() for b in s.labels], pa.list_(pa.int32())),
            "difficult": pa.array([b.tolist() for b in s.difficult], pa.list_(pa.bool_())),
            "path": pa.array(s.paths, pa.string()),
        }
    ).replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
