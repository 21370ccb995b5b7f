"""Row ids, seeds and output keys: everything that must be stable across runs and machines."""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from typing import Any

# How rows without an id column get their ids (content_id). Written beside each output
# (row_ids.json) so that a resume refuses an output whose rows were hashed another way: it
# would match none of them and generate every row a second time. 1: a hash of the column
# values in column-name order (until 2026-11-24); 2: content_id below.
ROW_ID_SCHEME = 2

# 128 bits of sha256: collision-free in practice at billions of rows, short enough for a key.
_ID_HEX = 32
_SEED_MASK = 2**63 - 1


def _sha256(text: str | bytes) -> hashlib._Hash:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text)


def _canonical(value: Any) -> tuple[bytes, bytes] | None:
    """(type tag, bytes) of a value, None for an empty one (null or NaN). A number has one
    form whether it arrives as an int, an integral float or a decimal (a pandas int column
    with a null is float64), as a row must keep its id whatever types its file's neighbours
    widen a column to."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"B", bytes(value)
    if isinstance(value, Decimal):  # a decimal column: 5.00 is 5, 7.50 is 7.5
        value = int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and value.is_integer():
        return b"I", str(int(value)).encode()
    if isinstance(value, float):
        return b"F", repr(value).encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return b"I", str(value).encode()
    return b"S", str(value).encode()


def content_id(fields: dict[str, Any]) -> str:
    """A stable id for a row without an id column: a hash of the values the job reads, by
    what they are to the job (prompt, seed, steps...), not by column name.

    Empty cells are left out, so a column that a file added later brings (nulls for the
    older files' rows) leaves the older rows' ids as they were. Each name and value is
    tagged with its type and length, so ("ab", "c") and ("a", "bc") differ, as do "" and an
    empty cell, and b"x" and "x".
    """
    digest = hashlib.sha256()
    for name in sorted(fields):
        canonical = _canonical(fields[name])
        if canonical is None:
            continue
        tag, data = canonical
        digest.update(name.encode() + b"=" + tag + str(len(data)).encode() + b":" + data + b";")
    return digest.hexdigest()[:_ID_HEX]


def id_text(value: Any) -> str | None:
    """An id column's cell as the row's id; None when empty. 7 and 7.0 are one id, for the
    reason above; binary cells (text written without Parquet's UTF8 annotation) are decoded,
    raising UnicodeDecodeError when they are not UTF-8."""
    canonical = _canonical(value)
    if canonical is None:
        return None
    return canonical[1].decode("utf-8")


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
