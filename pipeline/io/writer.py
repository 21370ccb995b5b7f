"""Encode a result batch into image bytes and metadata records; write and commit them.

`encode_images` and `metadata_table` need no storage and no Ray (Serve answers requests with
them). `write_outputs` is the batch job's write step, a Ray Data CPU task after the last
stage, so encoding and uploads stay off the GPU actors: it writes every image of the shard,
then commits the shard's metadata through the output's commit log.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import batch as B
from pipeline import storage
from pipeline.io import images
from pipeline.io.commit_log import CommitLog
from pipeline.keys import image_key
from pipeline.record import STAGE_FIELDS, STAGE_RECORD, stage_struct


@dataclass(frozen=True)
class Encoding:
    format: str = "png"
    quality: int = 90
    png_compress_level: int = 6


def stage_info(stage) -> dict[str, Any]:
    """What a stage's record takes from its declaration (the same for every row)."""
    return {name: getattr(stage, name, None) for name in STAGE_FIELDS}


@dataclass(frozen=True)
class OutputTarget:
    """Everything the write step needs (plain data, sent to tasks)."""

    log: CommitLog
    encoding: Encoding
    stages: tuple[dict[str, Any], ...]  # stage_info of each stage
    layout: str = "files"  # output.layout (pipeline/io/layouts.py)


def metadata_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("image_uri", pa.string()),
            ("prompt", pa.string()),
            ("negative_prompt", pa.string()),
            ("seed", pa.int64()),
            ("stage_chain", pa.string()),
            ("models", pa.list_(pa.string())),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("format", pa.string()),
            ("bytes", pa.int64()),
            ("sha256", pa.string()),
            ("prepare_seconds", pa.float64()),
            ("generation_seconds", pa.float64()),
            ("encode_seconds", pa.float64()),
            ("write_seconds", pa.float64()),
            ("queue_seconds", pa.float64()),
            ("committed_at", pa.float64()),
            ("stages", pa.list_(stage_struct())),
        ]
    )


@dataclass
class EncodedImages:
    """A batch's finished images, encoded; None for rows without an image (failed)."""

    keys: list[str | None]  # where each goes under an output prefix (keys.image_key)
    data: list[bytes | None]
    sha256: list[str | None]
    format: str
    seconds: float  # encoding time per row of the batch


def encode_images(batch: dict[str, np.ndarray], encoding: Encoding = Encoding()) -> EncodedImages:
    started = time.perf_counter()
    count = len(batch[B.ID])
    keys: list[str | None] = [None] * count
    data: list[bytes | None] = [None] * count
    digests: list[str | None] = [None] * count
    for row in range(count):
        if batch[B.STATUS][row] != B.OK:
            continue
        pixels = B.image_view(batch[B.IMAGE][row], batch[B.WIDTH][row], batch[B.HEIGHT][row])
        data[row] = images.encode(pixels, encoding.format, encoding.quality, encoding.png_compress_level)
        keys[row] = image_key(batch[B.ID][row], encoding.format)
        digests[row] = hashlib.sha256(data[row]).hexdigest()
    return EncodedImages(keys, data, digests, encoding.format, (time.perf_counter() - started) / max(count, 1))


def _stage_records(batch: dict[str, np.ndarray], stages: tuple[dict[str, Any], ...], row: int) -> list[dict]:
    records = []
    for index, info in enumerate(stages):
        def cell(name: str):
            column = batch.get(B.stage_column(index, name))
            return None if column is None else column[row]

        ran = bool(cell("ran"))  # False: the row failed before this stage
        present = {"always": True, "ran": ran, "made": ran and bool(cell("width"))}  # made: it has an image
        record = {}
        for field in STAGE_RECORD:
            if not present[field.when]:
                record[field.name] = None
            elif field.source == "index":
                record[field.name] = index
            elif field.source == "worker":
                record[field.name] = field.python(cell(field.name))
            elif field.source == "row":  # the row's own value wins over the stage's
                record[field.name] = batch[field.name][row] or info[field.name]
            else:
                record[field.name] = info[field.name]
        records.append(record)
    return records


