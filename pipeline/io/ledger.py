"""What a previous run already committed, read from the metadata files.

The metadata is the commit log: a row is done when it appears in a metadata file, because a
batch's metadata file is written (atomically) only after every image of the batch.
"""

from __future__ import annotations

from typing import Any

from pipeline import storage


def _metadata_files(output_path: str, storage_options: dict[str, Any]):
    fs, root = storage.filesystem(output_path, storage_options)
    folder = storage.join(root, "metadata")
    if not fs.exists(folder):
        return fs, []
    return fs, sorted(f for f in fs.find(folder) if f.endswith(".parquet"))


def committed_rows(output_path: str, storage_options: dict[str, Any]) -> dict[str, str]:
    """id -> status of every committed row."""
    import pyarrow.parquet as pq

    fs, files = _metadata_files(output_path, storage_options)
    rows: dict[str, str] = {}
    for file in files:
        with fs.open(file, "rb") as handle:
            table = pq.read_table(handle, columns=["id", "status"])
        for row_id, status in zip(table.column("id").to_pylist(), table.column("status").to_pylist()):
            if rows.get(row_id) != "ok":
                rows[row_id] = status
    return rows


def uncommit(output_path: str, storage_options: dict[str, Any], ids: set[str]) -> int:
    """Remove these rows from the metadata (each file rewritten atomically, or deleted when
    empty), so they can run again without ever appearing twice. Returns rows removed.

    Used by --retry-failed before the rerun starts: if the run is killed in between, the rows
    are merely missing, and the next run fills them in.
    """
    import io

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, files = _metadata_files(output_path, storage_options)
    removed = 0
    wanted = pa.array(list(ids), type=pa.string())
    for file in files:
        with fs.open(file, "rb") as handle:
            table = pq.read_table(handle)
        drop = pc.is_in(table.column("id"), value_set=wanted)
        count = pc.sum(drop).as_py() or 0
        if not count:
            continue
        kept = table.filter(pc.invert(drop))
        if kept.num_rows:
            buffer = io.BytesIO()
            pq.write_table(kept, buffer)
            storage.write_bytes_atomic(fs, file, buffer.getvalue())
        else:
            fs.rm_file(file)
        removed += count
    return removed
