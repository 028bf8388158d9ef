"""The DALI pipeline: reader, sharding and shuffling here; the augmentations come from `pipeline.augment`.

Shuffling (train). DALI's webdataset reader offers two shuffles and we use both:
- `shuffle_after_epoch=True` with `shuffle_after_epoch_seed` = the user's seed on EVERY rank: each epoch, the
  reader permutes the order of the shard files with the same permutation on all ranks, then every rank takes its
  slice of the resulting sample list, so the ranks stay disjoint and complete while the data that each rank (and
  each batch) sees changes every epoch.
- `random_shuffle=True` with a buffer of `shuffle_buffer` samples (seeded per rank) mixes samples across the
  several shards that pass through the buffer, so batches are not runs of one shard.
Together with the build's global shuffle of the sample order (the keys), that is a real reshuffle per epoch;
`shuffle_after_epoch` alone would only permute whole shards, and a buffer alone would keep each rank's slice fixed.
Val is read in order, each rank always the same slice (`stick_to_shard`), so passes are identical.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from pipeline.augment import (
    DALI_DTYPES,
    decode_image,
    decode_window,
    finish_crops,
    normalize_window,
    random_resized_window,
    start_node,
    ten_crops,
    translate_window,
)
from pipeline.config import LoaderConfig
from pipeline.finish import finished_by_kernel, mean_planes
from pipeline.kernels import parameter_block
from pipeline.lighting import draw_alphas, lighting_basis
from pipeline.mean_image import subtracted_by_torch
from pipeline.normalize import Normalization
from pipeline.sharding import DistInfo
from pipeline.sources import ShardSet
from pipeline.windows import center_start

__all__ = ["build_pipeline", "READER_NAME", "augmentation_seed"]

READER_NAME = "Reader"


def augmentation_seed(seed: int, rank: int) -> int:
    """Per-rank seed of the random operators: ranks must not draw the same crops for different images."""
    return (seed * 1_000_003 + rank * 7_919 + 1) % (2**31 - 1)


def read_samples(shards: ShardSet, cfg: LoaderConfig, dist: DistInfo):
    """-> (jpeg bytes, label): label is an int64 [1] (our .lbl) or the ASCII bytes of a foreign .cls."""
    ours = shards.format == "contract"
    return fn.readers.webdataset(
        paths=list(shards.paths),
        index_paths=list(shards.index_paths) if shards.index_paths else None,
        ext=["jpg", "lbl"] if ours else ["jpg;jpeg", "cls"],
        dtypes=[types.UINT8, types.INT64 if ours else types.UINT8],
        missing_component_behavior="error",  # never DALI's default: empty tensors for missing members
        num_shards=dist.world_size,
        shard_id=dist.rank,  # GLOBAL rank
        pad_last_batch=True,  # every rank: same batch count per epoch, and epochs start on a fresh batch
        random_shuffle=cfg.training,
        initial_fill=cfg.shuffle_buffer,
        shuffle_after_epoch=cfg.training,
        shuffle_after_epoch_seed=cfg.seed if cfg.training else None,  # the SAME on every rank
        stick_to_shard=not cfg.training,
        seed=augmentation_seed(cfg.seed, dist.rank),
        name=READER_NAME,
    )


def train_images(jpegs, cfg: LoaderConfig, norm: Normalization, dev: str, decoder: str, size: int, block):
    """-> (images, extras). Translate crops: finished float crops on the CPU; on the GPU uint8 HWC windows with
    extras (start [2], mirror [1][, alphas [1, 3]]) for `pipeline.finish.TorchFinisher`. The random parameters are
    drawn by CPU operators (DALI takes argument inputs such as the decoder's window only from the CPU), and the
    extras are copies of them moved to the GPU inside the graph, so torch receives them without a blocking copy.
    Random-resized crops: finished by DALI, no extras."""
    alphas = draw_alphas(cfg.lighting_std) if cfg.lighting_std > 0 else None
    if finished_by_kernel(cfg):
        mirror = fn.random.coin_flip(probability=0.5, dtype=types.INT32, shape=[1])
        start, shape = translate_window(size, cfg.crop_size)
        crops = decode_window(jpegs, start, shape, decoder)  # -> uint8 HWC window
        if dev == "gpu":
            return crops, tuple(node.gpu() for node in (start_node(start), mirror, alphas) if node is not None)
        return finish_crops(crops, start=start, mirror=mirror, alphas=alphas, block=block, layout=_layout(cfg)), ()
    mirror = fn.random.coin_flip(probability=0.5, dtype=types.INT32)
    start, shape = random_resized_window(size)
    images = fn.resize(decode_window(jpegs, start, shape, decoder), size=[cfg.crop_size, cfg.crop_size])
    images = normalize_window(
        images, norm, dev, start=start, shape=shape, crop=cfg.crop_size, mirror=mirror, alphas=alphas,
        dtype=DALI_DTYPES[cfg.dtype], layout=_layout(cfg),
    )  # fmt: skip
    return images, ()


def val_images(jpegs, cfg: LoaderConfig, norm: Normalization, dev: str, decoder: str, size: int, block):
    """-> (images, no extras): the center crop (finished on the CPU, uint8 for `TorchFinisher` on the GPU), or
    ten crops finished by DALI (whose mean image, if any, `pipeline.mean_image` subtracts)."""
    if cfg.ten_crop:
        images = decode_image(jpegs, decoder)  # -> uint8 HWC [size, size, 3]
        dtype = types.FLOAT if subtracted_by_torch(cfg, norm) else DALI_DTYPES[cfg.dtype]  # torch casts after
        return ten_crops(images, norm, size=size, crop=cfg.crop_size, dtype=dtype, layout=_layout(cfg)), ()
    mid = center_start(size, cfg.crop_size)
    crops = decode_window(jpegs, [mid, mid], [cfg.crop_size, cfg.crop_size], decoder)  # -> uint8 HWC
    if dev == "gpu":
        return crops, ()
    return finish_crops(crops, start=[mid, mid], block=block, layout=_layout(cfg)), ()


def _layout(cfg: LoaderConfig) -> str:
    return "HWC" if cfg.channels_last else "CHW"  # HWC is NCHW with channels_last strides after a torch permute


def build_pipeline(shards: ShardSet, cfg: LoaderConfig, norm: Normalization, dist: DistInfo, checkpoint=None):
    """The pipeline for `cfg`; the same graph on both devices (`dev` and the decoder's device differ), up to the
    finishing step of translate and center crops: our kernel in the CPU graph, `TorchFinisher` after the GPU one."""
    size = shards.image_size
    gpu = cfg.device == "gpu"
    dev, decoder = ("gpu", "mixed") if gpu else ("cpu", "cpu")
    # The CPU kernel reads the mean planes and 1/std by address: the array lives as long as the pipeline object.
    block = None
    if not gpu and finished_by_kernel(cfg):
        basis = lighting_basis(norm.eigval, norm.eigvec) if norm.eigval is not None and cfg.training else None
        block = parameter_block(mean_planes(norm, size), 1.0 / norm.std, basis)

    @pipeline_def(
        batch_size=cfg.batch_size,
        num_threads=cfg.num_threads,
        device_id=dist.local_rank if gpu else None,
        seed=augmentation_seed(cfg.seed, dist.rank),
        prefetch_queue_depth=cfg.prefetch,
        enable_checkpointing=True,
    )
    def imagenet():
        jpegs, labels = read_samples(shards, cfg, dist)
        make = train_images if cfg.training else val_images
        images, extras = make(jpegs, cfg, norm, dev, decoder, size, block)
        if gpu and shards.format == "contract":
            labels = labels.gpu()
        return (images, labels, *extras)

    pipe = imagenet(checkpoint=checkpoint)
    pipe.finishing_block = block
    return pipe
