"""The data: a source -> prepared Parquet files (the prepare stage) -> tensors (every later stage).

Reading back (what the stages after prepare import):
    prepared.py      the prepared layout; load_prepared, read_manifest, the SSL / labelled rows

Preparing (stages.prepare only):
    sources.py       load_source: the sources (digits, imagefolder, torchvision) and their registry
    image_folder.py  the imagefolder source: tarball extraction, then scan, decode, split
    scan.py          listing an image-folder tree, nothing decoded (config's check uses it too)
    decode.py        pooled decoding of image files, any mode -> RGB
    resize.py        the size policy: centre crop to a square, bilinear resize
    splits.py        train/test rows, base/novel classes, class subsets
    image_set.py     ImageSet, one split in memory: uint8 [N, H, W, 3], labels [N]
    write.py         write_prepared: ImageSets -> Parquet tables + manifest

Shared by both, and by config:
    specs.py         SOURCES, DIGITS_CLASSES, TARBALL_SUFFIXES, DataError, warn

This file imports nothing: importing any module of the package runs it, and the stages
after prepare must run only prepared.py (and this file) of it.
"""
