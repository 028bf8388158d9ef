"""One source file's bytes -> a clean size x size RGB image (the paper's section 2 preprocessing).

Decisions, made once so every image is treated the same way:
- The format comes from the bytes, never from the file name (ImageNet holds a PNG named .JPEG).
- EXIF orientation is ignored, as torchvision and the original preprocessing do.
- Transparent images are composited over white; 16-bit images keep their 8 most significant bits.
- Resizing is bilinear with antialiasing (torchvision's `Resize(256)`), so models trained here see the
  same pixels as torchvision's evaluation transforms; the short side becomes `size`, then the central
  square is kept. Only that square is resampled (`box=`), and large JPEGs are decoded at a reduced scale
  in the DCT domain (libjpeg-turbo via `Image.draft`), which is where most of the decode time goes.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

# Never pad a truncated file with grey: a short file is a skipped file.
Image.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold (about 0.25 GB of RGB)

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

    REASONS = ("empty", "truncated", "undecodable", "too_large", "unreadable")

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
    if not data:
        raise SkipImage("empty", "0 bytes")
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


def center_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The source region that becomes the central size x size crop once the short side is `size`."""
    scale = size / min(width, height)
    resized_w, resized_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (resized_w - size) // 2, (resized_h - size) // 2
    return (left / scale, top / scale, (left + size) / scale, (top + size) / scale)


def decode_resize_crop(data: bytes, *, size: int, name: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decodes `data` whatever its format, and returns its central size x size RGB crop.

    Raises:
        SkipImage: empty, truncated, undecodable or too large input.
    """
    img = _open(data, max_pixels)
    conversions = []
    claimed = _EXTENSION_FORMATS.get(name[name.rfind(".") :].lower()) if "." in name else None
    if claimed is not None and img.format != claimed:
        conversions.append("format_mismatch")
    original_size = img.size
    try:
        if img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
            # Decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the short side >= size.
            scale = size / min(img.size)
            img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        img.load()
    except (OSError, SyntaxError, ValueError) as e:  # Pillow raises OSError("image file is truncated ...")
        reason = "truncated" if "truncated" in str(e) or "broken data stream" in str(e) else "undecodable"
        raise SkipImage(reason, str(e)) from e
    except Image.DecompressionBombError as e:
        raise SkipImage("too_large", str(e)) from e
    img, conversion = _to_rgb(img)
    if conversion:
        conversions.append(conversion)
    # The box is in original-image coordinates; draft() may have shrunk the decoded image.
    fx, fy = img.width / original_size[0], img.height / original_size[1]
    x0, y0, x1, y1 = center_crop_box(*original_size, size)
    cropped = img.resize((size, size), Image.Resampling.BILINEAR, box=(x0 * fx, y0 * fy, x1 * fx, y1 * fy))
    return Decoded(np.asarray(cropped), original_size, tuple(conversions))


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline RGB JPEG (4:2:0), the format every decoder, nvJPEG included, reads fastest."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()
