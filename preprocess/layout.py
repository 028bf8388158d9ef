"""Finds the images and labels of an ImageNet-style source tree (local path or fsspec URL).

Supported layouts (`--layout auto` picks the one present and refuses to guess between two):
- ``imagenet``: ``src/train/<wnid>/*`` and ``src/val/<wnid>/*``, or a flat ``src/val/`` plus
  ``--val-labels FILE``: lines ``<file name> <wnid>``, or the devkit's ILSVRC2012_validation_ground_truth.txt
  (one devkit class id per line, mapped to wnids through the devkit's meta.mat: see `preprocess.devkit`);
- ``kaggle``: the Kaggle download, ``src/ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/}``,
  ``src/LOC_val_solution.csv`` (the class is the first token of PredictionString) and
  ``src/LOC_synset_mapping.txt`` (class names).

Class index = position of the wnid in the sorted list of train class folders (torchvision's convention),
whatever the number of classes. Hidden entries (``.DS_Store``, ``._*``) are OS metadata and ignored.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import fsspec

from preprocess.devkit import default_meta_path, is_devkit_ground_truth, read_ground_truth, read_synset_ids
from preprocess.errors import LayoutError
from preprocess.listing import Listing, SourceItem

__all__ = ["LayoutError", "SourceItem", "SourceDataset", "discover", "LAYOUTS"]

LAYOUTS = ("auto", "imagenet", "kaggle")
KAGGLE_DATA = "ILSVRC/Data/CLS-LOC"
KAGGLE_VAL_SOLUTION = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
WNID = re.compile(r"n\d{8}")
LISTING_THREADS = 32  # folder listings in flight: round trips to object storage, not CPU work


@dataclass(frozen=True)
class SourceDataset:
    layout: str
    wnids: tuple[str, ...]  # sorted; the class index is the position here
    names: dict[str, str]  # wnid -> human-readable name (the wnid itself when none is known)
    splits: dict[str, Listing]  # split -> items: train sorted by path, val by class folder or file stem

    @cached_property
    def label(self) -> dict[str, int]:
        """wnid -> class index."""
        return {w: i for i, w in enumerate(self.wnids)}

    def classes(self) -> list[dict]:
        return [{"index": i, "wnid": w, "name": self.names.get(w, w)} for i, w in enumerate(self.wnids)]


def _visible(path: str) -> bool:
    return not posixpath.basename(path.rstrip("/")).startswith(".")


def _listdir(fs, path: str) -> tuple[list[str], list[str]]:
    """(subdirectories, files) of `path`, hidden entries left out, both sorted."""
    dirs, files = [], []
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/")
        if not _visible(name):
            continue
        (dirs if entry["type"] == "directory" else files).append(name)
    return sorted(dirs), sorted(files)


def _class_folders(fs, root: str, split_dir: str, listing: Listing, path_order: bool) -> list[str]:
    """Adds every class folder's files to `listing`; returns the class folder names (wnids), sorted.

    Folders are listed in parallel (on object storage each listing is a round trip: 21,841 of them one after
    another take many minutes) and added in order, by path (train, as `sorted(paths)` would give) or by name.
    """
    dirs, stray = _listdir(fs, split_dir)
    if not dirs:
        raise LayoutError(f"{split_dir} holds no class folders (expected <wnid>/ subfolders)")
    if stray:
        raise LayoutError(f"{split_dir} holds files beside its class folders: {[posixpath.basename(p) for p in stray[:5]]}")
    _check_wnid_names(split_dir, [posixpath.basename(d) for d in dirs])
    if path_order:  # "cat/x" sorts after "cat-a/y" although "cat" < "cat-a"
        dirs = sorted(dirs, key=lambda d: d + "/")
    empty = []
    for d, (subdirs, files) in zip(dirs, _in_parallel(lambda d: _listdir(fs, d), dirs), strict=True):
        if subdirs:
            raise LayoutError(f"class folder {d} holds subfolders: {[posixpath.basename(p) for p in subdirs[:5]]}")
        if not files:
            empty.append(posixpath.basename(d))
        listing.add_folder(d, (posixpath.basename(f) for f in files), posixpath.basename(d))
    if empty:
        raise LayoutError(f"empty class folders in {split_dir}: {sorted(empty)}")
    return sorted(posixpath.basename(d) for d in dirs)


def _in_parallel(fn, items: list) -> Iterator:
    """fn over items on a thread pool, results in order, with a bounded number of results waiting."""
    threads = LISTING_THREADS
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _check_wnid_names(split_dir: str, names: list[str]) -> None:
    """Class folders are wnids (n01440764) or free names, not a mix: a mix means a stray folder (n0000_tmp/)."""
    odd = [n for n in names if not WNID.fullmatch(n)]
    if odd and len(odd) < len(names):
        raise LayoutError(f"{split_dir}: folders that are not wnids beside wnid class folders: {odd[:10]}")


def _read_text(fs, path: str) -> str:
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8")


def _parse_labels_file(text: str, path: str) -> dict[str, str]:
    """Lines ``<file name> <wnid>`` of the file at `path` -> {file stem: wnid}."""
    labels = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise LayoutError(f"{path}:{lineno}: expected '<file name> <wnid>', got {line!r}")
        labels[_stem(parts[0])] = parts[1]
    return labels


def _parse_kaggle_solution(fs, path: str) -> dict[str, str]:
    labels = {}
    reader = csv.reader(io.StringIO(_read_text(fs, path)))
    header = next(reader, None)
    if header != ["ImageId", "PredictionString"]:
        raise LayoutError(f"{path}: expected header 'ImageId,PredictionString', got {header}")
    for lineno, row in enumerate(reader, 2):
        if len(row) != 2 or not row[1].split():
            raise LayoutError(f"{path}:{lineno}: malformed row {row}")
        tokens = row[1].split()
        wnids = set(tokens[::5])  # groups of (wnid, xmin, ymin, xmax, ymax)
        if len(wnids) != 1:
            raise LayoutError(f"{path}:{lineno}: boxes of {row[0]} disagree on the class: {sorted(wnids)}")
        labels[row[0]] = tokens[0]
    return labels


def _parse_names(fs, path: str) -> dict[str, str]:
    names = {}
    for line in _read_text(fs, path).splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name.strip() or wnid
    return names


def _stem(name: str) -> str:
    base = posixpath.basename(name)
    return base[: base.rfind(".")] if "." in base else base


def _flat_files(fs, val_dir: str) -> list[str]:
    subdirs, files = _listdir(fs, val_dir)
    if subdirs:
        raise LayoutError(f"{val_dir} mixes class folders and flat files; expected one or the other")
    return files


def _flat_val(listing: Listing, val_dir: str, files: list[str], labels: dict[str, str], labels_path: str) -> None:
    by_stem = {_stem(f): f for f in files}
    unlabelled = sorted(set(by_stem) - set(labels))
    missing = sorted(set(labels) - set(by_stem))
    if unlabelled or missing:
        raise LayoutError(
            f"{labels_path} and {val_dir} disagree: {len(unlabelled)} images without a label "
            f"(e.g. {unlabelled[:3]}), {len(missing)} labels without an image (e.g. {missing[:3]})"
        )
    stems = sorted(by_stem)
    listing.add_folder(val_dir, [posixpath.basename(by_stem[s]) for s in stems], [labels[s] for s in stems])


def _detect(fs, root: str) -> str:
    present = [
        name
        for name, marker in (("imagenet", "train"), ("kaggle", KAGGLE_DATA + "/train"))
        if fs.isdir(posixpath.join(root, marker))
    ]
    if len(present) == 1:
        return present[0]
    if not present:
        raise LayoutError(
            f"{root} is not an ImageNet layout: expected train/<wnid>/ (with val/) or the Kaggle "
            f"{KAGGLE_DATA}/train/<wnid>/; pass --layout to say which"
        )
    raise LayoutError(f"{root} matches several layouts {present}; pass --layout to choose one")


def discover(
    src: str,
    *,
    layout: str = "auto",
    val_labels: str | None = None,
    class_names: str | None = None,
    devkit_meta: str | None = None,
    with_val: bool = True,
):
    """Lists every input image with its class; `with_val=False` lists train alone (a benchmark needs no val
    labels, so a Kaggle tree without its val solution file is still usable).

    Raises:
        LayoutError: an unknown or ambiguous layout, empty class folders, val classes unknown to train,
            or a labels file that disagrees with the images.
    """
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    fs, root = fsspec.core.url_to_fs(src)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise LayoutError(f"source {src!r} is not a directory")
    if layout == "auto":
        layout = _detect(fs, root)
    base = root if layout == "imagenet" else posixpath.join(root, KAGGLE_DATA)
    train_dir, val_dir = posixpath.join(base, "train"), posixpath.join(base, "val")
    if not fs.isdir(train_dir):
        raise LayoutError(f"{layout} layout needs {train_dir}/<wnid>/")
    train, val = Listing(root), Listing(root)
    wnids = tuple(_class_folders(fs, root, train_dir, train, path_order=True))

    if not with_val:
        pass  # train alone: no val folder or labels file is read
    elif layout == "kaggle":
        solution = posixpath.join(root, KAGGLE_VAL_SOLUTION)
        if not fs.exists(solution):
            raise LayoutError(f"kaggle layout needs {solution}")
        _flat_val(val, val_dir, _flat_files(fs, val_dir), _parse_kaggle_solution(fs, solution), solution)
    elif val_labels is not None:
        text, files = _read_text(fs, val_labels), _flat_files(fs, val_dir)
        if is_devkit_ground_truth(text):
            ids = read_synset_ids(fs, devkit_meta or default_meta_path(val_labels))
            labels = read_ground_truth(text, val_labels, ids, [_stem(f) for f in files])
        else:
            labels = _parse_labels_file(text, val_labels)
        _flat_val(val, val_dir, files, labels, val_labels)
    elif fs.isdir(val_dir):
        subdirs, files = _listdir(fs, val_dir)
        if files and not subdirs:
            raise LayoutError(f"{val_dir} is flat: pass --val-labels FILE (lines '<file name> <wnid>')")
        _class_folders(fs, root, val_dir, val, path_order=False)
    unknown = sorted(val.wnids() - set(wnids))
    if unknown:
        raise LayoutError(f"val labels name classes that have no train folder: {unknown[:10]}")

    names_path = class_names or posixpath.join(root, SYNSET_MAPPING)
    names = _parse_names(fs, names_path) if class_names or fs.exists(names_path) else {}
    return SourceDataset(layout=layout, wnids=wnids, names=names, splits={"train": train, "val": val})
