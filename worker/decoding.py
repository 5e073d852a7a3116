"""Bytes -> RGB page images: base64 and data-URL unwrapping, content sniffing, and normalising every
image to what the processor expects (8-bit RGB, upright).

In: the string a job sent, or raw bytes. Out: bytes, a sniffed kind, or a loaded `PIL.Image` in RGB.
Raises `InvalidInput`, `InvalidImage`, `PayloadTooLarge` or `ImageTooLarge`.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLarge, InvalidImage, InvalidInput, PayloadTooLarge, UnsupportedContent

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
# Documents are printed on white: transparent areas become white, not black.
BACKGROUND = (255, 255, 255)
MIN_PAGE_SIDE = 16  # one SAM patch
MAX_ASPECT_RATIO = 500

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF-", 0, "pdf"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
    (b"BM", 0, "bmp"),
    (b"WEBP", 8, "webp"),
)
IMAGE_KINDS = frozenset({"png", "jpeg", "gif", "tiff", "bmp", "webp"})


def decode_base64(value: str, *, field: str, max_bytes: int) -> bytes:
    """Raw base64 or a `data:` URL -> bytes. The size is checked on the string, before decoding,
    so an oversized payload costs no memory."""
    payload = value
    match = _DATA_URL.match(value)
    if match:
        if not match.group("b64"):
            raise InvalidInput("data URLs must be base64-encoded (';base64,')", field=field)
        payload = value[match.end():]
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(
            f"about {len(payload) * 3 // 4} bytes decoded, over the limit of {max_bytes} (MAX_INPUT_BYTES); "
            "send a URL instead", field=field)
    payload = _WHITESPACE.sub("", payload)
    altchars = b"-_" if ("-" in payload or "_" in payload) else None
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("is not valid base64, a data: URL or an http(s) URL", field=field) from None
    if not data:
        raise InvalidInput("decodes to zero bytes", field=field)
    return data


def sniff_kind(data: bytes) -> str | None:
    """The file type from its first bytes, whatever name or MIME type came with it."""
    for signature, offset, kind in _SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            if kind == "webp" and data[:4] != b"RIFF":
                continue
            return kind
    return None


def decode_image(data: bytes, *, field: str, max_pixels: int) -> Image.Image:
    """Image bytes -> an upright 8-bit RGB image. GIF, TIFF and WebP animations give their first
    frame. EXIF orientation is applied; alpha is composited on white; 16-bit greyscale is scaled
    down, not clipped (Pillow's own I;16 -> RGB conversion saturates everything above 255)."""
    kind = sniff_kind(data)
    if kind == "pdf":
        raise UnsupportedContent("is a PDF; send it in the 'pdf' field", field=field)
    if kind not in IMAGE_KINDS:
        raise InvalidImage("is not a PNG, JPEG, WebP, TIFF, BMP or GIF image", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels} "
                    "(MAX_IMAGE_PIXELS)", field=field)
            image.seek(0)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"exceeds Pillow's decompression-bomb limit ({exc})", field=field) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"could not be decoded ({kind}: {exc})", field=field) from None
    if image.width < 1 or image.height < 1:
        raise InvalidImage("has no pixels", field=field)
    return check_showable(to_rgb(ImageOps.exif_transpose(image)), field=field)


def check_showable(image: Image.Image, *, field: str) -> Image.Image:
    """Refuse only what the model truly cannot be shown. The processor scales the long side to the
    view (768..1024 px): past 1:500 the short side rounds to nothing and the processor fails, and a
    side under one 16 px patch holds no readable text. Long receipts (1:30) and strips up to 1:500
    are processed as they are."""
    short, long = sorted(image.size)
    if short < MIN_PAGE_SIDE:
        raise InvalidImage(f"is {image.width}x{image.height}: a side under {MIN_PAGE_SIDE} px holds nothing the "
                           "model can read", field=field)
    if long > MAX_ASPECT_RATIO * short:
        raise InvalidImage(f"is {image.width}x{image.height}, an aspect ratio beyond 1:{MAX_ASPECT_RATIO} that the "
                           "model's square views cannot show; cut it into pages", field=field)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, as a document scanner would show it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _scale_to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        canvas = Image.new("RGB", image.size, BACKGROUND)
        rgba = image.convert("RGBA")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit greyscale -> L. Integer modes use their nominal range (16-bit: 0..65535)."""
    if image.mode == "F":
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return image.point(lambda v: (v - lo) * scale).convert("L")
    as_int = image.convert("I")
    return as_int.point(lambda v: v / 257).convert("L")

