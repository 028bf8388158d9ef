"""The shards are plain WebDataset: readable by the webdataset library and by DALI's reader (CPU mode)."""

from __future__ import annotations

import json

import numpy as np

from pipeline.contract import load_manifest


def expected_labels(out) -> dict[str, int]:
    """key -> label, from the json metadata, read with tarfile (independent of both readers)."""
    import tarfile

    labels = {}
    for split in ("train", "val"):
        for shard in load_manifest(str(out)).splits[split].shards:
            with tarfile.open(out / split / shard.name) as tar:
                for m in tar:
                    if m.name.endswith(".json"):
                        labels[f"{split}/{m.name.split('.')[0]}"] = json.loads(tar.extractfile(m).read())["label"]
    return labels


def test_plain_webdataset_reads_every_sample(tiny_build):
    import webdataset as wds

    out, _ = tiny_build
    manifest = load_manifest(str(out))
    expected = expected_labels(out)
    for split in ("train", "val"):
        urls = [str(p) for p in manifest.splits[split].shard_paths(str(out), split)]
        dataset = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("__key__", "jpg", "cls")
        seen = 0
        for key, image, cls in dataset:
            assert image.shape == (256, 256, 3) and image.dtype == np.uint8
            assert cls == expected[f"{split}/{key}"]
            seen += 1
        assert seen == manifest.splits[split].samples


def test_dali_cpu_pipeline_reads_images_and_binary_labels(tiny_build):
    from nvidia.dali import fn, pipeline_def, types

    out, _ = tiny_build
    manifest = load_manifest(str(out))
    split = manifest.splits["train"]

    @pipeline_def(batch_size=8, num_threads=2, device_id=None)
    def read():
        jpegs, labels = fn.readers.webdataset(
            paths=split.shard_paths(str(out), "train"),
            index_paths=split.index_paths(str(out), "train"),
            ext=["jpg", "lbl"],
            dtypes=[types.UINT8, types.INT64],
            missing_component_behavior="error",
        )
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB), labels

    pipe = read()
    pipe.build()
    labels_in_order = [label for key, label in sorted(expected_labels(out).items()) if key.startswith("train/")]
    seen = []
    while len(seen) < split.samples:
        images, labels = pipe.run()
        for i in range(len(images)):
            assert np.array(images[i]).shape == (256, 256, 3)
            seen.append(int(np.array(labels[i])[0]))
    assert seen[: split.samples] == labels_in_order
