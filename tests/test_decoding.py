"""Image decoding: every format and colour mode the worker promises, with pixel checks."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import encode
from worker.decoding import decode_base64, decode_image, sniff_kind
from worker.errors import ImageTooLarge, InvalidImage, InvalidInput, PayloadTooLarge, UnsupportedContent

MAX_PIXELS = 10_000_000


def marker_image(size=(120, 80)) -> Image.Image:
    """White with a black block in the top-left quarter: orientation and colour are checkable."""
    image = Image.new("RGB", size, "white")
    image.paste((0, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
    return image


def assert_marker(image: Image.Image, size=(120, 80)) -> None:
    assert image.mode == "RGB" and image.size == size
    px = np.asarray(image).astype(int)
    assert px[5, 5].max() < 60, "top-left must be dark"
    assert px[-5, -5].min() > 195, "bottom-right must be light"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"])
def test_formats_decode_to_rgb_with_pixels_intact(fmt):
    data = encode(marker_image(), fmt)
    assert_marker(decode_image(data, field="image", max_pixels=MAX_PIXELS))


def test_gif_takes_the_first_frame():
    frames = [marker_image(), Image.new("RGB", (120, 80), "white")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert_marker(decode_image(data, field="image", max_pixels=MAX_PIXELS))


def test_exif_orientation_is_applied():
    upright = marker_image()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera would store it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(stored, "JPEG", exif=exif.tobytes())
    assert_marker(decode_image(data, field="image", max_pixels=MAX_PIXELS))


def test_rgba_transparency_becomes_white_not_black():
    image = Image.new("RGBA", (120, 80), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 60, 40))
    assert_marker(decode_image(encode(image, "PNG"), field="image", max_pixels=MAX_PIXELS))


@pytest.mark.parametrize("mode", ["L", "P", "1", "LA", "CMYK"])
def test_colour_modes(mode):
    image = marker_image().convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "1" else "PNG")
    assert_marker(decode_image(encode(image, fmt), field="image", max_pixels=MAX_PIXELS))


def test_16_bit_grayscale_is_scaled_not_clipped():
    """Pillow's own I;16 -> RGB saturates every value over 255 to white."""
    array = np.full((80, 120), 60000, dtype=np.uint16)
    array[:40, :60] = 1000
    data = encode(Image.fromarray(array), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    decoded = decode_image(data, field="image", max_pixels=MAX_PIXELS)
    assert_marker(decoded)


def test_pixel_limit_and_decompression_bomb():
    data = encode(Image.new("L", (4000, 3000), 255), "PNG")
    with pytest.raises(ImageTooLarge) as excinfo:
        decode_image(data, field="images[2]", max_pixels=1_000_000)
    assert excinfo.value.field == "images[2]" and "12000000" in excinfo.value.message


def test_garbage_and_truncated_images():
    with pytest.raises(InvalidImage):
        decode_image(b"not an image at all", field="image", max_pixels=MAX_PIXELS)
    png = encode(marker_image(), "PNG")
    with pytest.raises(InvalidImage) as excinfo:
        decode_image(png[: len(png) // 2], field="image", max_pixels=MAX_PIXELS)
    assert excinfo.value.code == "invalid_image"


def test_pdf_in_image_field_is_named():
    with pytest.raises(UnsupportedContent) as excinfo:
        decode_image(b"%PDF-1.7\n...", field="image", max_pixels=MAX_PIXELS)
    assert "'pdf' field" in excinfo.value.message


def test_base64_variants():
    data = encode(marker_image(), "PNG")
    std = base64.b64encode(data).decode()
    assert decode_base64(std, field="image", max_bytes=10**7) == data
    assert decode_base64("data:image/png;base64," + std, field="image", max_bytes=10**7) == data
    assert decode_base64(std.rstrip("="), field="image", max_bytes=10**7) == data
    wrapped = "\n".join(std[i:i + 76] for i in range(0, len(std), 76))
    assert decode_base64(wrapped, field="image", max_bytes=10**7) == data
    assert decode_base64(base64.urlsafe_b64encode(data).decode(), field="image", max_bytes=10**7) == data


def test_bad_base64_and_size_limit():
    with pytest.raises(InvalidInput) as excinfo:
        decode_base64("%%%not base64%%%", field="image", max_bytes=10**6)
    assert excinfo.value.field == "image"
    with pytest.raises(InvalidInput):
        decode_base64("data:image/png,rawtext", field="image", max_bytes=10**6)
    with pytest.raises(PayloadTooLarge) as excinfo:
        decode_base64("A" * 4000, field="image", max_bytes=1000)
    assert excinfo.value.code == "payload_too_large"


def test_sniffing_ignores_names():
    assert sniff_kind(encode(marker_image(), "WEBP")) == "webp"
    assert sniff_kind(b"%PDF-1.4") == "pdf"
    assert sniff_kind(b"RIFF0000WAVE") is None
    assert sniff_kind(b"<html>") is None


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header and has no pixel data: enough for Image.open."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pillow_decompression_bomb_guard_gives_image_too_large():
    """400 million pixels trips Pillow's own guard inside Image.open, before the worker's check."""
    with pytest.raises(ImageTooLarge) as excinfo:
        decode_image(_png_header_only(20_000, 20_000), field="image", max_pixels=10**12)
    assert "decompression-bomb" in excinfo.value.message and excinfo.value.code == "image_too_large"
    assert "400000000 pixels" in excinfo.value.message, "the message gives the image's size"


@pytest.mark.parametrize("size", [(1, 100000), (100000, 1), (3, 5000), (10, 40)])
def test_what_the_model_cannot_be_shown_is_invalid_image_with_the_reason(size):
    with pytest.raises(InvalidImage) as excinfo:
        decode_image(encode(Image.new("RGB", size, "white"), "PNG"), field="image", max_pixels=10**9)
    assert f"{size[0]}x{size[1]}" in excinfo.value.message and excinfo.value.field == "image"


@pytest.mark.parametrize("size", [(600, 20000), (20, 8000), (8000, 20)])
def test_long_receipts_and_strips_are_kept(size):
    assert decode_image(encode(Image.new("RGB", size, "white"), "PNG"), field="image", max_pixels=10**9).size == size