def metadata_table(
    batch: dict[str, np.ndarray],
    stages: tuple[dict[str, Any], ...],
    encoded: EncodedImages,
    uri_prefix: str | None = None,
    write_seconds: float = 0.0,
    queue_seconds: np.ndarray | None = None,
):
    """The batch's metadata rows (a pyarrow table of metadata_schema()). uri_prefix: where
    the images were written (image_uri is the prefix joined with the key), None if nowhere.
    queue_seconds: the batch's wait in queues (B.queued), measured when it was handed over."""
    import pyarrow as pa

    count = len(batch[B.ID])
    status = batch[B.STATUS]
    ok = [s == B.OK for s in status]
    generation = np.zeros(count)
    for index in range(len(stages)):
        seconds = batch.get(B.stage_column(index, "seconds"))
        if seconds is not None:
            generation += np.nan_to_num(seconds.astype(np.float64))
    rows = {
        "id": [str(i) for i in batch[B.ID]],
        "status": list(status),
        "error": [e or None for e in batch[B.ERROR]],
        "image_uri": [storage.join(uri_prefix, key) if key and uri_prefix else None for key in encoded.keys],
        "prompt": [str(p) for p in batch[B.PROMPT]],
        "negative_prompt": [n or stages[0]["negative_prompt"] for n in batch[B.NEGATIVE_PROMPT]],
        "seed": [int(s) for s in batch[B.SEED]],
        "stage_chain": [">".join(stage["kind"] for stage in stages)] * count,
        "models": [[stage["model"] for stage in stages]] * count,
        "width": [int(w) if good else None for w, good in zip(batch[B.WIDTH], ok)],
        "height": [int(h) if good else None for h, good in zip(batch[B.HEIGHT], ok)],
        "format": [encoded.format if good else None for good in ok],
        "bytes": [len(data) if data is not None else None for data in encoded.data],
        "sha256": encoded.sha256,
        "prepare_seconds": [float(p) for p in batch[B.PREPARE_SECONDS]],
        "generation_seconds": [float(g) for g in generation],
        "encode_seconds": [encoded.seconds] * count,
        "write_seconds": [write_seconds] * count,
        "queue_seconds": [float(q) for q in (B.queued(batch) if queue_seconds is None else queue_seconds)],
        "stages": [_stage_records(batch, stages, row) for row in range(count)],
        # Unix time this shard's metadata was written, i.e. when its rows were committed.
        "committed_at": [time.time()] * count,
    }
    return pa.Table.from_pydict(rows, schema=metadata_schema())


# The status of the one row write_outputs returns when the output cannot be written: the
# driver ends the job with its error. Returned, not raised, as Ray Data keeps only the text
# of an exception raised in a task.
OUTPUT_ERROR = "output_error"


def write_outputs(batch: dict[str, np.ndarray], target: OutputTarget):
    """Write the shard's images, then commit its metadata; return its rows' id, status, error
    (or one OUTPUT_ERROR row when the output cannot be written)."""
    import pyarrow as pa

    if B.COMMITTED in batch and batch[B.COMMITTED].any():  # batch mates an earlier run wrote
        fresh = ~np.asarray(batch[B.COMMITTED], dtype=bool)
        batch = {name: column[fresh] for name, column in batch.items()}
    if not len(batch[B.ID]):  # every row of the shard was committed by an earlier run
        return metadata_schema().empty_table().select(["id", "status", "error"])
    try:
        return _write_shard(batch, target)
    except storage.OutputWriteError as error:
        return pa.table({"id": [None], "status": [OUTPUT_ERROR], "error": [str(error)]},
                        schema=metadata_schema().empty_table().select(["id", "status", "error"]).schema)


def _write_shard(batch: dict[str, np.ndarray], target: OutputTarget):
    import pyarrow as pa

    # 1. Encode every finished image and write them: one object each, or the shard's one file.
    queue_seconds = B.queued(batch)
    encoded = encode_images(batch, target.encoding)
    shard = int(batch[B.SHARD][0]) if B.SHARD in batch else None
    started = time.perf_counter()
    fs, root = storage.filesystem(target.log.path, target.log.storage_options)
    sharded = target.layout != "files" and shard is not None
    try:
        if not sharded:
            storage.write_many_atomic(
                fs, {storage.join(root, key): data for key, data in zip(encoded.keys, encoded.data) if key is not None}
            )
    except Exception as error:  # storage I/O only: a full disk, permissions, a missing bucket
        raise storage.OutputWriteError.of(target.log.path, error) from None
    table = metadata_table(batch, target.stages, encoded, target.log.path, 0.0, queue_seconds)
    if sharded:
        table = _write_shard_file(fs, root, target, shard, table, encoded)
    write_seconds = (time.perf_counter() - started) / len(batch[B.ID])
    table = table.set_column(table.schema.get_field_index("write_seconds"), "write_seconds",
                             pa.array([write_seconds] * table.num_rows, pa.float64()))

    # 2. The metadata rows, after their images exist: the commit.
    target.log.commit(table, shard)
    return table.select(["id", "status", "error"])


def _write_shard_file(fs, root: str, target: OutputTarget, shard: int, table, encoded: EncodedImages):
    """Write the shard's tar or Parquet file; return the metadata with each image_uri
    pointing into it."""
    import pyarrow as pa

    from pipeline.io import layouts
    from pipeline.io.commit_log import shard_stem

    name = layouts.shard_file(target.layout, shard_stem(shard, table.column("id").to_pylist()))
    build = layouts.webdataset_tar if target.layout == "webdataset" else layouts.parquet_shard
    data, members = build(table, encoded.keys, encoded.data)
    try:
        storage.write_bytes_atomic(fs, storage.join(root, name), data)
    except Exception as error:  # storage I/O only
        raise storage.OutputWriteError.of(target.log.path, error) from None
    uris = [f"{storage.join(target.log.path, name)}#{member}" if member else None for member in members]
    return table.set_column(table.schema.get_field_index("image_uri"), "image_uri", pa.array(uris, pa.string()))
