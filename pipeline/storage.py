"""Filesystems for local paths and s3:// URIs through fsspec: one code path for both."""

from __future__ import annotations

import contextlib
import os
import posixpath
from typing import Any

# What names a temporary file of an atomic write: ".{name}.tmp-{pid}".
TEMPORARY = ".tmp-"


class OutputWriteError(RuntimeError):
    """Writing to the job's output failed (a full disk, no permission, a missing bucket):
    the job ends, exit 2, with this one line. Raised in tasks, it reaches the driver whole."""

    @classmethod
    def of(cls, output_path: str, error: BaseException, doing: str = "write to") -> "OutputWriteError":
        cause = str(error) or type(error).__name__
        return cls(f"output.path: cannot {doing} {output_path}: {cause}")


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


# Transient S3 faults (503 SlowDown, throttling, connection resets, timeouts) are retried
# with exponential backoff and full jitter by botocore's "standard" mode, under s3fs's own
# retries of dropped connections. A spec's storage_options override any of these.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "retries": {"max_attempts": 10, "mode": "standard"},
        "connect_timeout": 10,
        "read_timeout": 60,
    },
}


def merge_options(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested merge of storage options: e.g. input-level client_kwargs add to the top-level
    ones instead of replacing them."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = value
    return merged


def filesystem(path: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, path inside it) for a local path, file:// URI or s3:// URI."""
    import fsspec.core

    options: dict[str, Any] = {}
    if is_remote(path):
        options = dict(storage_options or {})
        if path.startswith(("s3://", "s3a://")):
            options = merge_options(S3_DEFAULTS, options)
    fs, inner = fsspec.core.url_to_fs(path, **options)
    return fs, inner


def join(base: str, *parts: str) -> str:
    """Join URI or path parts with '/' (also for s3://, where os.path.join would be wrong)."""
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def write_bytes_atomic(fs, path: str, data: bytes) -> None:
    """Write a whole object so that readers never see a partial one.

    An S3 PUT is atomic by itself; on a local disk we write a temporary file beside the
    target and rename it over, which POSIX makes atomic. The temporary name starts with a
    dot: a kill can leave it behind, and dataset readers (pyarrow's, Ray Data's) skip
    dot-files, so a leftover is never read as a metadata part.
    """
    if _is_local(fs):
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}{TEMPORARY}{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except Exception:  # a full disk, say: no partial file stays (a kill still can leave one)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def sweep_temporary(path: str, keep: tuple[str, ...] = ("lease",)) -> int:
    """Remove the temporary files that killed writers left under a local output folder;
    return how many. Only while no other run writes there (it holds the output's lease);
    folders named in `keep` (where runs that want the lease write) are left alone."""
    if is_remote(path) or not os.path.isdir(path.removeprefix("file://")):
        return 0
    swept = 0
    for folder, subfolders, names in os.walk(path.removeprefix("file://")):
        subfolders[:] = [name for name in subfolders if name not in keep]
        for name in names:
            if name.startswith(".") and TEMPORARY in name:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    swept += 1
    return swept


def write_many_atomic(fs, items: dict[str, bytes]) -> None:
    """Write several objects; on S3 they upload concurrently in one call."""
    if not items:
        return
    if _is_local(fs):
        for path, data in items.items():
            write_bytes_atomic(fs, path, data)
    else:
        fs.pipe(items)


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols
