"""Find ids that appear more than once in an input's id column, in bounded memory.

The ids of a large table (10^8 and more) do not fit in a Python set or Counter. Each id is
hashed to 64 bits over Arrow's buffers with numpy (no Python object per id); the hashes
are spilled to local files in partitions by their top bits, and each partition is sorted
on its own, so the driver holds about PARTITION_IDS hashes (8 bytes each) at a time. Only
ids whose hash occurs twice are compared as text, in a second pass over those alone.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from typing import Callable, Iterable

import numpy as np

# Hashes sorted at once; a table with more is split into partitions of about this many.
PARTITION_IDS = 16_000_000


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a uint64 -> a random-looking uint64."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def id_hashes(ids) -> np.ndarray:
    """A 64-bit hash of each id of a pyarrow string array (the same id, the same hash, in
    any file): the sum over its bytes of a random function of (position, byte), mixed."""
    import pyarrow as pa

    array = ids.cast(pa.large_binary())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], pa.large_binary())
    if not len(array):
        return np.zeros(0, np.uint64)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], np.int64)[array.offset: array.offset + len(array) + 1]
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]: offsets[-1]].astype(np.uint64)
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    position = np.arange(len(data), dtype=np.uint64) - np.repeat(starts, lengths).astype(np.uint64)
    with np.errstate(over="ignore"):
        terms = np.append(_mix(position * np.uint64(256) + data + np.uint64(1)), np.uint64(0))
        sums = np.add.reduceat(terms, starts) if len(data) else np.zeros(len(array), np.uint64)
        sums[lengths == 0] = 0
        return _mix(sums + lengths.astype(np.uint64))


def duplicated_ids(id_arrays: Callable[[], Iterable], total: int, examples: int = 3) -> tuple[int, list[str]]:
    """How many ids occur more than once, and a few of them. id_arrays: a function that
    gives the ids again (pyarrow string arrays, nulls dropped, `total` in all) each time
    it is called; the second call happens only when two hashes are equal."""
    import pyarrow as pa

    parts = max(1, -(-total // PARTITION_IDS))
    twice: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="synth-ids-") as folder:
        paths = [os.path.join(folder, f"{part}.u64") for part in range(parts)]
        files = [open(path, "wb") for path in paths]
        try:
            for ids in id_arrays():
                hashes = id_hashes(ids)
                which = (hashes >> np.uint64(40)) % np.uint64(parts)
                for part in range(parts):
                    hashes[which == part].tofile(files[part])
        finally:
            for file in files:
                file.close()
        for path in paths:
            hashes = np.sort(np.fromfile(path, np.uint64))
            twice.update(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not twice:
        return 0, []
    wanted = np.array(sorted(twice), np.uint64)
    counts: Counter = Counter()
    for ids in id_arrays():
        ids = ids if isinstance(ids, pa.ChunkedArray) else pa.chunked_array([ids])
        counts.update(ids.filter(pa.array(np.isin(id_hashes(ids), wanted))).to_pylist())
    repeated = [value for value, count in counts.items() if count > 1]
    return len(repeated), repeated[:examples]
