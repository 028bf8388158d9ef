"""The loader's options as one frozen, validated value (printed in logs and saved next to checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["LoaderConfig", "DTYPES", "dali_dtype", "torch_dtype", "CROP_MODES", "NORMALIZATIONS", "FORMATS", "DEVICES"]

# The `dtype` option -> (what a DALI operator emits for it, the batch's torch dtype). DALI has no bfloat16: it emits
# float32 and torch casts. The one table of the loader's output types.
DTYPES = {"float32": ("float32", "float32"), "float16": ("float16", "float16"), "bfloat16": ("float32", "bfloat16")}
CROP_MODES = ("translate", "random_resized")
NORMALIZATIONS = ("mean_image", "channel")
FORMATS = ("auto", "contract", "wds")
DEVICES = ("auto", "cpu", "gpu")  # "auto": the GPU when CUDA is available (`LoaderConfig.resolved`)


@dataclass(frozen=True)
class LoaderConfig:
    """Every knob of `ImageNetLoader`; see pipeline/README.md for what each one does."""

    split: str = "train"
    batch_size: int = 128
    device: str = "auto"  # "gpu", "cpu", or "auto": the GPU when CUDA is available
    crop_size: int = 224
    num_threads: int = 4
    seed: int = 0
    dtype: str = "float32"
    channels_last: bool = False
    normalization: str = "mean_image"  # paper, section 2: subtract the per-pixel mean image
    mean: tuple[float, float, float] | None = None  # [0, 1] units; "channel" mode (default: stats.json)
    std: tuple[float, float, float] | None = None
    crop: str = "translate"  # paper, section 4.1: random crop_size patches of the 256x256 image
    ten_crop: bool = False  # val only: 4 corners + center and their mirrors -> [B, 10, 3, crop, crop]
    lighting_std: float = 0.1  # paper, section 4.1: alpha ~ N(0, 0.1); 0 disables
    eigval: tuple[float, float, float] | None = None  # PCA lighting's eigen data, pixels in [0, 1] (default: stats.json)
    eigvec: tuple[tuple[float, ...], ...] | None = None  # 3x3, eigenvectors as columns (rows R, G, B)
    drop_last: bool | None = None  # None: True for train, False for val
    format: str = "auto"  # "contract" (our build), "wds" (foreign jpg/jpeg + cls shards), "auto" detects
    shuffle_buffer: int = 4096  # samples in the reader's shuffle buffer (train)
    prefetch: int = 2  # DALI prefetch queue depth
    cache_dir: str | None = None  # where remote shards are cached (default ~/.cache/alexnet-pipeline)
    malloc_tuning: bool = True  # CPU: keep batch memory mapped between batches (process-wide; pipeline/allocator.py)

    def __post_init__(self):
        for name, shape in (("mean", (3,)), ("std", (3,)), ("eigval", (3,)), ("eigvec", (3, 3))):
            object.__setattr__(self, name, _floats(getattr(self, name), name, shape))  # plain tuples of floats

        def check(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"ImageNetLoader: {what}")

        check(self.split in ("train", "val"), f"split must be 'train' or 'val', got {self.split!r}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")
        check(self.crop_size >= 1, f"crop_size must be >= 1, got {self.crop_size}")
        check(self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")
        check(self.dtype in DTYPES, f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        check(self.normalization in NORMALIZATIONS, f"normalization must be one of {NORMALIZATIONS}")
        check(self.crop in CROP_MODES, f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        check(self.format in FORMATS, f"format must be one of {FORMATS}, got {self.format!r}")
        check(self.lighting_std >= 0, f"lighting_std must be >= 0, got {self.lighting_std}")
        check(not (self.ten_crop and self.split == "train"), "ten_crop is a val-time mode (split='val')")
        check(self.shuffle_buffer >= 1 and self.prefetch >= 1, "shuffle_buffer and prefetch must be >= 1")
        check((self.eigval is None) == (self.eigvec is None), "eigval and eigvec go together: pass both or neither")

    def resolved(self) -> LoaderConfig:
        """This config with device="auto" replaced by "gpu" where CUDA is available, else "cpu"."""
        if self.device != "auto":
            return self
        import torch

        return replace(self, device="gpu" if torch.cuda.is_available() else "cpu")

    @property
    def training(self) -> bool:
        return self.split == "train"

    @property
    def drops_last(self) -> bool:
        return self.training if self.drop_last is None else self.drop_last


def _floats(value, name: str, shape: tuple[int, ...]):
    """None, or `value` as nested tuples of floats of `shape` (R, G, B in [0, 1] units)."""
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape and array.size == int(np.prod(shape)) and len(shape) > 1:
        array = array.reshape(shape)
    if array.shape != shape:
        raise ValueError(f"ImageNetLoader: {name} must have shape {shape} (R, G, B in [0, 1] units), got {value!r}")
    return tuple(array.tolist()) if len(shape) == 1 else tuple(tuple(row) for row in array.tolist())


def dali_dtype(name: str) -> str:
    """The float type a DALI operator emits for the `dtype` option `name`."""
    return DTYPES[name][0]


def torch_dtype(name: str):
    """The torch dtype of the batches for the `dtype` option `name`."""
    import torch

    return getattr(torch, DTYPES[name][1])
