"""One source file's bytes -> a clean size x size RGB image (the paper's section 2 preprocessing).

Decisions, made once so every image is treated the same way:
- The format comes from the bytes, never from the file name (ImageNet holds a PNG named .JPEG).
- EXIF orientation is ignored, as torchvision and the original preprocessing do.
- Transparent images are composited over white; 16-bit images keep their 8 most significant bits.
- The geometry is torchvision's `Resize(size)` + `CenterCrop(size)`: the short side becomes `size`, the long side
  `int(size * long / short)`, and the central square is kept (its offset rounded half to even). The resampling is
  Pillow's antialiased bilinear filter (`preprocess.resize`), which is what those transforms apply to PIL images;
  only the kept square is resampled, straight from the decoded image.

Where the time goes: decoding. Ordinary (YCbCr or greyscale) JPEGs, nearly all of ImageNet, are decoded by
libjpeg-turbo through simplejpeg, with less copying than through Pillow. Large images are decoded at the
smallest DCT scale (1/2, 1/4, 1/8) that keeps the short side >= `size`. The DCT's shrinking is a box filter, so
those images come out a little softer than a resize of the full decode would make them; keeping twice `size`
(Pillow's `reducing_gap=2`) would narrow that, at a cost that large images, already the slowest to decode, pay
in full. Anything else, or a JPEG simplejpeg refuses, goes through Pillow, which also gives the verdict (and the
skip reason) on broken files.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

# Never pad a truncated file with grey: a short file is a skipped file.
Image.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold (about 0.25 GB of RGB)
# Which pixels this module makes of an input. Raised whenever the same bytes can come out different (the geometry,
# the filter, the decoder's settings), so that `--resume` rebuilds shards an earlier version made.
PIXELS_VERSION = 2

_MAGIC_FORMATS = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "WEBP"),
)
_EXTENSION_FORMATS = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP"}


class SkipImage(Exception):
    """An input that cannot become a sample; `reason` is one of the counted skip reasons."""

    REASONS = ("empty", "truncated", "undecodable", "too_large", "unreadable", "outside_source")

    def __init__(self, reason: str, detail: str):
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    """A decoded, resized and cropped image and what had to be done to get it."""

    pixels: np.ndarray  # uint8 [size, size, 3], RGB
    original_size: tuple[int, int]  # (width, height) of the source
    conversions: tuple[str, ...]  # counted in the manifest: "cmyk", "grayscale", "format_mismatch", ...


def sniff_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC_FORMATS:
        if data.startswith(magic):
            return fmt
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its limit; here anything above the limit is too large.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            return Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise SkipImage("too_large", str(e)) from e
        except UnidentifiedImageError as e:
            raise SkipImage("undecodable", "not an image Pillow can identify") from e
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Converts any Pillow mode to RGB; returns the conversion's counter name."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode == "CMYK":  # Pillow undoes Adobe's inverted CMYK (APP14) while decoding
        return img.convert("RGB"), "cmyk"
    if mode in ("L", "1"):
        return img.convert("RGB"), "grayscale"
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale
        array = np.asarray(img)
        if mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array.astype(np.uint32) >> 8
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert("RGB"), "high_bit_depth"
    if mode == "P" and "transparency" not in img.info:
        return img.convert("RGB"), "palette"
    if mode in ("RGBA", "LA", "PA", "P", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), "alpha"
    return img.convert("RGB"), "other_mode"


def center_crop_geometry(width: int, height: int, size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """torchvision's `Resize(size)` then `CenterCrop(size)`: the resized (width, height), and the kept window
    (left, top, size, size) in it."""
    short, long = sorted((width, height))
    resized_long = int(size * long / short)
    resized = (size, resized_long) if width == short else (resized_long, size)
    left, top = (int(round((side - size) / 2.0)) for side in resized)
    return resized, (left, top, size, size)


def _resize_crop(pixels: np.ndarray, original_size: tuple[int, int], size: int) -> np.ndarray:
    """The central crop of the ORIGINAL image, resampled from `pixels`, which may be a DCT-scaled decode of it."""
    # Imported here, not with the module: the CLI reads this module's defaults, and `--help` should not wait for
    # numba. After the first call this is a dictionary lookup.
    from preprocess.resize import resize_window

    resized, window = center_crop_geometry(*original_size, size)
    return resize_window(pixels, _extent(original_size, pixels.shape[1], pixels.shape[0]), resized, window)


def _extent(original_size: tuple[int, int], width: int, height: int) -> tuple[float, float]:
    """The source's size in the units of a width x height decode of it. At DCT scale 1/f a decoder makes ceil(w / f)
    pixels, the last covering a partial block: the source spans w / f of them, not ceil(w / f)."""
    for factor in (1, 2, 4, 8):
        if (-(-original_size[0] // factor), -(-original_size[1] // factor)) == (width, height):
            return original_size[0] / factor, original_size[1] / factor
    return float(width), float(height)  # no DCT scale: the decode covers the image exactly


def dct_factor(width: int, height: int, size: int) -> int:
    """The largest of 8, 4, 2, 1 by which the image can shrink in the DCT domain and keep its short side >= size.

    Only powers of two: libjpeg-turbo's other factors (3/8, 6/8, ...) decode slower than full size.
    """
    for factor in (8, 4, 2):
        if min(width, height) // factor >= size:
            return factor
    return 1


def _decode_plain_jpeg(data: bytes, size: int, max_pixels: int) -> Decoded | None:
    """The fast path for YCbCr/greyscale JPEGs; None means "let Pillow handle it"."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray") or min(width, height) < 1:
        return None
    if width * height > max_pixels:
        raise SkipImage("too_large", f"{width}x{height} pixels is more than --max-pixels {max_pixels}")
    factor = dct_factor(width, height, size)
    try:
        # The fast integer IDCT and plain chroma upsampling decode faster; their error (about one grey level)
        # is far below what the resize to 256 and the JPEG re-encode change anyway.
        pixels = simplejpeg.decode_jpeg(
            data,
            "RGB",
            fastdct=True,
            fastupsample=True,
            min_width=math.ceil(width / factor),
            min_height=math.ceil(height / factor),
        )
    except ValueError:  # strict mode refuses even recoverable damage: Pillow decides
        return None
    conversions = ("grayscale",) if colorspace == "Gray" else ()
    return Decoded(_resize_crop(pixels, (width, height), size), (width, height), conversions)


