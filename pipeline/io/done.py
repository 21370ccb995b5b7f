"""Whether an output's committed rows already cover every row of its input, so that a rerun
with nothing left to do ends in the driver without starting Ray or any actor."""

from __future__ import annotations

import logging

from pipeline import batch as B
from pipeline.io.prepare import RowSource, canonical_batch
from pipeline.io.reader import input_files, read_if_small
from pipeline.keys import id_text
from pipeline.spec import JobSpec

logger = logging.getLogger("synth.done")

# Rows given to canonical_batch at a time. A slice whose rows are all committed comes out
# empty before any image is fetched; the first slice that is not makes the answer "no", after
# preparing at most this many rows (the run that follows prepares them again).
_SLICE = 256


def every_row_committed(spec: JobSpec, source: RowSource) -> bool:
    """True when each input row's id is among the committed ones (source.skip_ids).

    With input.id_column, the id column alone is read (a few MB for millions of rows).
    Without it, or when an id cell is empty (such a row's id is a hash of its content),
    the ids are the content ids that the prepare step computes, so the input is read here,
    and only when it is within the limits of the driver's own read (few files, at most
    reader.DRIVER_READ_MAX_BYTES); a larger one is left to the run, which starts Ray and skips
    every committed chunk. False answers cost a run nothing but this check."""
    committed = source.skip_ids
    if not committed:
        return False
    if spec.input.id_column:
        fs, files = input_files(spec.input.path, spec.input_storage_options(), spec.output.path)
        answer = _ids_committed(fs, files, spec.input.id_column, committed)
        if answer is not None:
            return answer
    table = read_if_small(spec, source.columns(), source.read_schema())
    if table is None:
        logger.debug("the input is too large to compare its content ids with the committed ones in the driver")
        return False
    for offset in range(0, table.num_rows, _SLICE):
        if len(canonical_batch(table.slice(offset, _SLICE), source.rules, committed)[B.ID]):
            return False
    return True


def _ids_committed(fs, files: list[str], column: str, committed: frozenset[str]) -> bool | None:
    """Whether every id in the id column is committed; None when a cell is empty or not
    text (that row's id is a content hash: the caller compares content ids instead)."""
    import pyarrow.parquet as pq

    for file in files:
        if fs.size(file) == 0:
            continue
        with fs.open(file, "rb") as handle:
            values = pq.read_table(handle, columns=[column]).column(0).to_pylist()
        for value in values:
            try:
                row_id = id_text(value)
            except UnicodeDecodeError:
                return None
            if row_id is None:
                return None
            if row_id not in committed:
                return False
    return True
