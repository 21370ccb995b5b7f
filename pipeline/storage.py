"""Filesystems for local paths and s3:// URIs through fsspec: one code path for both."""

from __future__ import annotations

import os
import posixpath
from typing import Any


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def filesystem(path: str, storage_options: dict[str, Any] | None = None):
    """(fsspec filesystem, path inside it) for a local path, file:// URI or s3:// URI."""
    import fsspec.core

    options = dict(storage_options or {}) if is_remote(path) else {}
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
    target and rename it over, which POSIX makes atomic.
    """
    if _is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


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
