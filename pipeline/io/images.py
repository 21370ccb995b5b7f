"""Image cells, decoding and encoding (fetching a cell's URI is pipeline/io/fetch.py)."""

from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np

_URI_PREFIXES = ("s3://", "file://", "/", "./", "../")


def looks_like_uri(value: Any) -> bool:
    """An image cell holds encoded bytes or a URI/path (as str, or as short utf-8 bytes)."""
    if isinstance(value, str):
        return True
    if isinstance(value, (bytes, bytearray)) and len(value) < 4096:
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return False
        return text.startswith(_URI_PREFIXES) or text.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))
    return False


def resolve_uri(value: str | bytes, base_dir: str) -> str:
    """A cell's URI as fetch reads it: a URI with a scheme (allowed or not: fetch decides)
    or an absolute path as it is; a relative path joined to the table's folder. `..` may
    climb out of that folder: a table names what the job's user and credentials can read."""
    from pipeline.io.fetch import scheme_of

    text = value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value
    if scheme_of(text) or text.startswith("/"):
        return text
    if "://" in base_dir:
        scheme, _, rest = base_dir.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, text))}"
    return posixpath.normpath(posixpath.join(base_dir, text))


def cell_value(value: Any) -> Any:
    """An image cell as bytes or a URI string; Hugging Face datasets store images as a
    struct {bytes, path}: take the bytes when present, else the path."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


# The raster formats decoded. Pillow's other plugins stay unused: EPS and PS hand the bytes
# to Ghostscript (untrusted PostScript would run where it is installed), and rarely used
# parsers are attack surface that no image input needs.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_ALLOWED_NAMES = "PNG, JPEG, WebP, GIF, BMP, TIFF"
# 8 bytes a pixel: an uncompressed 16-bit RGBA TIFF, the largest an allowed format stores a
# pixel in; the MiB is room for headers, ICC profiles and EXIF.
BYTES_PER_PIXEL = 8
HEADER_ROOM = 1 << 20
DEFAULT_MAX_PIXELS = 50_000_000  # input.max_image_pixels' default


def byte_limit(max_pixels: int | None, max_bytes: int | None = None) -> int:
    """The most bytes an image or mask may have: `max_bytes` when set, else derived from
    the pixel budget (input.max_image_bytes' default)."""
    if max_bytes is not None:
        return max_bytes
    return (max_pixels or DEFAULT_MAX_PIXELS) * BYTES_PER_PIXEL + HEADER_ROOM


class PixelBudgetError(ValueError):
    pass


class FormatNotAllowed(ValueError):
    pass


def decode(data: bytes, mode: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to a uint8 array in `mode` ("RGB" or "L").

    The size is read from the header and checked against `max_pixels` before any pixel is
    decoded, so a decompression bomb (a tiny file claiming a huge image) costs nothing.
    An EXIF orientation (phone photos) is applied, so the pixels are upright as viewers
    show them and a mask drawn on the upright view fits its image. 16-bit greyscale is
    scaled to 8 bits. Only ALLOWED_FORMATS are decoded; bytes of another format raise
    FormatNotAllowed, found from Pillow's prefix checks without opening them.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = None  # our budget, checked below, replaces PIL's global one
    Image.init()  # registers every plugin once; only the allowed ones are asked below
    try:
        # (a Pillow built without one of them, WebP say, simply does not decode it)
        opened = Image.open(io.BytesIO(data), formats=[name for name in ALLOWED_FORMATS if name in Image.OPEN])
    except UnidentifiedImageError:
        other = _other_format(data[:16])
        if other:
            raise FormatNotAllowed(f"{other} is not an allowed image format (allowed: {_ALLOWED_NAMES})") from None
        raise
    with opened as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise PixelBudgetError(
                f"{width}x{height} = {width * height} pixels is over input.max_image_pixels ({max_pixels})"
            )
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):
            # 16-bit greyscale (PNG, TIFF): PIL's convert clips it at 255, so a mid-grey
            # would come out white and a soft mask hard. Keep the top 8 bits instead.
            wide = np.asarray(image).astype(np.int64)
            image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
        return np.asarray(image.convert(mode))


def _other_format(prefix: bytes) -> str | None:
    """The name of the format other than the allowed ones whose signature `prefix` has
    (EPS, PSD...), from Pillow's prefix checks only: no plugin opens the bytes."""
    from PIL import Image

    Image.init()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if name in ALLOWED_FORMATS or accept is None:
            continue
        try:
            found = accept(prefix)
        except Exception:  # a check that needs more bytes than a short input has
            continue
        if found and not isinstance(found, str):  # a str is Pillow's "maybe, but" warning
            return name
    return None


def describe_decode_error(error: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(error, (PixelBudgetError, FormatNotAllowed)):
        return str(error)
    if isinstance(error, UnidentifiedImageError):
        # PIL's own message names a BytesIO object's address: useless and never the same twice.
        return f"not an image in an allowed format ({_ALLOWED_NAMES})"
    return f"{type(error).__name__}: {error}"


def encode(pixels: np.ndarray, image_format: str, quality: int, png_compress_level: int) -> bytes:
    """Encode a uint8 (H, W, 3) array. Deterministic: the same pixels give the same bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=png_compress_level)
    elif image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()