def _decode_with_pillow(data: bytes, size: int, max_pixels: int) -> Decoded:
    img = _open(data, max_pixels)
    original_size = img.size
    try:
        if img.format == "JPEG":
            factor = dct_factor(img.width, img.height, size)
            img.draft(img.mode, (img.width // factor, img.height // factor))  # Pillow picks the scale 1/factor
        img.load()
    except (OSError, SyntaxError, ValueError) as e:  # Pillow raises OSError("image file is truncated ...")
        reason = "truncated" if "truncated" in str(e) or "broken data stream" in str(e) else "undecodable"
        raise SkipImage(reason, str(e)) from e
    except Image.DecompressionBombError as e:
        raise SkipImage("too_large", str(e)) from e
    img, conversion = _to_rgb(img)
    pixels = np.array(img)  # writable: numba would compile its kernels again for a read-only array
    return Decoded(_resize_crop(pixels, original_size, size), original_size, (conversion,) if conversion else ())


def decode_resize_crop(data: bytes, *, size: int, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decodes `data` whatever its format, and returns its central size x size RGB crop.

    Raises:
        SkipImage: empty, truncated, undecodable or too large input.
    """
    if not data:
        raise SkipImage("empty", "0 bytes")
    actual = sniff_format(data)
    decoded = _decode_plain_jpeg(data, size, max_pixels) if actual == "JPEG" else None
    if decoded is None:
        decoded = _decode_with_pillow(data, size, max_pixels)
        actual = actual or "unknown"
    claimed = _EXTENSION_FORMATS.get(name[name.rfind(".") :].lower()) if "." in name else None
    if claimed is not None and actual != claimed:
        decoded = Decoded(decoded.pixels, decoded.original_size, ("format_mismatch", *decoded.conversions))
    return decoded


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline RGB JPEG (4:2:0), the format every decoder, nvJPEG included, reads fastest."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=quality, colorspace="RGB", colorsubsampling="420")
