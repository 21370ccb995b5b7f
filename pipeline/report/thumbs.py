"""Small thumbnails of the sampled images, as data URIs the page carries inline."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from pipeline import storage
from pipeline.io.layouts import read_member

MAX_SIDE = 128


@dataclass(frozen=True)
class Thumbnail:
    uri: str  # data:image/...;base64,...
    width: int
    height: int
    source_width: int
    source_height: int


def encode_thumbnail(data: bytes, max_side: int = MAX_SIDE) -> Thumbnail:
    """Shrink an encoded image to at most max_side px a side; keep the smaller of PNG and
    JPEG (PNG wins for tiny or flat images, JPEG for photos)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        size = image.size
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
        picture = image.convert("RGB")
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    encoded = []
    for fmt, options in (("PNG", {"optimize": True}), ("JPEG", {"quality": 82})):
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **options)
        encoded.append((len(buffer.getvalue()), fmt.lower(), buffer.getvalue()))
    _, fmt, best = min(encoded)
    uri = f"data:image/{fmt};base64," + base64.b64encode(best).decode("ascii")
    return Thumbnail(uri, picture.width, picture.height, size[0], size[1])


def thumbnails(fs, root: str, keys: list[str], max_side: int = MAX_SIDE) -> dict[str, Thumbnail | str]:
    """key -> its Thumbnail, or a one-line reason it has none (a missing or broken image).
    Only these images are read (on S3, concurrently in one call)."""
    if not keys:
        return {}
    paths = {storage.join(root, key): key for key in keys if "#" not in key}
    contents = fs.cat(list(paths), on_error="return") if paths else {}
    for key in keys:
        if "#" in key:  # an image in a shard's tar or Parquet file (io/layouts.py)
            paths[storage.join(root, key)] = key
            try:
                contents[storage.join(root, key)] = read_member(fs, storage.join(root, key))
            except Exception as error:  # missing file or member
                contents[storage.join(root, key)] = error
    result: dict[str, Thumbnail | str] = {}
    for path, key in paths.items():
        data = contents.get(path)
        if data is None:  # fsspec may key the results by a normalised path
            data = next((value for name, value in contents.items() if name.endswith(key)), None)
        if isinstance(data, BaseException) or data is None:
            result[key] = f"cannot read the image: {data if data is not None else 'missing'}"
            continue
        try:
            result[key] = encode_thumbnail(data, max_side)
        except Exception as error:  # PIL raises many kinds for a damaged file
            result[key] = f"cannot decode the image: {error}"
    return result
