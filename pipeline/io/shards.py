"""Shards: the unit of work and of commit.

The input table's rows, numbered in file order (files sorted by name) then row order, are
cut into shards of `shard_rows` consecutive rows; only the last one is shorter. A shard is
read by one task, goes through every stage as one block (each stage's worker cuts its own
batches from it) and is committed by one metadata file. Its composition is a function of
the input files and the shard size alone, never of the cluster or of the order in which
tasks finish: that is what makes a rerun or a resume byte-identical while commits land in
whatever order shards finish (Ray Data's preserve_order stays off, so one slow shard holds
back no other's commit). The driver keeps only the files' row counts, never the rows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

DEFAULT_SHARD_ROWS = 1024
# A small table is cut into at least this many shards, so every actor of a pool gets work.
MIN_SHARDS = 16
# A shard is one Ray object between stages: its images stay within this many bytes.
SHARD_IMAGE_BYTES = 512 * 2**20
# Pixels of a stage whose size is left to the model or the input; upscalers multiply by 16.
_UNKNOWN_PIXELS = 1024 * 1024
_UPSCALE_FACTOR = 16


def chain_pixels(stages) -> list[int]:
    """The pixels of an image each stage makes, as far as the spec tells: its width x height;
    without them, an upscaler's output is 16x what the stage before it made, an img2img or
    inpaint stage keeps its input's size, and the first stage's images (or its input's)
    count as _UNKNOWN_PIXELS (the model or the table decides)."""
    pixels, previous = [], None
    for stage in stages:
        width, height = getattr(stage, "width", None), getattr(stage, "height", None)
        if stage.kind == "upscale":
            made = (previous or _UNKNOWN_PIXELS) * _UPSCALE_FACTOR
        elif width and height:
            made = width * height
        elif stage.kind != "txt2img" and previous:
            made = previous
        else:
            made = _UNKNOWN_PIXELS
        pixels.append(made)
        previous = made
    return pixels


def max_shard_rows(stages) -> int:
    """The most rows a shard of these stages may hold: its largest stage's images (RGB, a
    byte a channel) stay within SHARD_IMAGE_BYTES. Bounds output.shard_rows and the default."""
    return max(1, SHARD_IMAGE_BYTES // (3 * max(chain_pixels(stages))))


def shard_size(spec, total_rows: int) -> int:
    """The shard size a new output gets: output.shard_rows as given (the spec refuses one over
    max_shard_rows), or by default DEFAULT_SHARD_ROWS (fewer when the images are large),
    lowered for a small table to give MIN_SHARDS shards but never below the largest stage
    batch (rounded up to a multiple of it). A function of the spec and the row count only."""
    if spec.output.shard_rows:
        return spec.output.shard_rows
    step = max(stage.batch_size for stage in spec.stages)
    cap = min(DEFAULT_SHARD_ROWS, max_shard_rows(spec.stages))
    spread = -(-max(total_rows, 1) // MIN_SHARDS)
    return max(1, min(cap, -(-spread // step) * step))


@dataclass(frozen=True)
class ShardPlan:
    """The input's files with their row counts, and the shard size: enough to find any
    shard's rows (plain data, sent to the read tasks)."""

    files: tuple[str, ...]
    starts: tuple[int, ...]  # the table-wide number of each file's first row
    total_rows: int
    shard_rows: int
    # each file's version (S3's ETag, a local file's mtime; "" unknown): the read tasks
    # keep a file's row groups for the next shard only while its version is the same
    versions: tuple[str, ...] = ()

    @classmethod
    def of(cls, rows_per_file: dict[str, int], shard_rows: int,
           versions: dict[str, str] | None = None) -> "ShardPlan":
        files, starts, total = [], [], 0
        for file in sorted(rows_per_file):
            if rows_per_file[file]:
                files.append(file)
                starts.append(total)
                total += rows_per_file[file]
        versions = versions or {}
        return cls(tuple(files), tuple(starts), total, shard_rows, tuple(versions.get(file, "") for file in files))

    def file_versions(self) -> dict[str, str]:
        return {file: version for file, version in zip(self.files, self.versions) if version}

    @property
    def count(self) -> int:
        return -(-self.total_rows // self.shard_rows)

    def pieces(self, shard: int) -> list[tuple[str, int, int]]:
        """(file, start, stop) row ranges that make up the shard, in order."""
        first, end = shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.total_rows)
        if not 0 <= first < end:
            raise IndexError(f"shard {shard} is not among the {self.count} shards of the input")
        pieces = []
        index = bisect.bisect_right(self.starts, first) - 1
        while first < end:
            start = self.starts[index]
            stop = self.starts[index + 1] if index + 1 < len(self.starts) else self.total_rows
            piece_end = min(end, stop)
            pieces.append((self.files[index], first - start, piece_end - start))
            first, index = piece_end, index + 1
        return pieces
