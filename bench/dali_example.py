"""The loader a DALI user copies: the graph of DALI's own ImageNet training example, on our shards.

fn.readers.webdataset -> fn.decoders.image_random_crop (random area 0.1-1, aspect 3/4-4/3) -> fn.resize to the
crop size -> fn.crop_mirror_normalize (random flip, ImageNet mean/std, float CHW), batches through DALI's
PyTorch iterator. No PCA lighting and no mean image: it does less work than ours, so it is the peer to beat.
"""

from __future__ import annotations

from pipeline.contract import IMAGE_EXT, LABEL_EXT, load_manifest

_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def dali_example_batches(root: str, threads: int, batch: int, crop: int):
    """An endless iterator of (images float32 [batch, 3, crop, crop], labels) in DALI's CPU mode."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    split = load_manifest(root).splits["train"]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, seed=1)
    def graph():
        jpegs, labels = fn.readers.webdataset(
            paths=split.shard_paths(root, "train"), index_paths=split.index_paths(root, "train"),
            ext=[IMAGE_EXT, LABEL_EXT], dtypes=[types.UINT8, types.INT64], random_shuffle=True, initial_fill=3000,
            name="Reader",
        )  # fmt: skip
        images = fn.decoders.image_random_crop(
            jpegs, device="cpu", output_type=types.RGB, random_aspect_ratio=[0.75, 4 / 3], random_area=[0.1, 1.0],
            num_attempts=100,
        )  # fmt: skip
        images = fn.resize(images, resize_x=crop, resize_y=crop, interp_type=types.INTERP_TRIANGULAR)
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", crop=(crop, crop), mean=_MEAN, std=_STD,
            mirror=fn.random.coin_flip(probability=0.5),
        )  # fmt: skip
        return images, labels

    pipe = graph()
    pipe.build()
    loader = DALIGenericIterator(pipe, ["images", "labels"], reader_name="Reader", auto_reset=True,
                                 last_batch_policy=LastBatchPolicy.DROP)  # fmt: skip
    while True:
        for out in loader:
            yield out[0]["images"], out[0]["labels"]
