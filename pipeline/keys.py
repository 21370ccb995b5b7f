"""Row ids, seeds and output keys: everything that must be stable across runs and machines."""

from __future__ import annotations

import hashlib
from typing import Any

# 128 bits of sha256: collision-free in practice at billions of rows, short enough for a key.
_ID_HEX = 32
_SEED_MASK = 2**63 - 1


def _sha256(text: str | bytes) -> hashlib._Hash:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text)


def content_id(values: list[Any]) -> str:
    """A stable id for a row without an id column: a hash of the values the job reads.

    Each value is tagged with its type and length so that ("ab", "c") and ("a", "bc")
    differ, and None differs from "".
    """
    digest = hashlib.sha256()
    for value in values:
        if value is None:
            digest.update(b"N;")
            continue
        if isinstance(value, (bytes, bytearray, memoryview)):
            data, tag = bytes(value), b"B"
        elif isinstance(value, float):
            data, tag = repr(value).encode(), b"F"
        else:
            data, tag = str(value).encode(), b"S"
        digest.update(tag + str(len(data)).encode() + b":" + data)
    return digest.hexdigest()[:_ID_HEX]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from its parts (job seed, row id, stage position...)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(_sha256(text).digest()[:8], "big") & _SEED_MASK


def stage_seed(row_seed: int, stage_index: int) -> int:
    """The seed of one stage of a row. The first stage uses the row's seed itself, so a row
    with `seed: 42` reproduces a plain diffusers call with manual_seed(42)."""
    return row_seed if stage_index == 0 else derive_seed(row_seed, "stage", stage_index)


EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def image_key(row_id: str, image_format: str) -> str:
    """The image's path under the output prefix: derived from the row id only, never from
    its text, so ids such as '../x' cannot escape the prefix. Two hex levels spread the
    keys over 256 prefixes, which S3 partitions independently (no throttling hot spot)."""
    digest = _sha256(str(row_id)).hexdigest()
    return f"images/{digest[:2]}/{digest[:_ID_HEX]}.{EXTENSIONS[image_format]}"


def batch_name(row_ids: list[str]) -> str:
    """A deterministic file name for a batch of rows: a rerun of the same batch overwrites."""
    return "part-" + _sha256("\n".join(sorted(row_ids))).hexdigest()[:20]
