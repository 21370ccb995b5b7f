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


def uncommit_chunks(output_path: str, storage_options: dict[str, Any], ids: set[str]) -> set[str]:
    """Remove from the metadata every chunk (metadata file) that holds one of these rows, and
    return the ids of all rows removed.

    Used by --retry-failed before the rerun starts. Whole chunks, not single rows: a chunk
    reruns with its original batch mates (so its other rows get the same bytes again, under
    the same keys), and no short chunk ever shifts the batches of the chunks after it. If
    the run is killed in between, those rows are merely missing and the next run fills them.
    """
    import pyarrow.parquet as pq

    fs, files = _metadata_files(output_path, storage_options)
    removed: set[str] = set()
    for file in files:
        with fs.open(file, "rb") as handle:
            chunk_ids = set(pq.read_table(handle, columns=["id"]).column("id").to_pylist())
        if chunk_ids & ids:
            fs.rm_file(file)
            removed |= chunk_ids
    return removed
