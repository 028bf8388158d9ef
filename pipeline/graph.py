"""The DALI pipeline: reader, sharding and shuffling here; windows from `pipeline.windows`, finishing from
`pipeline.finish` (whose plan says which stage finishes a crop).

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

from pipeline.config import LoaderConfig
from pipeline.contract import CLASS_EXT, FOREIGN_IMAGE_EXTS, IMAGE_EXT, LABEL_EXT
from pipeline.finish import (
    KERNEL,
    TORCH,
    FinishPlan,
    Normalization,
    mean_planes,
    plan_finish,
    random_resized_finish,
    ten_crops,
)
from pipeline.kernels import finish_in_graph, kernel_params, tie_params
from pipeline.lighting import draw_alphas, lighting_basis
from pipeline.sharding import DistInfo
from pipeline.sources import ShardSet
from pipeline.windows import (
    band_window,
    center_start,
    decode_image,
    decode_window,
    random_resized_window,
    start_node,
    translate_window,
)

__all__ = ["build_pipeline", "READER_NAME", "augmentation_seed"]

READER_NAME = "Reader"


# augmentation_seed's constants: two primes whose products keep every (seed, rank) pair apart. The rank's stride
# times any rank below 127 stays under the seed's stride, so seed * SEED_STRIDE + rank * RANK_STRIDE is a different
# integer for every pair (up to ~2100 seeds, past which the modulus can wrap). The modulus, 2**31 - 1 (a prime, the
# largest int32), keeps the result a valid non-negative DALI seed; DALI takes -1 to mean "random". The + 1 shifts
# the whole map and stays so that the streams (and the checkpoints that hold them) stay what they were.
_SEED_STRIDE, _RANK_STRIDE, _SEED_MODULUS = 1_000_003, 7_919, 2**31 - 1


def augmentation_seed(seed: int, rank: int) -> int:
    """Per-rank seed of the random operators: ranks must not draw the same crops for different images."""
    return (seed * _SEED_STRIDE + rank * _RANK_STRIDE + 1) % _SEED_MODULUS


def read_samples(shards: ShardSet, cfg: LoaderConfig, dist: DistInfo):
    """-> (jpeg bytes, label): label is an int64 [1] (our .lbl) or the ASCII bytes of a foreign .cls."""
    ours = shards.format == "contract"
    return fn.readers.webdataset(
        paths=list(shards.paths),
        index_paths=list(shards.index_paths) if shards.index_paths else None,
        ext=[IMAGE_EXT, LABEL_EXT] if ours else [";".join(FOREIGN_IMAGE_EXTS), CLASS_EXT],
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


def augmented_images(jpegs, plan: FinishPlan, cfg: LoaderConfig, norm: Normalization, size: int, params):
    """-> (images, extras), as `plan` says. Finished in the graph: floats, no extras. Left to TORCH (GPU): uint8 HWC
    windows, with extras (start [2], mirror [1][, alphas [1, 3]]) for translate crops. The random parameters are
    drawn by CPU operators (DALI takes argument inputs such as the decoder's window only from the CPU), and the
    extras are copies of them moved to the GPU inside the graph, so torch receives them without a blocking copy."""
    decoder, crop = ("mixed" if plan.device == "gpu" else "cpu"), cfg.crop_size
    if plan.window == "ten_crop":
        return ten_crops(decode_image(jpegs, decoder), norm, plan, size=size, crop=crop), ()
    if plan.window == "center":
        mid = center_start(size, crop)
        if plan.finisher == TORCH:
            return decode_window(jpegs, [mid, mid], [crop, crop], decoder), ()  # the TorchFinisher's defaults
        return _finished_by_kernel(jpegs, [mid, mid], crop, size, params, plan.layout), ()
    alphas = draw_alphas(cfg.lighting_std) if plan.lighting else None
    if plan.window == "random_resized":
        mirror = fn.random.coin_flip(probability=0.5, dtype=types.INT32)
        start, shape = random_resized_window(size)
        images = fn.resize(decode_window(jpegs, start, shape, decoder), size=[crop, crop])
        return random_resized_finish(images, norm, plan, start=start, shape=shape, crop=crop, mirror=mirror,
                                     alphas=alphas), ()  # fmt: skip
    mirror = fn.random.coin_flip(probability=0.5, dtype=types.INT32, shape=[1])
    start, shape = translate_window(size, crop)
    if plan.finisher == TORCH:
        crops = decode_window(jpegs, start, shape, decoder)  # -> uint8 HWC window
        return crops, tuple(node.gpu() for node in (start_node(start), mirror, alphas) if node is not None)
    return _finished_by_kernel(jpegs, start, crop, size, params, plan.layout, mirror=mirror, alphas=alphas), ()


def _finished_by_kernel(jpegs, start, crop: int, size: int, params, layout: str, *, mirror=None, alphas=None):
    """The KERNEL finisher's crops (CPU graphs only): the decoder gives each crop's whole rows (`band_window`) and
    the kernel takes the crop's columns from them. -> float32 [3, crop, crop] (or HWC)"""
    bands = decode_window(jpegs, *band_window(start, crop, size), "cpu")
    return finish_in_graph(bands, start=start, width=crop, mirror=mirror, alphas=alphas, params=params, layout=layout)


def build_pipeline(shards: ShardSet, cfg: LoaderConfig, norm: Normalization, dist: DistInfo, checkpoint=None):
    """The pipeline for `cfg`: the same graph on both devices, up to the finishing step that `plan_finish` assigns."""
    plan, size = plan_finish(cfg), shards.image_size
    params = None  # what the CPU kernel reads by address: kept alive as long as the pipeline
    if plan.finisher == KERNEL:
        basis = lighting_basis(norm.eigval, norm.eigvec) if plan.lighting else None
        params = kernel_params(mean_planes(norm, size), 1.0 / norm.std, basis)

    @pipeline_def(
        batch_size=cfg.batch_size,
        num_threads=cfg.num_threads,
        device_id=dist.local_rank if plan.device == "gpu" else None,
        seed=augmentation_seed(cfg.seed, dist.rank),
        prefetch_queue_depth=cfg.prefetch,
        enable_checkpointing=True,
    )
    def imagenet():
        jpegs, labels = read_samples(shards, cfg, dist)
        images, extras = augmented_images(jpegs, plan, cfg, norm, size, params)
        if plan.device == "gpu" and shards.format == "contract":
            labels = labels.gpu()
        return (images, labels, *extras)

    pipe = imagenet(checkpoint=checkpoint)
    if params is not None:
        tie_params(pipe, params)
    return pipe
