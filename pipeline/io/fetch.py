"""Fetch the images and masks a table names, bounded: an allow-list of URI schemes, regular
files and objects only, at most `limit` bytes each, and a deadline for HTTP.

A table is untrusted input. Its cells decide what a worker opens, so nothing here hands a
URI to fsspec's protocol lookup (which resolves dozens of schemes, `::` chains included):
each allowed scheme has its own reader, and any other scheme fails its row unread.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

# What an image cell may name, in words for error messages.
ALLOWED = "a local path, file:// or s3://"
# Pseudo-filesystems: their files are "regular" to stat, yet they hold the process's
# environment (credentials), kernel state, or endless streams.
_PSEUDO_ROOTS = ("/proc", "/sys")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_CHUNK = 1 << 16


class Refused(ValueError):
    """An input the rules refuse; its message is the row's error, after the URI."""


def scheme_of(uri: str) -> str | None:
    """The URI's scheme, lower case ("s3", "http", "data"), or None for a plain path. As in
    RFC 3986, a colon in a relative path's first segment reads as a scheme: write `./a:b.png`."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else None


def shown(uri: str, limit: int = 200) -> str:
    """A URI for an error message: a table's cell may be megabytes long."""
    return uri if len(uri) <= limit else uri[:limit] + "..."


def too_large(size: int | str, limit: int) -> Refused:
    return Refused(f"{size} bytes, over input.max_image_bytes ({limit})")


def fetch_all(uris: list[str], storage_options: dict[str, Any], limit: int, allow_http: bool = False,
              http_timeout_s: float = 30.0) -> list[bytes | Exception]:
    """Fetch many URIs concurrently (S3 latency dominates: 16 requests in flight); each
    result is the bytes, or the exception that fails that row alone."""
    from concurrent.futures import ThreadPoolExecutor

    def fetch(uri: str) -> bytes | Exception:
        try:
            return fetch_one(uri, storage_options, limit, allow_http, http_timeout_s)
        except Exception as error:  # refused, missing, permissions, timeouts: this row only
            return error

    if len(uris) <= 1:
        return [fetch(uri) for uri in uris]
    with ThreadPoolExecutor(max_workers=min(16, len(uris))) as pool:
        return list(pool.map(fetch, uris))


def fetch_one(uri: str, storage_options: dict[str, Any], limit: int, allow_http: bool = False,
              http_timeout_s: float = 30.0) -> bytes:
    """One URI's bytes, at most `limit` of them; raises Refused for what the rules refuse."""
    scheme = scheme_of(uri)
    if scheme is None:
        return read_local(uri, limit)
    if scheme == "file":
        path = uri[7:] if uri[4:7] == "://" else ""
        if not path.startswith("/"):
            raise Refused("a file URI is file:// and an absolute path (file:///folder/image.png)")
        return read_local(path, limit)
    if scheme in ("s3", "s3a"):  # s3a: Hadoop's name, which storage.filesystem takes too
        if uri[len(scheme):len(scheme) + 3] != "://":
            raise Refused("an s3 URI is s3://bucket/key")
        return read_s3(uri[len(scheme) + 3:], storage_options, limit)
    if scheme in ("http", "https") and allow_http:
        return read_http(uri, limit, http_timeout_s)
    named = f"{scheme}://" if uri[len(scheme):len(scheme) + 3] == "://" else f"{scheme}:"
    if scheme in ("http", "https"):
        raise Refused(f"{named} is not allowed while input.allow_http is false; image cells take {ALLOWED}")
    raise Refused(f"{named} is not an allowed scheme; image cells take {ALLOWED}, or http(s):// when "
                  "input.allow_http is true")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_path(real: str) -> None:
    if any(real == root or real.startswith(root + "/") for root in _PSEUDO_ROOTS):
        raise Refused("files under /proc and /sys are not read")


