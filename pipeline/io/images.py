"""Fetch, decode and encode images."""

from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np

from pipeline import storage

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
    text = value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value
    if "://" in text or text.startswith("/"):
        return text
    return storage.join(base_dir, text) if "://" in base_dir else posixpath.normpath(posixpath.join(base_dir, text))


def fetch_all(uris: list[str], storage_options: dict[str, Any]) -> list[bytes | Exception]:
    """Fetch many URIs; remote ones concurrently in one call per filesystem."""
    results: list[bytes | Exception] = [b""] * len(uris)
    by_fs: dict[int, tuple[Any, list[tuple[int, str]]]] = {}
    for position, uri in enumerate(uris):
        try:
            fs, inner = storage.filesystem(uri, storage_options)
        except Exception as error:  # unknown protocol and such: this row only
            results[position] = error
            continue
        by_fs.setdefault(id(fs), (fs, []))[1].append((position, inner))
    for fs, items in by_fs.values():
        paths = [inner for _, inner in items]
        fetched = fs.cat(paths, on_error="return") if len(paths) > 1 else {paths[0]: _cat_one(fs, paths[0])}
        for position, inner in items:
            results[position] = fetched.get(inner, FileNotFoundError(inner))
    return results


def _cat_one(fs, path: str) -> bytes | Exception:
    try:
        return fs.cat_file(path)
    except Exception as error:
        return error


def decode(data: bytes, mode: str) -> np.ndarray:
    """Decode encoded image bytes to a uint8 array in `mode` ("RGB" or "L")."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(mode))


def describe_decode_error(error: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        # PIL's own message names a BytesIO object's address: useless and never the same twice.
        return "not a known image format (PNG, JPEG, WebP, ...)"
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
