"""Find ids that appear more than once in an input's id column, in bounded memory.

The ids of a large table (10^8 and more) do not fit in a Python set or Counter. Each id is
hashed to 64 bits over Arrow's buffers with numpy (no Python object per id), a slice of
HASH_BYTES at a time; the hashes are spilled to local files in partitions by their top
bits, and each partition is sorted on its own, so the driver holds about PARTITION_IDS
hashes (8 bytes each) at a time. The hashes that repeat stay numpy arrays; only a bounded
number of them (VERIFIED_HASHES) are compared as text, in a second pass over the ids
whose hash is one of those.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable

import numpy as np

# Ids read from a file and hashed per step (the reader's batch): the driver's memory for
# the ids themselves is this many, whatever the file's size.
BATCH_IDS = 262_144

# Bytes of ids hashed at once, and at most this many ids: hashing takes about 50 bytes of
# numpy temporaries per id byte, so a slice costs some 13 MB whatever the batch.
HASH_BYTES = 1 << 18
HASH_IDS = 16_384

# Hashes sorted at once; a table with more is split into partitions of about this many.
PARTITION_IDS = 16_000_000

# Repeated hashes checked as text (exact examples, and 64-bit collisions ruled out). Beyond
# these the count comes from the hashes alone. Among n distinct ids, the expected number of
# pairs that share a 64-bit hash is n(n-1)/2 / 2**64, about n**2 / 3.7e19: 3e-4 at 10**8
# ids, 0.03 at 10**9. So a count taken from unverified hashes is one too many with odd
# under 3% even at 10**9 ids, and only for a table that has more than VERIFIED_HASHES
# duplicated ids already and is refused whatever that count.
VERIFIED_HASHES = 10_000


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a uint64 -> a random-looking uint64."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _hash_slice(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The hashes of the ids whose bytes are data[offsets[i]:offsets[i + 1]]."""
    data = data[offsets[0]: offsets[-1]].astype(np.uint64)
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    position = np.arange(len(data), dtype=np.uint64) - np.repeat(starts, lengths).astype(np.uint64)
    with np.errstate(over="ignore"):
        terms = np.append(_mix(position * np.uint64(256) + data + np.uint64(1)), np.uint64(0))
        del position, data
        sums = np.add.reduceat(terms, starts) if len(terms) > 1 else np.zeros(len(lengths), np.uint64)
        sums[lengths == 0] = 0
        return _mix(sums + lengths.astype(np.uint64))


def id_hashes(ids) -> np.ndarray:
    """A 64-bit hash of each id of a pyarrow string array (the same id, the same hash, in
    any file): the sum over its bytes of a random function of (position, byte), mixed."""
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        return np.concatenate([np.zeros(0, np.uint64), *(id_hashes(chunk) for chunk in ids.chunks)])
    array = ids.cast(pa.large_binary())
    hashes = np.zeros(len(array), np.uint64)
    if not len(array):
        return hashes
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], np.int64)[array.offset: array.offset + len(array) + 1]
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    start = 0
    while start < len(array):
        # The ids that fit in HASH_BYTES from `start` (one, if it alone is longer).
        fits = int(np.searchsorted(offsets, offsets[start] + HASH_BYTES, side="right")) - 1
        stop = min(max(fits, start + 1), start + HASH_IDS, len(array))
        hashes[start:stop] = _hash_slice(offsets[start: stop + 1], data)
        start = stop
    return hashes


def _repeated(hashes: np.ndarray) -> np.ndarray:
    """The values that occur more than once in sorted hashes, each once, in order."""
    equal = hashes[1:] == hashes[:-1]
    first = equal.copy()
    first[1:] &= ~equal[:-1]  # the first pair of each run of equal hashes
    return hashes[1:][first]


def _spilled_repeats(id_arrays: Callable[[], Iterable], total: int) -> tuple[int, np.ndarray]:
    """How many hashes occur more than once, and up to VERIFIED_HASHES of them (sorted)."""
    parts = max(1, -(-total // PARTITION_IDS))
    repeated, kept = 0, [np.zeros(0, np.uint64)]
    with tempfile.TemporaryDirectory(prefix="synth-ids-") as folder:
        paths = [os.path.join(folder, f"{part}.u64") for part in range(parts)]
        files = [open(path, "wb") for path in paths]
        try:
            for ids in id_arrays():
                hashes = id_hashes(ids)
                if parts == 1:
                    hashes.tofile(files[0])
                    continue
                which = (hashes >> np.uint64(40)) % np.uint64(parts)
                for part in range(parts):
                    hashes[which == part].tofile(files[part])
        finally:
            for file in files:
                file.close()
        room = VERIFIED_HASHES
        for path in paths:
            hashes = np.fromfile(path, np.uint64)
            hashes.sort()
            twice = _repeated(hashes)
            del hashes
            repeated += len(twice)
            kept.append(twice[:room])
            room -= len(kept[-1])
    return repeated, np.sort(np.concatenate(kept))


def duplicated_ids(id_arrays: Callable[[], Iterable], total: int, examples: int = 3) -> tuple[int, list[str]]:
    """How many ids occur more than once, and a few of them. id_arrays: a function that
    gives the ids again (pyarrow string arrays, nulls dropped, about `total` in all) each
    time it is called; the second call happens only when two hashes are equal."""
    import pyarrow as pa
    import pyarrow.compute as pc

    repeated, wanted = _spilled_repeats(id_arrays, total)
    if not len(wanted):  # none repeated (or VERIFIED_HASHES 0: the count from the hashes)
        return repeated, []
    # Each id whose hash is verified, counted by value: Arrow counts a batch's matches
    # (value_counts keeps the order values first appear in), so a constant id column
    # costs one entry, not one Python string per row.
    counts: dict[str, int] = {}
    for ids in id_arrays():
        for chunk in ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]:
            hashes = id_hashes(chunk)
            at = np.searchsorted(wanted, hashes).clip(max=len(wanted) - 1)
            hits = wanted[at] == hashes
            if not hits.any():
                continue
            found = pc.value_counts(chunk.filter(pa.array(hits)))
            for value, count in zip(found.field("values").to_pylist(), found.field("counts").to_pylist()):
                counts[value] = counts.get(value, 0) + count
    duplicated = [value for value, count in counts.items() if count > 1]
    # A verified hash none of whose ids occurs twice was two distinct ids colliding; the
    # hashes beyond the verified ones count one id each (see VERIFIED_HASHES).
    return len(duplicated) + repeated - len(wanted), duplicated[:examples]