def _check_status(status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise Refused(f"not a regular file ({_kind(status.st_mode)}); only regular files are read")
    if status.st_size == 0:
        # procfs and sysfs files mounted elsewhere say 0 (or a page) too; an empty file is no image
        raise Refused("the file is empty")


def read_local(path: str, limit: int) -> bytes:
    """A local regular file's bytes, at most `limit`. A device, FIFO, socket or directory is
    refused from stat, before any open: opening a FIFO for reading blocks until a writer
    comes, and /dev/zero never ends."""
    # 1. The path with its links resolved, then stat: only a regular file is ever opened.
    _check_path(os.path.realpath(path))
    _check_status(os.stat(path))
    # 2. Open without blocking (a FIFO swapped in after the stat answers at once) and check
    #    what was opened, by its descriptor: the path may have changed in between.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        status = os.fstat(fd)
        try:
            _check_path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # no /proc (not Linux): the check of the resolved path above stands
            pass
        _check_status(status)
        if status.st_size > limit:
            raise too_large(status.st_size, limit)
        # 3. Read at most limit + 1 bytes: a file that grew since the fstat is still bounded.
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise too_large(f"more than {limit}", limit)
    return b"".join(chunks)


def read_s3(path: str, storage_options: dict[str, Any], limit: int) -> bytes:
    """An S3 object's bytes, with one ranged GET of at most limit + 1 bytes (one request, as
    before; a larger object fails its row without being read further)."""
    import fsspec

    from pipeline import storage

    # The s3 filesystem by name, never by URI: a key may hold "::", which fsspec's URL
    # parsing would read as a chain of filesystems. cat_file, not cat: cat would expand
    # `[`, `*` and `?` in a key as glob patterns.
    fs = fsspec.filesystem("s3", **storage.merge_options(storage.S3_DEFAULTS, storage_options or {}))
    try:
        data = fs.cat_file(path, start=0, end=limit + 1)
    except OSError as error:
        # a range on an empty object: S3 answers 416 InvalidRange, which s3fs raises as EINVAL
        if "InvalidRange" not in str(error) and "range is not satisfiable" not in str(error):
            raise
        data = b""
    if len(data) > limit:
        raise too_large(f"more than {limit}", limit)
    if not data:
        raise Refused("the object is empty")
    return data


def read_http(url: str, limit: int, timeout_s: float) -> bytes:
    """An http(s) URL's body, at most `limit` bytes, within `timeout_s` for the whole fetch
    (connect, redirects, headers and body), on an event loop of its own."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: a prepare task's thread, or fetch_all's pool
        return _run_http(url, limit, timeout_s)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:  # called from a coroutine (Serve): its own thread
        return pool.submit(_run_http, url, limit, timeout_s).result()


def _run_http(url: str, limit: int, timeout_s: float) -> bytes:
    import asyncio

    # Not asyncio.run: it waits for the loop's executor threads at the end, and a DNS
    # lookup that hangs in one would outlast the timeout; close() leaves it behind.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_http_get(url, limit, timeout_s))
    except asyncio.TimeoutError:
        raise Refused(f"no complete answer within input.http_timeout_s ({timeout_s:g} s)") from None
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _http_get(url: str, limit: int, timeout_s: float) -> bytes:
    import aiohttp

    # auto_decompress off and identity asked: a gzip body could inflate past any limit
    # within one chunk. Redirects go to http(s) only (aiohttp refuses other schemes).
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s), auto_decompress=False) as session:
        async with session.get(url, headers={"Accept-Encoding": "identity"}, max_redirects=5) as response:
            if response.status != 200:
                raise Refused(f"HTTP {response.status} {response.reason or ''}".rstrip())
            if response.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise Refused(f"the body is {response.headers['Content-Encoding']}-encoded; images are sent as they are")
            if response.content_length is not None and response.content_length > limit:
                raise too_large(response.content_length, limit)
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > limit:
                    raise too_large(f"more than {limit}", limit)
            return bytes(body)
