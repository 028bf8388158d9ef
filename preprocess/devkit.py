"""Validation labels in the ILSVRC-2012 devkit's form: one integer per line, in the devkit's own class ids.

``ILSVRC2012_validation_ground_truth.txt`` holds, for val image i (``ILSVRC2012_val_%08d``), the
ILSVRC2012_ID of its class, where 1 is n02119789 (kit fox): NOT the sorted-wnid index every tool trains on
(0 is n01440764). Using those integers as labels directly trains against scrambled targets without any
error, so they are only ever read through ``meta.mat``'s id -> wnid table, and the wnid then gets its
sorted index like every other layout. In sorted-index space val images 1..4 are classes 65, 970, 230, 809.
"""

from __future__ import annotations

import posixpath

from preprocess.errors import LayoutError

__all__ = ["is_devkit_ground_truth", "read_synset_ids", "read_ground_truth", "default_meta_path", "META_NAME"]

META_NAME = "meta.mat"


def is_devkit_ground_truth(text: str) -> bool:
    """A labels file is in the devkit's form when its lines hold one token (the other form has two)."""
    first = next((line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")), [])
    return len(first) == 1


def read_synset_ids(fs, path: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from the devkit's ``meta.mat`` (a MATLAB struct array named ``synsets``)."""
    from scipy.io import loadmat  # scipy comes with scikit-learn

    if not fs.exists(path):
        raise LayoutError(
            f"devkit ground truth needs the devkit's {META_NAME} to map its class ids to wnids; "
            f"put it at {path} or pass --devkit-meta"
        )
    with fs.open(path, "rb") as f:
        try:
            synsets = loadmat(f, squeeze_me=True)["synsets"]
            return {int(i): str(w) for i, w in zip(synsets["ILSVRC2012_ID"], synsets["WNID"], strict=True)}
        except (KeyError, ValueError, TypeError) as e:
            raise LayoutError(f"{path} is not a devkit meta.mat with a 'synsets' table: {e!r}") from e


def read_ground_truth(text: str, path: str, ids: dict[int, str], image_stems: list[str]) -> dict[str, str]:
    """{file stem: wnid} for the sorted val file stems, line i labelling the i-th image.

    Raises:
        LayoutError: a line that is not an integer or names no known class (with its line number), or a
            line count that differs from the number of images.
    """
    wnids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token:
            continue
        if not token.isdigit():
            raise LayoutError(f"{path}:{lineno}: expected an integer class id, got {token!r}")
        if int(token) not in ids:
            raise LayoutError(f"{path}:{lineno}: class id {token} is not in the devkit's ids {min(ids)}..{max(ids)}")
        wnids.append(ids[int(token)])
    if len(wnids) != len(image_stems):
        raise LayoutError(
            f"{path} has {len(wnids)} labels for {len(image_stems)} val images: they must pair up line by line"
        )
    return dict(zip(sorted(image_stems), wnids, strict=True))


def default_meta_path(labels_path: str) -> str:
    """The devkit ships meta.mat beside the ground-truth file (``ILSVRC2012_devkit_t12/data/``)."""
    return posixpath.join(posixpath.dirname(labels_path), META_NAME)
