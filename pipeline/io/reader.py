"""Find and read the input Parquet table (local path, glob, or s3:// URI)."""

from __future__ import annotations

import os
import posixpath
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline import storage
from pipeline.spec import JobSpec, SpecError

_GLOB_CHARS = "*?["


class InputError(SpecError):
    """The input table cannot be read or lacks a column the job needs."""


def input_files(path: str, storage_options: dict[str, Any], output: str | None = None) -> tuple[Any, list[str]]:
    """(filesystem, Parquet files) for a file, a folder of Parquet files, or a glob. A
    folder or glob leaves out the Parquet files `output` (the job's output.path) holds:
    its metadata and its parquet layout's shards. An output kept inside the input's folder
    holds Parquet files with a prompt column, which a rerun would read as input rows."""
    fs, inner = storage.filesystem(path, storage_options)
    try:
        if any(char in inner for char in _GLOB_CHARS):
            # Only Parquet files: a glob over a folder also matches _SUCCESS and such.
            root = posixpath.dirname(inner[: _first_wildcard(inner)])
            files = [f for f in fs.glob(inner) if f.endswith((".parquet", ".parq")) and _visible(f, root, inner)]
        elif fs.isdir(inner):
            files = [f for f in fs.find(inner) if f.endswith(".parquet") and _visible(f, inner)]
        else:
            files = [inner] if fs.exists(inner) else []  # named: taken as it is
            output = None
    except Exception as error:  # permissions, unknown bucket, unreachable endpoint
        raise InputError(f"input.path: cannot list {path}: {type(error).__name__}: {error}") from None
    if output and _scheme(output) == _scheme(path):
        from pipeline.io.layouts import FOLDERS

        root = storage.filesystem(output, storage_options)[1].rstrip("/")
        folders = ("metadata", *FOLDERS.values())
        written = tuple(f"{root}/{folder}/" for folder in folders)
        files = [file for file in files if not file.startswith(written)]
        if not storage.is_remote(path):  # an output reached through a symlink into the input's folder
            real = tuple(f"{os.path.realpath(root)}/{folder}/" for folder in folders)
            files = [file for file in files if not os.path.realpath(file).startswith(real)]
    if not files:
        raise InputError(f"input.path: no Parquet files at {path}")
    return fs, sorted(files)


def _first_wildcard(path: str) -> int:
    """Where a glob's wildcards start (len(path) when there are none)."""
    return min([path.index(c) for c in _GLOB_CHARS if c in path] or [len(path)])


def _scheme(path: str) -> str:
    return path.split("://")[0] if storage.is_remote(path) else "file"


def _visible(file: str, root: str, pattern: str = "") -> bool:
    """Not hidden: no name below `root` starts with "." or "_". Spark and Hive leave
    `_temporary/` attempts and `.part-*.crc` files beside their output, and an interrupted
    copy leaves dot-files; pyarrow and Ray Data skip them, and so does this listing, unless
    the glob `pattern` itself names such files (`_part-*.parquet`)."""
    def hidden(names: str) -> bool:
        return any(name.startswith((".", "_")) for name in names.split("/") if name)

    if pattern and hidden(pattern[len(root):]):
        return True
    return not hidden(file[len(root):] if file.startswith(root) else posixpath.basename(file))


