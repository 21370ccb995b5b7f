"""Encode and write the images, then the batch's metadata, under the output prefix.

Runs as a Ray Data CPU task after the last stage, so PNG/JPEG encoding and uploads stay off
the GPU actors. Order within a batch: every image first, then one metadata Parquet file for
the batch, named after the batch's row ids. Metadata therefore never points at an image
that is not written, and a rerun of the same batch overwrites the same files.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import batch as B
from pipeline import storage
from pipeline.io import images
from pipeline.keys import batch_name, image_key


@dataclass(frozen=True)
class StageInfo:
    kind: str
    model: str
    scheduler: str | None
    noise_level: int | None
    negative_prompt: str | None
    dtype: str


@dataclass(frozen=True)
class OutputTarget:
    """Everything the writer task needs (plain data, sent to tasks)."""

    path: str
    format: str
    quality: int
    png_compress_level: int
    storage_options: dict[str, Any]
    stages: tuple[StageInfo, ...]


def metadata_schema():
    import pyarrow as pa

    stage = pa.struct(
        [
            ("index", pa.int32()),
            ("kind", pa.string()),
            ("model", pa.string()),
            ("model_revision", pa.string()),
            ("scheduler", pa.string()),
            ("dtype", pa.string()),
            ("negative_prompt", pa.string()),
            ("seed", pa.int64()),
            ("steps", pa.int32()),
            ("guidance_scale", pa.float64()),
            ("strength", pa.float64()),
            ("noise_level", pa.int32()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("seconds", pa.float64()),
            ("text_encode_seconds", pa.float64()),
            ("vae_seconds", pa.float64()),
            ("device", pa.string()),
            ("prompt_truncated", pa.bool_()),
            ("nsfw", pa.bool_()),
        ]
    )
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
            ("stages", pa.list_(stage)),
        ]
    )


def _stage_records(batch: dict[str, np.ndarray], target: OutputTarget, row: int) -> list[dict[str, Any]]:
    records = []
    for index, info in enumerate(target.stages):
        def value(field: str, cast=None):
            column = batch.get(B.stage_column(index, field))
            if column is None:
                return None
            item = column[row]
            if item is None or (isinstance(item, float) and np.isnan(item)):
                return None
            return cast(item) if cast else item

        ran = bool(value("ran"))  # False: the row failed before this stage
        made = ran and bool(value("width", int))  # False: the stage failed the row
        negative = batch[B.NEGATIVE_PROMPT][row] or info.negative_prompt
        records.append(
            {
                "index": index,
                "kind": info.kind,
                "model": info.model,
                "model_revision": value("model_revision"),
                "scheduler": info.scheduler,
                "dtype": info.dtype,
                "negative_prompt": negative if ran else None,
                "seed": value("seed", int) if ran else None,
                "steps": value("steps", int) if ran else None,
                "guidance_scale": value("guidance_scale", float) if ran else None,
                "strength": value("strength", float) if ran else None,
                "noise_level": info.noise_level,
                "width": value("width", int) if made else None,
                "height": value("height", int) if made else None,
                "seconds": value("seconds", float) if made else None,
                "text_encode_seconds": value("text_encode_seconds", float) if made else None,
                "vae_seconds": value("vae_seconds", float) if made else None,
                "device": value("device"),
                "prompt_truncated": bool(value("prompt_truncated")) if ran else None,
                "nsfw": bool(value("nsfw")) if made else None,
            }
        )
    return records


def write_outputs(batch: dict[str, np.ndarray], target: OutputTarget):
    """Write the batch's images and metadata; return the metadata rows' id, status, error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    if B.COMMITTED in batch and batch[B.COMMITTED].any():  # batch mates an earlier run wrote
        fresh = ~np.asarray(batch[B.COMMITTED], dtype=bool)
        batch = {name: column[fresh] for name, column in batch.items()}
    count = len(batch[B.ID])
    if not count:  # every row of the chunk was committed by an earlier run
        return metadata_schema().empty_table().select(["id", "status", "error"])
    queue_seconds = B.queued(batch)
    fs, root = storage.filesystem(target.path, target.storage_options)
    status = batch[B.STATUS].copy()
    errors = batch[B.ERROR].copy()

    # 1. Encode every finished image and upload them together.
    uploads: dict[str, bytes] = {}
    uris: list[str | None] = [None] * count
    sizes: list[int | None] = [None] * count
    digests: list[str | None] = [None] * count
    for row in range(count):
        if status[row] != B.OK:
            continue
        pixels = B.image_view(batch[B.IMAGE][row], batch[B.WIDTH][row], batch[B.HEIGHT][row])
        data = images.encode(pixels, target.format, target.quality, target.png_compress_level)
        key = image_key(batch[B.ID][row], target.format)
        uploads[storage.join(root, key)] = data
        uris[row] = storage.join(target.path, key)
        sizes[row] = len(data)
        digests[row] = hashlib.sha256(data).hexdigest()
    encoded = time.perf_counter()
    storage.write_many_atomic(fs, uploads)
    encode_seconds = (encoded - started) / count
    write_seconds = (time.perf_counter() - encoded) / count

    # 2. The metadata rows, after their images exist.
    chain = ">".join(stage.kind for stage in target.stages)
    models = [stage.model for stage in target.stages]
    default_negative = target.stages[0].negative_prompt
    generation = np.zeros(count)
    for index in range(len(target.stages)):
        seconds = batch.get(B.stage_column(index, "seconds"))
        if seconds is not None:
            generation += np.nan_to_num(seconds.astype(np.float64))
    ok = [s == B.OK for s in status]
    rows = {
        "id": [str(i) for i in batch[B.ID]],
        "status": list(status),
        "error": [e or None for e in errors],
        "image_uri": uris,
        "prompt": [str(p) for p in batch[B.PROMPT]],
        "negative_prompt": [n or default_negative for n in batch[B.NEGATIVE_PROMPT]],
        "seed": [int(s) for s in batch[B.SEED]],
        "stage_chain": [chain] * count,
        "models": [models] * count,
        "width": [int(w) if good else None for w, good in zip(batch[B.WIDTH], ok)],
        "height": [int(h) if good else None for h, good in zip(batch[B.HEIGHT], ok)],
        "format": [target.format if good else None for good in ok],
        "bytes": sizes,
        "sha256": digests,
        "prepare_seconds": [float(p) for p in batch[B.PREPARE_SECONDS]],
        "generation_seconds": [float(g) for g in generation],
        "encode_seconds": [encode_seconds] * count,
        "write_seconds": [write_seconds] * count,
        "queue_seconds": [float(q) for q in queue_seconds],
        "stages": [_stage_records(batch, target, row) for row in range(count)],
        # Unix time this chunk's metadata was written, i.e. when its rows were committed.
        "committed_at": [time.time()] * count,
    }
    table = pa.Table.from_pydict(rows, schema=metadata_schema())
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    name = batch_name(rows["id"]) + ".parquet"
    storage.write_bytes_atomic(fs, storage.join(root, "metadata", name), buffer.getvalue())
    return table.select(["id", "status", "error"])
