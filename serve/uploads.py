"""Uploaded images and masks, checked from their headers before any pixel is decoded."""

from __future__ import annotations

import io
from dataclasses import dataclass

from serve.errors import APIError, invalid


@dataclass(frozen=True)
class Upload:
    data: bytes
    width: int
    height: int
    alpha: bool  # has transparency (an OpenAI-style mask)


def inspect(data: bytes, field: str, max_pixels: int) -> Upload:
    """The upload's size from its header: a non-image, or one over the pixel budget, is
    refused naming the field, before decoding (a decompression bomb costs nothing)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise invalid(f"{field}: the file is empty", field, "invalid_image")
    Image.MAX_IMAGE_PIXELS = None  # our budget, checked below, replaces PIL's global one
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    except (UnidentifiedImageError, OSError, ValueError):
        raise invalid(f"{field}: not a known image format (PNG, JPEG, WebP, ...)", field, "invalid_image") from None
    if width * height > max_pixels:
        raise APIError(400, f"{field}: {width}x{height} = {width * height} pixels is over the limit ({max_pixels})",
                       field, "image_too_large")
    return Upload(data, width, height, alpha)


def mask_for_pipeline(mask: Upload) -> bytes:
    """A mask as the pipeline reads it, white where the image is regenerated. An OpenAI
    mask marks that area with full transparency (alpha 0); one without transparency is
    taken as it is (white = regenerate, the diffusers convention)."""
    if not mask.alpha:
        return mask.data
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(mask.data)) as image:
            alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
    except Exception as error:  # a truncated or corrupt file behind a valid header
        raise invalid(f"mask: cannot decode the image: {type(error).__name__}", "mask", "invalid_image") from None
    buffer = io.BytesIO()
    Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()
