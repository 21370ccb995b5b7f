"""Small thumbnails of the sampled images, as data URIs the page carries inline."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from pipeline import storage
from pipeline.io.layouts import read_members

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
    Only these images are read (on S3, concurrently in one call); an image in a shard's tar
    or Parquet file (`<file>#<member>`, io/layouts.py) is read with the other samples of its
    file, in one pass over that file."""
    if not keys:
        return {}
    contents: dict[str, bytes | BaseException | None] = {}
    loose = {storage.join(root, key): key for key in keys if "#" not in key}
    if loose:
        read = fs.cat(list(loose), on_error="return")
        for path, key in loose.items():
            data = read.get(path)
            if data is None:  # fsspec may key the results by a normalised path
                data = next((value for name, value in read.items() if name.endswith(key)), None)
            contents[key] = data
    contents.update(_shard_members(fs, root, [key for key in keys if "#" in key]))
    result: dict[str, Thumbnail | str] = {}
    for key in keys:
        data = contents.get(key)
        if isinstance(data, BaseException) or data is None:
            result[key] = f"cannot read the image: {data if data is not None else 'missing'}"
            continue
        try:
            result[key] = encode_thumbnail(data, max_side)
        except Exception as error:  # PIL raises many kinds for a damaged file
            result[key] = f"cannot decode the image: {error}"
    return result


def _shard_members(fs, root: str, keys: list[str]) -> dict[str, bytes | BaseException | None]:
    """key -> the bytes of each `<file>#<member>` key, each shard file read once."""
    by_file: dict[str, dict[str, str]] = {}
    for key in keys:
        file, member = key.rsplit("#", 1)
        by_file.setdefault(file, {})[member] = key
    found: dict[str, bytes | BaseException | None] = {}
    for file, members in by_file.items():
        try:
            data = read_members(fs, storage.join(root, file), set(members))
        except Exception as error:  # a missing or damaged file: each of its samples says so
            data = {member: error for member in members}
        for member, key in members.items():
            found[key] = data.get(member)
    return found
