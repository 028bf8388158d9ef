"""Per-image preprocessing: every ImageNet quirk comes out as size x size RGB; bad bytes are skipped with a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import bomb_png, jpeg_bytes, png_bytes
from preprocess.image import SkipImage, center_crop_geometry, decode_resize_crop, encode_jpeg

RNG = np.random.default_rng(0)


def photo(width: int, height: int) -> np.ndarray:
    """A smooth colourful image (JPEG-friendly) with a left-right gradient so crops are recognisable."""
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([255 * x * np.ones_like(y), 255 * y * np.ones_like(x), 128 + 0 * x * y], axis=2)
    return rgb.astype(np.uint8)


def reference_crop(img: Image.Image, size: int) -> np.ndarray:
    """The obvious implementation, as torchvision's Resize(size) + CenterCrop(size) do it on a PIL image: resize the
    whole image (short side = size, long side truncated), then crop the centre (offset rounded half to even)."""
    w, h = img.size
    rw, rh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = img.convert("RGB").resize((rw, rh), Image.Resampling.BILINEAR)
    left, top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def detailed(width: int, height: int) -> np.ndarray:
    """Fine detail everywhere, as in real photographs: a shift of a fraction of a pixel changes many values."""
    return np.clip(photo(width, height).astype(int) + RNG.integers(-60, 60, (height, width, 3)), 0, 255).astype(np.uint8)


def cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(400, 300)).convert("CMYK").save(buf, "JPEG", quality=95)  # Pillow writes Adobe APP14
    return buf.getvalue()


def sixteen_bit_png() -> bytes:
    array = (np.linspace(0, 65535, 300 * 280).reshape(280, 300)).astype(np.uint16)
    return png_bytes(Image.fromarray(array))  # Pillow stores uint16 as mode I;16


QUIRKS = {
    "rgb_jpeg": (lambda: jpeg_bytes(photo(500, 375), quality=95), "x.JPEG", ()),
    "cmyk_jpeg": (cmyk_jpeg, "x.JPEG", ("cmyk",)),
    "png_named_jpeg": (lambda: png_bytes(Image.fromarray(photo(320, 400))), "n02105855_2933.JPEG", ("format_mismatch",)),
    "grayscale_jpeg": (lambda: jpeg_bytes(photo(300, 300), "L"), "x.JPEG", ("grayscale",)),
    "la_png": (lambda: png_bytes(Image.fromarray(photo(300, 300)).convert("LA")), "x.png", ("alpha",)),
    "palette_png": (lambda: png_bytes(Image.fromarray(photo(300, 300)).convert("P")), "x.png", ("palette",)),
    "rgba_png": (lambda: png_bytes(Image.fromarray(photo(300, 300)).convert("RGBA")), "x.png", ("alpha",)),
    "sixteen_bit_png": (sixteen_bit_png, "x.png", ("high_bit_depth",)),
    "tiny_1x1": (lambda: png_bytes(Image.new("RGB", (1, 1), (200, 10, 30))), "x.png", ()),
    "thin_500x33": (lambda: jpeg_bytes(photo(500, 33)), "x.JPEG", ()),
    "large_3888x2592": (lambda: jpeg_bytes(photo(3888, 2592)), "x.JPEG", ()),
}


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_every_quirk_becomes_256_rgb(quirk):
    make, name, conversions = QUIRKS[quirk]
    decoded = decode_resize_crop(make(), size=256, name=name)
    assert decoded.pixels.shape == (256, 256, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.conversions == conversions
    assert decoded.pixels.std() > 0 or quirk == "tiny_1x1"


def test_tiny_image_is_its_colour():
    decoded = decode_resize_crop(png_bytes(Image.new("RGB", (1, 1), (200, 10, 30))), size=256, name="x.png")
    assert (decoded.pixels == (200, 10, 30)).all()


def test_transparent_pixels_become_white_every_time():
    rgba = np.zeros((300, 300, 4), np.uint8)  # fully transparent black
    decoded = decode_resize_crop(png_bytes(Image.fromarray(rgba, "RGBA")), size=256, name="x.png")
    assert (decoded.pixels == 255).all()


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (343, 256), (256, 256), (300, 100), (120, 90), (257, 1000)])
def test_crop_matches_resize_then_crop(size):
    """Lossless input: our window resampling gives the whole-image resize's pixels, within the one grey level
    that the order of the two passes can change."""
    img = Image.fromarray(detailed(*size))
    decoded = decode_resize_crop(png_bytes(img), size=256, name="x.png")
    diff = np.abs(decoded.pixels.astype(int) - reference_crop(img, 256))
    assert diff.max() <= 1 and diff.mean() < 0.5


def test_large_jpeg_uses_dct_scaling_and_stays_close():
    img = Image.fromarray(photo(2400, 1800))
    data = jpeg_bytes(photo(2400, 1800), quality=95)
    decoded = decode_resize_crop(data, size=256, name="x.jpg")
    assert decoded.original_size == (2400, 1800)
    assert np.abs(decoded.pixels.astype(int) - reference_crop(img, 256)).mean() < 1.0


def test_dct_scaled_decode_keeps_the_geometry():
    """A 1/4-scale decode of a detailed 2051 x 1029 image (the last DCT block partial in both directions) lands
    where the full decode lands: no drift across the image from taking ceil(2051 / 4) pixels for 2051 / 4."""
    img = Image.fromarray(detailed(2051, 1029))
    data = jpeg_bytes(np.asarray(img), quality=98)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    ours = decode_resize_crop(data, size=256, name="x.jpg").pixels.astype(float)
    reference = reference_crop(Image.fromarray(full), 256).astype(float)
    assert 10 * np.log10(255**2 / np.mean((ours - reference) ** 2)) > 30


def test_center_crop_geometry_is_torchvisions():
    assert center_crop_geometry(500, 375, 256) == ((341, 256), (42, 0, 256, 256))  # 42.5 rounds half to even
    assert center_crop_geometry(375, 500, 256) == ((256, 341), (0, 42, 256, 256))
    assert center_crop_geometry(343, 256, 256) == ((343, 256), (44, 0, 256, 256))  # 43.5 -> 44
    assert center_crop_geometry(333, 500, 256) == ((256, 384), (0, 64, 256, 256))  # 384.38 truncated
    assert center_crop_geometry(120, 90, 256) == ((341, 256), (42, 0, 256, 256))


def test_size_option():
    decoded = decode_resize_crop(jpeg_bytes(photo(500, 375)), size=128, name="x.jpg")
    assert decoded.pixels.shape == (128, 128, 3)


def test_exif_is_ignored_even_when_malformed():
    plain = jpeg_bytes(photo(400, 300), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": ignored, as torchvision does
    rotated = jpeg_bytes(photo(400, 300), quality=95, exif=exif.tobytes())
    broken = plain[:2] + b"\xff\xe1\x00\x10Exif\x00\x00garbage!" + plain[2:]  # APP1 with a malformed EXIF body
    reference = decode_resize_crop(plain, size=256, name="x.jpg").pixels
    for data in (rotated, broken):
        assert np.array_equal(decode_resize_crop(data, size=256, name="x.jpg").pixels, reference)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "undecodable"),
        (b"this is a text file, not an image\n", "undecodable"),
        (jpeg_bytes(photo(500, 375))[:4000], "truncated"),
        (png_bytes(Image.fromarray(RNG.integers(0, 256, (200, 300, 3), dtype=np.uint8)))[:50_000], "truncated"),
    ],
    ids=["empty", "random_bytes", "text", "truncated_jpeg", "truncated_png"],
)
def test_bad_bytes_are_skipped_with_a_reason(data, reason):
    with pytest.raises(SkipImage) as info:
        decode_resize_crop(data, size=256, name="x.JPEG")
    assert info.value.reason == reason


def test_decompression_bomb_is_too_large_without_decoding():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SkipImage) as info:
        decode_resize_crop(bomb_png(20000), size=256, name="bomb.png")
    assert info.value.reason == "too_large"
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100, f"peak memory grew by {grown_mib:.0f} MiB"


def test_max_pixels_is_a_hard_limit():
    data = jpeg_bytes(photo(1000, 1000))
    with pytest.raises(SkipImage, match="too_large"):
        decode_resize_crop(data, size=256, name="x.jpg", max_pixels=999_999)
    assert decode_resize_crop(data, size=256, name="x.jpg", max_pixels=1_000_000).pixels.shape == (256, 256, 3)


def test_encoded_jpeg_is_baseline_rgb():
    data = encode_jpeg(photo(256, 256), quality=90)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (256, 256)
        assert not img.info.get("progressive")