def base_dir(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """The folder that relative image paths in the table resolve against: the input path
    itself when it is a folder, else its folder (for a glob, the part before the first
    wildcard)."""
    cut = _first_wildcard(path)
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


@dataclass(frozen=True)
class InputShape:
    """The input's columns, from every non-empty file's Parquet footer (no data)."""

    schema: Any  # pyarrow.Schema: the union of the files' columns, types widened as the reads do
    files: dict[str, frozenset[str]]  # file -> the columns it holds
    rows: dict[str, int] = None  # file -> its row count (from the footer)
    sizes: dict[str, int] = None  # file -> its size in bytes
    versions: dict[str, str] = None  # file -> its version: S3's ETag, a local file's mtime

    def first_file_without(self, column: str) -> str | None:
        return next((file for file, names in self.files.items() if column not in names), None)


def file_version(info: dict) -> str:
    """A listed file's version: S3's ETag (a hash of its content), or a local file's mtime,
    ctime and inode. The mtime alone survives a rewrite by `cp -p`, `rsync -t` or `touch -r`;
    the ctime does not (setting the mtime sets it), so a same-size rewrite is a new version."""
    if info.get("ETag"):
        return str(info["ETag"])
    if info.get("mtime") is None:
        return ""
    return f"{info['mtime']}:{info.get('created', '')}:{info.get('ino', '')}"


def plain_types(schema):
    """Dictionary-encoded columns (pandas categories) as their value type: a file written
    with one next to a file with plain strings is the same column."""
    import pyarrow as pa

    return pa.schema(
        [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema],
        metadata=schema.metadata,
    )


def input_shape(spec: JobSpec) -> InputShape:
    """Every file's footer is read, so a column that only later files carry (a `seed`
    column added to this month's file) is read too. Empty (0-byte) files are skipped, as
    both reads skip them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, files = input_files(spec.input.path, spec.input_storage_options(), spec.output.path)

    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    versions: dict[str, str] = {}

    def footer(file: str):
        try:
            info = fs.info(file)
            sizes[file] = int(info.get("size") or 0)
            versions[file] = file_version(info)
            if sizes[file] == 0:
                return None
            with fs.open(file, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                counts[file] = parquet.metadata.num_rows
                return plain_types(parquet.schema_arrow)
        except Exception as error:
            return unreadable(file, error)

    # Footers are a few KB each; on an object store their latency adds up, so 16 at once.
    with ThreadPoolExecutor(max_workers=16) as pool:
        schemas = dict(zip(files, pool.map(footer, files)))
    for file, schema in schemas.items():
        if isinstance(schema, InputError):
            raise schema
    schemas = {file: schema for file, schema in schemas.items() if schema is not None}
    if not schemas:
        raise InputError("input.path: every Parquet file of the input is empty (0 bytes)")
    try:
        union = pa.unify_schemas(list(schemas.values()), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(f"input.path: the Parquet files disagree on a column's type: {error}") from None
    fields = []
    for field in union:
        # Nullable: a file without the column gives its rows nulls, even where another
        # file (Spark's) declares it NOT NULL.
        field = field.with_nullable(True)
        exact = [schema.field(field.name).type for schema in schemas.values() if field.name in schema.names]
        if pa.types.is_floating(field.type) and any(pa.types.is_integer(t) or pa.types.is_decimal(t) for t in exact):
            # int beside float: as double, integers above 2**53 (63-bit seeds, big ids)
            # would not survive the cast; as text, each keeps its exact digits (8.0 reads
            # "8"), and prepare parses them as it parses any cell.
            field = field.with_type(pa.string())
        fields.append(field)
    return InputShape(pa.schema(fields), {file: frozenset(schema.names) for file, schema in schemas.items()},
                      {file: counts[file] for file in schemas}, {file: sizes[file] for file in schemas},
                      {file: versions[file] for file in schemas})


def unreadable(file: str, error: Exception) -> InputError:
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


def _read_on_driver(fs, files: list[str], sizes: list[int], columns: list[str], schema=None):
    """The files' rows in file order, then row order: the order the distributed read keeps
    (preserve_order), so both reads cut the same chunks and a job's bytes do not depend on
    which read ran. Like that read, it skips empty (0-byte) files, widens column types that
    differ between files (int32 and int64, string and large_string, dictionary-encoded and
    plain) and gives a column a file lacks nulls there. Preflight has refused files that
    lack a column the job cannot do without."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for file, size in zip(files, sizes):
        if not size:
            continue
        try:
            with fs.open(file, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                present = [name for name in columns if name in parquet.schema_arrow.names]
                table = parquet.read(columns=present)
        except Exception as error:
            raise unreadable(file, error) from None
        try:
            if schema is not None:  # each file to the common types first: concatenating widens int to double
                table = table.cast(pa.schema([schema.field(name) for name in table.column_names]))
            tables.append(table.cast(plain_types(table.schema)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as error:
            raise InputError(f"input.path: {file} does not fit the types of the table's other files: {error}") from None
    if not tables:
        raise InputError("input.path: every Parquet file of the input is empty (0 bytes)")
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
        return table.select([name for name in columns if name in table.column_names])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(f"input.path: the Parquet files disagree on a column's type: {error}") from None


def read_input(spec: JobSpec, columns: list[str], task_cpus: float, driver_max_bytes: int | None = None, schema=None):
    """The input as a Ray dataset, reading only the columns the job uses: read here when the
    files are few and hold at most driver_max_bytes (default DRIVER_READ_MAX_BYTES), else
    by Ray Data's distributed Parquet read, which casts each file to `schema` (the
    columns' types over the whole table) when given. Without it, Ray Data refuses files
    whose types cannot be merged (a dictionary-encoded column beside a plain one)."""
    import pyarrow.fs
    import ray.data

    limit = DRIVER_READ_MAX_BYTES if driver_max_bytes is None else driver_max_bytes
    fs, files = input_files(spec.input.path, spec.input_storage_options(), spec.output.path)
    sizes = _sizes_if_small(fs, files, limit)
    if sizes is not None:
        # from_blocks, not from_arrow: from_arrow reads the table's schema and size in a
        # remote task that the driver waits for. While the cluster starts, that task waits
        # for a worker process and then holds one of the workers Ray pre-starts, so the
        # stage actor has to start a new one (benchmarks/README.md). from_blocks is a Ray
        # DeveloperAPI; tests/test_reader.py runs this path.
        table = _read_on_driver(fs, files, sizes, columns, schema)
        return ray.data.from_blocks([table.select(schema.names).cast(schema) if schema is not None else table])
    remote = storage.is_remote(spec.input.path)
    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)) if remote else None
    return ray.data.read_parquet(
        files,
        filesystem=filesystem,
        columns=columns,
        schema=schema,
        num_cpus=task_cpus,
    )


def read_if_small(spec: JobSpec, columns: list[str], schema=None):
    """The input's rows as one pyarrow table, as read_input's driver read gives them, when
    the input is within that read's limits (few files, at most DRIVER_READ_MAX_BYTES); else
    None, without reading anything."""
    fs, files = input_files(spec.input.path, spec.input_storage_options(), spec.output.path)
    sizes = _sizes_if_small(fs, files, DRIVER_READ_MAX_BYTES)
    if sizes is None:
        return None
    table = _read_on_driver(fs, files, sizes, columns, schema)
    return table.select(schema.names).cast(schema) if schema is not None else table


# Row groups this worker process read last, for the next shard's task. Parquet is read a
# row group at a time, and a group holds a shard's rows only with the others': pyarrow's
# default group is 10^6 rows, a thousand shards. Each shard is read by its own task (one
# block per shard, pipeline/processor.py), so without this each of those tasks would read
# the whole group again, a cost quadratic in the group's size (on this machine 142 s of
# CPU per 10^6 one-group rows against 1.0 s). Shards are handed to the pool of task
# processes in order, so a process reads a group about once while it works through the
# group's shards: a cost that grows with the table, not with its square. A group is
# kept only if it holds at most GROUP_CACHE_BYTES (the columns read), and the groups kept
# by a process stay within that too: a table of embedded images in large groups is read
# again per shard rather than held by every task process. Entries are keyed by the
# file's identity as the task finds it (S3's ETag, a hash of the content; a local file's
# mtime, ctime, inode and size, which no rewrite keeps), so a file rewritten between two
# jobs of one driver is read anew.
GROUP_CACHE_BYTES = 256 * 2**20
_groups: "OrderedDict[tuple, Any]" = OrderedDict()
_footers: "OrderedDict[tuple, Any]" = OrderedDict()
_lock = threading.Lock()


def _remember(cache: OrderedDict, key: tuple, value, size: int, limit: int) -> None:
    if size > limit:
        return
    with _lock:
        cache[key] = (value, size)
        cache.move_to_end(key)
        total = sum(entry[1] for entry in cache.values())
        while total > limit:
            total -= cache.popitem(last=False)[1][1]


def _recall(cache: OrderedDict, key: tuple):
    with _lock:
        entry = cache.get(key)
    return None if entry is None else entry[0]


def _identity(fs, file: str, version: str | None) -> str | None:
    """What a file's cached footer and row groups are keyed by, or None (not cached): the
    plan's version for an object store (S3's ETag), the file's stat for a local file (its
    mtime alone survives `cp -p`, `rsync -t` and `touch -r`)."""
    if not version:
        return None
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        stat = os.stat(file)
        return f"{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}:{stat.st_size}"
    return version


def _rows_of(fs, file: str, version: str | None, start: int, stop: int, columns: list[str]):
    """Rows [start, stop) of `file`, the columns of `columns` it has, from the row groups
    that hold them (cached when the file's version is known)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    identity = _identity(fs, file, version)
    handle = parquet = None
    try:
        footer = _recall(_footers, (file, identity)) if identity else None
        if footer is None:
            handle = fs.open(file, "rb")
            parquet = pq.ParquetFile(handle)
            footer = (parquet.metadata, parquet.schema_arrow)
            if identity:
                _remember(_footers, (file, identity), footer, 1, 64)
        metadata, schema = footer
        present = tuple(name for name in columns if name in schema.names)
        parts, first, offset = [], start, 0
        for index in range(metadata.num_row_groups):
            size = metadata.row_group(index).num_rows
            if offset < stop and offset + size > start:
                first = offset if not parts else first
                key = (file, identity, index, present)
                table = _recall(_groups, key) if identity else None
                if table is None:
                    if parquet is None:
                        handle = fs.open(file, "rb")
                        parquet = pq.ParquetFile(handle)
                    table = parquet.read_row_group(index, columns=list(present))
                    if identity:
                        _remember(_groups, key, table, table.nbytes, GROUP_CACHE_BYTES)
                parts.append(table)
            offset += size
        if parts:
            table = pa.concat_tables(parts).slice(start - first, stop - start)
        else:  # an empty piece, or a file that lost its rows (below)
            table = pa.schema([schema.field(name) for name in present]).empty_table()
    finally:
        if handle is not None:
            handle.close()
    if table.num_rows != max(0, stop - start):
        raise InputError(f"input.path: {file} holds {offset} rows, not the {stop} or more it held when the job "
                         "started: it changed during the run; run the job again")
    return table


def read_rows(fs, pieces: list[tuple[str, int, int]], columns: list[str], schema,
              versions: dict[str, str] | None = None):
    """Rows [start, stop) of each (file, start, stop) piece, in order, as one table of
    `schema`'s columns and types (a column a file lacks is null there), as both reads
    above give them. Only the row groups that hold the pieces' rows are read, and those
    of a file whose version `versions` gives are kept for the next call (see above)."""
    import pyarrow as pa

    tables = []
    for file, start, stop in pieces:
        try:
            table = _rows_of(fs, file, (versions or {}).get(file), start, stop, columns)
        except InputError:
            raise
        except Exception as error:
            raise unreadable(file, error) from None
        try:
            table = table.cast(pa.schema([schema.field(name) for name in table.column_names]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as error:
            raise InputError(f"input.path: {file} does not fit the types of the table's other files: {error}") from None
        for name in schema.names:
            if name not in table.column_names:
                table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
        tables.append(table.select(schema.names))
    return pa.concat_tables(tables) if tables else schema.empty_table()
