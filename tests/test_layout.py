"""Source layouts, labels and class order."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_sample_config, write
from preprocess.layout import LayoutError, discover
from preprocess.sample import make_sample, sample_wnid


def sample(tmp_path, layout: str):
    make_sample(tiny_sample_config(tmp_path / layout, layout=layout, large_images=0, train_per_class=2))
    return tmp_path / layout


def expected_val(dataset) -> dict[str, str]:
    """File stem -> wnid, from the names make-sample gives val files (class number in the name)."""
    return {os.path.basename(i.path).split(".")[0]: i.wnid for i in dataset.splits["val"]}


@pytest.mark.parametrize("layout", ["imagenet", "kaggle", "flat-val"])
def test_each_layout_finds_every_image_with_its_class(tmp_path, layout):
    src = sample(tmp_path, layout)
    labels = str(src / "val_labels.txt") if layout == "flat-val" else None
    dataset = discover(str(src), val_labels=labels)
    assert dataset.layout == ("kaggle" if layout == "kaggle" else "imagenet")
    assert dataset.wnids == tuple(sample_wnid(c) for c in range(3))
    assert len(dataset.splits["train"]) == 3 * 2 and len(dataset.splits["val"]) == 3 * 3
    for item in dataset.splits["train"]:
        assert os.path.basename(os.path.dirname(item.path)) == item.wnid
    for stem, wnid in expected_val(dataset).items():  # make-sample names val files ILSVRC2012_val_<class:03d><i:05d>
        assert wnid == sample_wnid(int(stem[len("ILSVRC2012_val_") :][:3]))
    assert dataset.names[sample_wnid(1)] == "synthetic class 1"


def test_class_index_is_sorted_wnid_order_for_any_number_of_classes(tmp_path):
    for wnid in ["n03000000", "n01000000", "n02000000", "n00000007"]:
        write(tmp_path / "train" / wnid / "a.JPEG", b"x")
    dataset = discover(str(tmp_path))
    assert dataset.wnids == ("n00000007", "n01000000", "n02000000", "n03000000")
    assert dataset.label == {"n00000007": 0, "n01000000": 1, "n02000000": 2, "n03000000": 3}
    assert dataset.splits["val"] == []


def test_kaggle_label_is_first_token_and_names_come_from_the_mapping(tmp_path):
    src = sample(tmp_path, "kaggle")
    csv = (src / "LOC_val_solution.csv").read_text().splitlines()
    assert csv[1].count(" ") == 9  # two boxes per image in the fixture
    dataset = discover(str(src))
    assert dataset.classes()[2] == {"index": 2, "wnid": sample_wnid(2), "name": "synthetic class 2"}


def test_kaggle_boxes_that_disagree_are_an_error(tmp_path):
    src = sample(tmp_path, "kaggle")
    lines = (src / "LOC_val_solution.csv").read_text().splitlines()
    image, boxes = lines[1].split(",")
    first = boxes.split()[0]
    other = sample_wnid(1) if first != sample_wnid(1) else sample_wnid(2)
    lines[1] = f"{image},{first} 1 2 3 4 {other} 1 2 3 4"
    (src / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(LayoutError, match=r"LOC_val_solution.csv:2: boxes of .* disagree"):
        discover(str(src))


def test_labels_and_images_that_do_not_match_are_counted(tmp_path):
    src = sample(tmp_path, "flat-val")
    labels = src / "val_labels.txt"
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(rows[1:] + ["ghost.JPEG n90000000"]) + "\n")
    with pytest.raises(LayoutError, match=r"1 images without a label .* 1 labels without an image"):
        discover(str(src), val_labels=str(labels))


def test_flat_val_without_labels_asks_for_them(tmp_path):
    src = sample(tmp_path, "flat-val")
    with pytest.raises(LayoutError, match="--val-labels"):
        discover(str(src))


def test_ambiguous_and_unknown_layouts_ask_for_layout(tmp_path):
    src = sample(tmp_path, "kaggle")
    write(src / "train" / "n90000000" / "a.JPEG", b"x")
    with pytest.raises(LayoutError, match="matches several layouts.*--layout"):
        discover(str(src))
    assert discover(str(src), layout="kaggle").layout == "kaggle"
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="not an ImageNet layout.*--layout"):
        discover(str(tmp_path / "empty"))


def test_empty_class_folders_are_listed(tmp_path):
    write(tmp_path / "train" / "n01" / "a.JPEG", b"x")
    (tmp_path / "train" / "n02").mkdir()
    (tmp_path / "train" / "n03").mkdir()
    with pytest.raises(LayoutError, match=r"empty class folders .*\['n02', 'n03'\]"):
        discover(str(tmp_path))


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    write(tmp_path / "train" / "n01" / "a.JPEG", b"x")
    write(tmp_path / "val" / "n99" / "b.JPEG", b"x")
    with pytest.raises(LayoutError, match="no train folder.*n99"):
        discover(str(tmp_path))


def test_hidden_files_are_ignored(tmp_path):
    write(tmp_path / "train" / "n01" / "a.JPEG", b"x")
    write(tmp_path / "train" / "n01" / ".DS_Store", b"x")
    write(tmp_path / "train" / ".DS_Store", b"x")
    dataset = discover(str(tmp_path))
    assert [os.path.basename(i.path) for i in dataset.splits["train"]] == ["a.JPEG"]


def test_fsspec_url_source(tmp_path):
    src = sample(tmp_path, "imagenet")
    dataset = discover(f"file://{src}")
    assert len(dataset.splits["train"]) == 6 and len(dataset.splits["val"]) == 9


def test_make_sample_is_deterministic_for_a_seed(tmp_path):
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    trees = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_sample(tiny_sample_config(tmp_path / name, seed=seed, large_images=0, train_per_class=2))
        trees.append(files(tmp_path / name))
    assert trees[0] == trees[1] and trees[0] != trees[2]
    sizes = {Image.open(tmp_path / "a" / p).size for p in trees[0] if str(p).endswith(".JPEG")}
    assert len(sizes) > 5  # varied sizes and aspect ratios


def test_a_stray_folder_beside_wnid_folders_is_listed(tmp_path):
    for name in ("n01000000", "n02000000", "n0000_tmp"):
        write(tmp_path / "train" / name / "a.JPEG", b"x")
    with pytest.raises(LayoutError, match=r"not wnids beside wnid class folders: \['n0000_tmp'\]"):
        discover(str(tmp_path))
    for name in ("cat", "dog"):  # free class names are fine when none is a wnid
        write(tmp_path / "other" / "train" / name / "a.jpg", b"x")
    assert discover(str(tmp_path / "other")).wnids == ("cat", "dog")


def devkit(src, ids: dict[int, str], ground_truth: list[str]):
    """Adds the devkit's ground-truth file and a meta.mat (written the way MATLAB stores the table) to `src`."""
    from scipy.io import savemat

    rows = np.array(
        [(i, w, 0) for i, w in ids.items()], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
    )
    savemat(src / "meta.mat", {"synsets": rows})
    (src / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{v}\n" for v in ground_truth))
    return src, str(src / "ILSVRC2012_validation_ground_truth.txt")


def test_devkit_ids_are_mapped_to_sorted_wnid_indices(tmp_path):
    """L3: devkit id order (1 = the LAST sorted wnid here) differs from sorted order; labels follow the wnid."""
    ids = {1: sample_wnid(2), 2: sample_wnid(0), 3: sample_wnid(1)}
    by_wnid = {w: i for i, w in ids.items()}
    src = sample(tmp_path, "flat-val")
    truth = [line.split() for line in (src / "val_labels.txt").read_text().splitlines()]
    src, gt = devkit(src, ids, [str(by_wnid[w]) for _, w in sorted(truth)])
    dataset = discover(str(src), val_labels=gt)
    assert {os.path.basename(i.path): i.wnid for i in dataset.splits["val"]} == dict(truth)
    assert [dataset.label[i.wnid] for i in dataset.splits["val"][:3]] == [dataset.label[w] for _, w in sorted(truth)[:3]]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda gt: gt[:-1], r"has 8 labels for 9 val images"),
        (lambda gt: gt[:4] + ["0"] + gt[5:], r"ground_truth.txt:5: class id 0 is not in the devkit's ids 1..3"),
        (lambda gt: gt[:2] + ["1001"] + gt[3:], r"ground_truth.txt:3: class id 1001"),
        (lambda gt: ["n01440764"] + gt[1:], r"ground_truth.txt:1: expected an integer class id"),
    ],
)
def test_devkit_ground_truth_errors_name_the_line(tmp_path, edit, message):
    """L2: a missing line, an id of 0 or 1001, a non-integer: an error with the line number, never a guess."""
    ids = {1: sample_wnid(0), 2: sample_wnid(1), 3: sample_wnid(2)}
    src, gt = devkit(sample(tmp_path, "flat-val"), ids, [str(1 + i % 3) for i in range(9)])
    lines = (src / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
    (src / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(LayoutError, match=message):
        discover(str(src), val_labels=gt)


def test_devkit_ground_truth_without_meta_asks_for_it(tmp_path):
    src, gt = devkit(sample(tmp_path, "flat-val"), {1: sample_wnid(0)}, ["1"] * 9)
    os.remove(src / "meta.mat")
    with pytest.raises(LayoutError, match=r"needs the devkit's meta.mat .* --devkit-meta"):
        discover(str(src), val_labels=gt)


def test_devkit_labels_reach_the_shards_as_sorted_indices(tmp_path):
    """L3 end to end: build-shards from the devkit's ids writes each val sample's sorted-wnid index in .cls and .lbl."""
    import json
    import tarfile

    from click.testing import CliRunner

    from pipeline.contract import decode_label
    from preprocess.cli import main

    ids = {1: sample_wnid(2), 2: sample_wnid(0), 3: sample_wnid(1)}  # devkit order differs from sorted order
    by_wnid = {w: i for i, w in ids.items()}
    src = sample(tmp_path, "flat-val")
    truth = dict(line.split() for line in (src / "val_labels.txt").read_text().splitlines())
    src, gt = devkit(src, ids, [str(by_wnid[truth[name]]) for name in sorted(truth)])
    out = tmp_path / "shards"
    result = CliRunner().invoke(main, ["build-shards", "--src", str(src), "--out", str(out), "--val-labels", gt,
                                       "--workers", "1", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    seen = 0
    for shard in sorted((out / "val").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in members.items():
            if name.endswith(".json"):
                key, meta = name[: -len(".json")], json.loads(data)
                expected = sorted(ids.values()).index(truth[os.path.basename(meta["src"])])
                assert int(members[f"{key}.cls"]) == expected == decode_label(members[f"{key}.lbl"])
                seen += 1
    assert seen == len(truth) == 9
