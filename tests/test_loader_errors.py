"""Bad inputs stop the loader with an error that names the file: a missing or malformed manifest, stats or mean
image, a missing or truncated shard, a corrupt JPEG or a missing member, and options the shards cannot serve."""

from __future__ import annotations

import os
import shutil
import tarfile

import pytest
from coded_shards import sample_members, write_coded_build, write_shard

from pipeline import ImageNetLoader
from pipeline.contract import ContractError
from pipeline.errors import LoaderError, NoShardsError, ShardError

FAST = dict(device="cpu", num_threads=1, batch_size=4, crop_size=64, shuffle_buffer=8)


def consume(root, **options) -> int:
    loader = ImageNetLoader(str(root), **{**FAST, **options})
    return sum(len(labels) for _ in range(2) for _, labels in loader)


@pytest.fixture
def copy_of(coded_build, tmp_path):
    root = tmp_path / "build"
    shutil.copytree(coded_build.root, root)
    return root


def member_offset(shard: str, member: str) -> tuple[int, int]:
    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
        return info.offset_data, info.size


def test_corrupt_jpeg_injected_into_a_shard_names_shard_and_key(copy_of):
    shard = str(copy_of / "train" / "train-000002.tar")  # samples 14..20
    offset, size = member_offset(shard, "00000017.jpg")
    with open(shard, "r+b") as f:  # same size: the manifest's byte count still matches
        f.seek(offset + 600)
        f.write(b"\xff\xd9" + b"\x00" * (size - 700))
    with pytest.raises(ShardError) as caught:
        consume(copy_of, split="train")
    assert caught.value.shard == shard and caught.value.key == "00000017"
    assert "train-000002.tar" in str(caught.value) and "00000017" in str(caught.value)


def test_a_sample_without_its_label_member_is_an_error(tmp_path):
    def drop_label(index, members):
        return {k: v for k, v in members.items() if not (index == 9 and k == "lbl")}

    build = write_coded_build(tmp_path / "b", mutate=drop_label)
    with pytest.raises(ShardError) as caught:
        consume(build.root, split="train")
    assert caught.value.shard.endswith("train/train-000001.tar")  # samples 7..13
    assert "train-000001" in str(caught.value)


def test_truncated_shard_of_a_build_is_named_before_reading(copy_of):
    shard = copy_of / "train" / "train-000003.tar"
    os.truncate(shard, os.path.getsize(shard) // 2)
    with pytest.raises(ShardError, match="train-000003.tar.*truncated"):
        consume(copy_of, split="train")


def test_truncated_foreign_shard_is_named_by_the_reader(tmp_path):
    for i in range(2):
        write_shard(
            str(tmp_path / "train" / f"part-{i}.tar"), [(f"{i}{k:03d}", sample_members(k, k)) for k in range(6)], False
        )
    shard = tmp_path / "train" / "part-1.tar"
    os.truncate(shard, os.path.getsize(shard) * 2 // 3)
    with pytest.raises(LoaderError) as caught:
        consume(tmp_path, split="train", normalization="channel", mean=(0.5,) * 3, std=(0.25,) * 3, lighting_std=0)
    assert "part-1.tar" in str(caught.value)


def test_a_failed_loader_does_not_hang_or_go_on(copy_of):
    shard = str(copy_of / "val" / "val-000001.tar")
    offset, size = member_offset(shard, "00001010.jpg")
    with open(shard, "r+b") as f:
        f.seek(offset + 2)
        f.write(os.urandom(size - 4))
    loader = ImageNetLoader(str(copy_of), split="val", **FAST)
    with pytest.raises(ShardError):
        list(loader)
    with pytest.raises(LoaderError, match="failed earlier"):
        list(loader)


@pytest.mark.parametrize("name", ["stats.json", "mean_image.npy"])
def test_missing_statistics_name_the_file(copy_of, name):
    os.remove(copy_of / name)
    with pytest.raises(ContractError, match=name):
        consume(copy_of, split="train")


@pytest.mark.parametrize("name", ["stats.json", "manifest.json"])
def test_malformed_json_names_the_file(copy_of, name):
    (copy_of / name).write_text('{"format_version": 1, "mean": [0.5')
    with pytest.raises(ContractError, match=name):
        consume(copy_of, split="train")


def test_missing_manifest_is_an_error_when_the_format_is_ours(copy_of):
    os.remove(copy_of / "manifest.json")
    with pytest.raises(ContractError, match="manifest.json"):
        consume(copy_of, split="train", format="contract")


def test_no_shards_names_the_root_and_split(tmp_path):
    with pytest.raises(NoShardsError, match=f"{tmp_path}.*'val'"):
        consume(tmp_path, split="val", normalization="channel", mean=(0.5,) * 3, std=(0.25,) * 3)


def test_a_shard_named_by_the_manifest_but_missing_is_named(copy_of):
    os.remove(copy_of / "val" / "val-000001.tar")
    with pytest.raises(ShardError, match="val-000001.tar"):
        consume(copy_of, split="val")


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="ten_crop"):
        ImageNetLoader("unused", split="train", ten_crop=True)
    with pytest.raises(TypeError, match="colour"):
        ImageNetLoader("unused", colour="red")


def test_dali_messages_that_name_a_member_are_mapped_to_shard_and_key(coded_build):
    from pipeline.diagnose import explain_failure
    from pipeline.sources import find_shards

    shards = find_shards(coded_build.root, "train")
    message = f"Error in CPU operator\nencountered:\nFailed to decode sample #3 : {shards.paths[4]}:82432:00000031.jpg\n"
    error = explain_failure(RuntimeError(message), shards)
    assert isinstance(error, ShardError) and (error.shard, error.key) == (shards.paths[4], "00000031")
    assert "Failed to decode sample #3" in str(error)


def test_the_search_for_an_unnamed_bad_shard_is_bounded_in_time(copy_of):
    from pipeline.diagnose import explain_failure
    from pipeline.sources import find_shards

    shard = str(copy_of / "train" / "train-000004.tar")
    offset, size = member_offset(shard, "00000030.jpg")
    with open(shard, "r+b") as f:
        f.seek(offset + 600)
        f.write(b"\xff\xd9" + b"\x00" * (size - 700))
    shards = find_shards(str(copy_of), "train")
    unnamed = RuntimeError("Error in CPU operator\nencountered:\nnvImageCodec failure: '#3'\n")
    found = explain_failure(unnamed, shards)
    assert isinstance(found, ShardError) and (found.shard, found.key) == (shard, "00000030")
    gave_up = explain_failure(unnamed, shards, budget_s=0.0)  # checks one shard, then stops
    assert type(gave_up) is LoaderError and "within 0 s" in str(gave_up) and "nvImageCodec failure" in str(gave_up)
