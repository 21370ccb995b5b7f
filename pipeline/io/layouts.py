"""How a shard's images are laid out under the output prefix (output.layout).

- files: one object per image, images/<2 hex>/<hash of the row id>.<ext> (keys.image_key).
- webdataset: one tar per shard, shards/<shard name>.tar, holding `<key>.<ext>` and
  `<key>.json` per image (the row's id, prompt, seed...), the format the `webdataset`
  package and ray.data.read_webdataset read; the shard's metadata file indexes it.
- parquet: one Parquet file per shard, data/<shard name>.parquet, the images embedded in an
  `image` struct column {bytes, path} as Hugging Face `datasets` writes its Image feature
  (the schema carries the features, so datasets.load_dataset("parquet", ...) decodes them).

Either sharded file is written whole (atomically) before the shard's metadata commits it,
and holds only what the spec and the input decide (no timings), so a rerun of the shard
writes the same bytes under the same name. Failed rows have no image and appear only in
the metadata. image_uri of a sharded row is `<file uri>#<member or row key>`.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

from pipeline.keys import EXTENSIONS

LAYOUTS = ("files", "webdataset", "parquet")
FOLDERS = {"webdataset": "shards", "parquet": "data"}
SUFFIXES = {"webdataset": ".tar", "parquet": ".parquet"}
# Rows per row group of a Parquet shard, as Hugging Face datasets writes image datasets: a
# reader that wants a few images (the report, a dataset viewer) reads their row groups only.
PARQUET_ROW_GROUP_ROWS = 100
# The metadata columns a sample carries with its image (those that depend on the run, as
# timings, are left in the metadata only).
SAMPLE_FIELDS = ("id", "prompt", "negative_prompt", "seed", "stage_chain", "models", "width", "height", "format",
                 "sha256")


def sample_key(image_key: str) -> str:
    """The sample's key in a shard: the image key's hash (no dot, no slash: WebDataset
    splits a member's name at its first dot)."""
    return image_key.rsplit("/", 1)[-1].split(".", 1)[0]


def shard_file(layout: str, stem: str) -> str:
    return f"{FOLDERS[layout]}/{stem}{SUFFIXES[layout]}"


def _samples(metadata, keys: list[str | None]) -> list[tuple[int, str, dict[str, Any]]]:
    """(row, its sample key, its fields) for each row with an image. Identical input rows
    (no input.id_column: their ids are their content's hash) share an image key; a sample
    key must be unique in a shard (webdataset refuses a tar with a name twice), so later
    ones get -1, -2... in row order, which the shard's composition fixes."""
    rows = metadata.select(list(SAMPLE_FIELDS)).to_pylist()
    seen: dict[str, int] = {}
    samples = []
    for index, key in enumerate(keys):
        if key is None:
            continue
        name = sample_key(key)
        count = seen.get(name, 0)
        seen[name] = count + 1
        samples.append((index, f"{name}-{count}" if count else name, rows[index]))
    return samples


def webdataset_tar(metadata, keys: list[str | None], data: list[bytes | None]) -> tuple[bytes, list[str | None]]:
    """The shard's tar, and each row's member name (None for a row without an image)."""
    buffer = io.BytesIO()
    members: list[str | None] = [None] * len(keys)
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for index, key, sample in _samples(metadata, keys):
            extension = EXTENSIONS[sample["format"]]
            members[index] = f"{key}.{extension}"
            for name, payload in ((members[index], data[index]), (f"{key}.json", json.dumps(sample).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue(), members


def huggingface_features() -> dict[str, Any]:
    value = {"_type": "Value"}
    return {
        "id": {**value, "dtype": "string"}, "prompt": {**value, "dtype": "string"},
        "negative_prompt": {**value, "dtype": "string"}, "seed": {**value, "dtype": "int64"},
        "stage_chain": {**value, "dtype": "string"},
        # Sequence, not List: datasets 3.x knows only Sequence; 4.x and 5.x read it as a List.
        "models": {"_type": "Sequence", "feature": {**value, "dtype": "string"}},
        "width": {**value, "dtype": "int32"}, "height": {**value, "dtype": "int32"},
        "format": {**value, "dtype": "string"}, "sha256": {**value, "dtype": "string"},
        "image": {"_type": "Image"},
    }


def parquet_shard(metadata, keys: list[str | None], data: list[bytes | None]) -> tuple[bytes, list[str | None]]:
    """The shard's Parquet file of its images (Hugging Face Image feature), and each row's
    key in it (its `image.path`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = _samples(metadata, keys)
    names: list[str | None] = [None] * len(keys)
    for index, key, sample in samples:
        names[index] = f"{key}.{EXTENSIONS[sample['format']]}"
    source = metadata.select(list(SAMPLE_FIELDS)).take([index for index, _, _ in samples])
    image = pa.StructArray.from_arrays(
        [pa.array([data[index] for index, _, _ in samples], pa.binary()),
         pa.array([names[index] for index, _, _ in samples], pa.string())],
        names=["bytes", "path"],
    )
    table = source.append_column("image", image)
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": huggingface_features()}})})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=PARQUET_ROW_GROUP_ROWS)
    return buffer.getvalue(), names


def read_members(fs, path: str, members: set[str]) -> dict[str, bytes]:
    """The bytes of these members (sample names, as after `#` in a sharded image_uri) of
    one shard file, read in one pass: a tar is streamed and read only up to the last member
    wanted, keeping only those; a Parquet file is read by row group, its `image.path`
    column first and the image bytes only of the row groups that hold a wanted member.
    Members the file does not hold are missing from the answer."""
    if path.endswith(".tar"):
        return _tar_members(fs, path, members)
    return _parquet_members(fs, path, members)


def _tar_members(fs, path: str, members: set[str]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
        for info in tar:  # stream mode: headers and data in file order, nothing kept behind
            if info.name in members:
                found[info.name] = tar.extractfile(info).read()
                if len(found) == len(members):
                    break
    return found


def _parquet_members(fs, path: str, members: set[str]) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    found: dict[str, bytes] = {}
    # No read-ahead cache: pyarrow asks for the footer and each column chunk it needs by range.
    with fs.open(path, "rb", cache_type="none") as handle:
        shard = pq.ParquetFile(handle)
        for group in range(shard.num_row_groups):
            names = shard.read_row_group(group, columns=["image.path"]).column("image").combine_chunks()
            rows = [row for row, name in enumerate(names.field("path").to_pylist()) if name in members]
            if not rows:
                continue
            images = shard.read_row_group(group, columns=["image"]).column("image").combine_chunks().take(rows)
            found.update(zip(images.field("path").to_pylist(), images.field("bytes").to_pylist()))
            if len(found) == len(members):
                break
    return found
