"""Find and read the input Parquet table (local path, glob, or s3:// URI)."""

from __future__ import annotations

import os
import posixpath
from typing import Any

from pipeline import storage
from pipeline.spec import JobSpec, SpecError

_GLOB_CHARS = "*?["


class InputError(SpecError):
    """The input table cannot be read or lacks a column the job needs."""


def input_files(path: str, storage_options: dict[str, Any]) -> tuple[Any, list[str]]:
    """(filesystem, Parquet files) for a file, a folder of Parquet files, or a glob."""
    fs, inner = storage.filesystem(path, storage_options)
    try:
        if any(char in inner for char in _GLOB_CHARS):
            # Only Parquet files: a glob over a folder also matches _SUCCESS and such.
            files = sorted(f for f in fs.glob(inner) if f.endswith((".parquet", ".parq")))
        elif fs.isdir(inner):
            files = sorted(f for f in fs.find(inner) if f.endswith(".parquet"))
        elif fs.exists(inner):
            files = [inner]
        else:
            files = []
    except Exception as error:  # permissions, unknown bucket, unreachable endpoint
        raise InputError(f"input.path: cannot list {path}: {type(error).__name__}: {error}") from None
    if not files:
        raise InputError(f"input.path: no Parquet files at {path}")
    return fs, files


def base_dir(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """The folder that relative image paths in the table resolve against: the input path
    itself when it is a folder, else its folder (for a glob, the part before the first
    wildcard)."""
    cut = min([path.index(c) for c in _GLOB_CHARS if c in path] or [len(path)])
    head = path[:cut]
    if cut < len(path):
        head = posixpath.dirname(head)
    else:
        fs, inner = storage.filesystem(path, storage_options)
        if not fs.isdir(inner):
            head = posixpath.dirname(head.rstrip("/"))
    if storage.is_remote(path):
        return head.rstrip("/")
    # Absolute, because workers do not share the driver's working directory.
    return os.path.abspath(head.removeprefix("file://") or ".")


def input_schema(spec: JobSpec):
    """The input table's Arrow schema, read from the footer of its first non-empty Parquet
    file (no data). Empty (0-byte) files are skipped here as both reads skip them."""
    import pyarrow.parquet as pq

    fs, files = input_files(spec.input.path, spec.input_storage_options())
    for file in files:
        try:
            if fs.size(file) == 0:
                continue
            with fs.open(file, "rb") as handle:
                return pq.read_schema(handle)
        except Exception as error:
            raise _unreadable(file, error) from None
    raise InputError("input.path: every Parquet file of the input is empty (0 bytes)")


def _unreadable(file: str, error: Exception) -> InputError:
    return InputError(f"input.path: cannot read {file} as Parquet: {type(error).__name__}: {error}")


# Inputs up to this many Parquet bytes and files are read by the driver, which has listed
# them already, and enter Ray Data as one in-memory table. Ray Data's distributed Parquet
# read starts a listing task and a pool of footer-reading actors, new worker processes that
# pay off for large tables; on a small cluster they compete for the same cores with the
# stage actors loading their models, which is the critical path of a job's start. Measured
# with the bench's tiny job on 2 cores, 64 rows, six runs each: wall 20.5 s -> 18.5 s
# (medians). A prompt table is this small (a million prompts is some 30 MB of Parquet); a
# table that carries images is usually not, and keeps the distributed read, as does a
# folder of many small files (the driver reads one file at a time).
DRIVER_READ_MAX_BYTES = 32 * 2**20
DRIVER_READ_MAX_FILES = 64


def _sizes_if_small(fs, files: list[str], max_bytes: int) -> list[int] | None:
    """Each file's size, or None as soon as the files pass the driver read's limits (a
    large table's listing is not walked a second time)."""
    if len(files) > DRIVER_READ_MAX_FILES:
        return None
    sizes, total = [], 0
    for file in files:
        sizes.append(fs.size(file))
        total += sizes[-1]
        if total > max_bytes:
            return None
    return sizes


def _read_on_driver(fs, files: list[str], sizes: list[int], columns: list[str]):
    """The files' rows in file order, then row order: the order the distributed read keeps
    (preserve_order), so both reads cut the same chunks and a job's bytes do not depend on
    which read ran. Like that read, it skips empty (0-byte) files and widens column types
    that differ between files (int32 and int64, string and large_string)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for file, size in zip(files, sizes):
        if not size:
            continue
        try:
            with fs.open(file, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                missing = [name for name in columns if name not in parquet.schema_arrow.names]
                if missing:
                    raise InputError(f"input.path: {file} lacks the column {missing[0]!r} that the job reads")
                tables.append(parquet.read(columns=columns))
        except InputError:
            raise
        except Exception as error:
            raise _unreadable(file, error) from None
    if not tables:
        raise InputError("input.path: every Parquet file of the input is empty (0 bytes)")
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(f"input.path: the Parquet files disagree on a column's type: {error}") from None


def read_input(spec: JobSpec, columns: list[str], task_cpus: float, driver_max_bytes: int | None = None):
    """The input as a Ray dataset, reading only the columns the job uses: read here when the
    files are few and hold at most driver_max_bytes (default DRIVER_READ_MAX_BYTES), else
    by Ray Data's distributed Parquet read."""
    import pyarrow.fs
    import ray.data

    limit = DRIVER_READ_MAX_BYTES if driver_max_bytes is None else driver_max_bytes
    fs, files = input_files(spec.input.path, spec.input_storage_options())
    sizes = _sizes_if_small(fs, files, limit)
    if sizes is not None:
        # from_blocks, not from_arrow: from_arrow reads the table's schema and size in a
        # remote task that the driver waits for. While the cluster starts, that task waits
        # for a worker process and then holds one of the workers Ray pre-starts, so the
        # stage actor has to start a new one (README, Performance). from_blocks is a Ray
        # DeveloperAPI; tests/test_reader.py runs this path.
        return ray.data.from_blocks([_read_on_driver(fs, files, sizes, columns)])
    remote = storage.is_remote(spec.input.path)
    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)) if remote else None
    return ray.data.read_parquet(
        files,
        filesystem=filesystem,
        columns=columns,
        num_cpus=task_cpus,
    )
