"""Read an output's job.json and metadata into a bounded summary for the report.

The metadata is read one Parquet file at a time, only the columns the report needs, and
folded into counts and totals: memory and the page do not grow with the row count, beyond
one file's columns, the distinct error messages (each with at most MAX_IDS ids) and one
point per commit (chunk) time.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline import storage
from pipeline.io.commit_log import CommitLog
from pipeline.keys import EXTENSIONS, image_key
from pipeline.spec import SpecError

MAX_IDS = 10  # ids listed per error message (the smallest, so the list is deterministic)

# The parts of a row's time, in pipeline order. denoise is what the stages spent beyond
# text encoding and the VAE; the stages' seconds sum to generation_seconds.
PARTS = ("prepare", "queue", "text encode", "denoise", "vae", "encode", "write")

_COLUMNS = ("id", "status", "error", "prompt", "format", "stage_chain", "models", "committed_at", "stages",
            "prepare_seconds", "queue_seconds", "generation_seconds", "encode_seconds", "write_seconds", "image_uri")


@dataclass
class Sample:
    id: str
    prompt: str
    key: str  # the image's path under the output root, e.g. images/ab/ab12....png, or shards/x.tar#ab12....png


@dataclass
class ChainSummary:
    chain: str  # e.g. txt2img>upscale
    models: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    samples: list[Sample] = field(default_factory=list)  # sorted by id


@dataclass
class ErrorGroup:
    message: str
    count: int
    ids: list[str]  # the MAX_IDS smallest ids of the rows with this message


@dataclass
class CommitPoint:
    seconds: float  # since the first commit
    ok: int  # images committed so far
    failed: int  # failed rows committed so far


@dataclass
class OutputSummary:
    path: str
    job: dict[str, Any] | None  # job.json as written, None for an output without one
    metadata_files: int
    chains: list[ChainSummary]  # by row count, largest first
    errors: list[ErrorGroup]  # by count, largest first
    first_commit: float | None  # Unix seconds
    last_commit: float | None
    commits: list[CommitPoint]
    time_totals: dict[str, float]  # part (PARTS) -> seconds summed over the ok rows
    runs: list = field(default_factory=list)  # runs.RunRecord, oldest first
    runs_total: int = 0

    @property
    def name(self) -> str | None:
        name = (self.job or {}).get("name")
        return name if isinstance(name, str) else None

    @property
    def ok(self) -> int:
        return sum(chain.ok for chain in self.chains)

    @property
    def failed(self) -> int:
        return sum(chain.failed for chain in self.chains)

    @property
    def rows(self) -> int:
        return self.ok + self.failed


def read_job(log: CommitLog) -> dict[str, Any] | None:
    """job.json as a plain dict (not validated: an older output's spec may not parse now)."""
    try:
        data = log.job()
    except ValueError as error:
        raise SpecError(f"{log.path}/job.json is not valid JSON: {error}") from None
    return data if isinstance(data, dict) else None


def job_output_options(job: dict[str, Any] | None) -> dict[str, Any]:
    """The output's storage options from a job.json: the top-level ones with output's merged
    over them, as JobSpec.output_storage_options() does for a parsed spec."""
    job = job or {}
    top = job.get("storage_options") if isinstance(job.get("storage_options"), dict) else {}
    output = job.get("output") if isinstance(job.get("output"), dict) else {}
    own = output.get("storage_options") if isinstance(output.get("storage_options"), dict) else {}
    return storage.merge_options(top, own)


def _values(table, name: str, default: Any = None) -> list:
    """A column as a Python list; a column an older part lacks reads as the default."""
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [default] * table.num_rows


def _sum(column) -> float:
    import pyarrow.compute as pc

    return float(pc.sum(column).as_py() or 0.0)


class _Fold:
    """Folds metadata tables, one file at a time, into the summary's counts and samples."""

    def __init__(self, samples: int):
        self.samples = samples
        self.chains: dict[str, ChainSummary] = {}
        self.heaps: dict[str, list] = {}  # chain -> max-heap (negated ranks) of the sampled rows
        self.errors: dict[str, list] = {}  # message -> [count, smallest ids]
        self.commits: Counter = Counter()  # (committed_at, ok) -> rows: one time per chunk
        self.totals = dict.fromkeys(PARTS, 0.0)

    def add(self, table) -> None:
        ids = [str(value) for value in _values(table, "id")]
        ok = [value == "ok" for value in _values(table, "status")]
        chains = [value or "(unknown)" for value in _values(table, "stage_chain")]
        self._count(table, chains, ok)
        if self.samples:
            self._sample(table, ids, chains, ok)
        self._group_errors(table, ids, ok)
        for when, good in zip(_values(table, "committed_at"), ok):
            if when is not None:
                self.commits[(when, good)] += 1
        self._add_times(table)

    def _count(self, table, chains: list[str], ok: list[bool]) -> None:
        """Rows per stage chain and status, and the chain's models (one row per chain and
        file is enough: a resume refuses a changed model)."""
        first_row: dict[str, int] = {}
        for row, (name, good) in enumerate(zip(chains, ok)):
            summary = self.chains.setdefault(name, ChainSummary(name))
            first_row.setdefault(name, row)
            if good:
                summary.ok += 1
            else:
                summary.failed += 1
        if "models" in table.column_names:
            models = table.column("models")
            for name, row in first_row.items():
                for model in models[row].as_py() or []:
                    if model not in self.chains[name].models:
                        self.chains[name].models.append(model)

    def _sample(self, table, ids: list[str], chains: list[str], ok: list[bool]) -> None:
        """Per chain, keep the ok rows whose image keys (a hash of the id) come first: a
        sample that is deterministic, spread over the whole output, and bounded."""
        prompts = _values(table, "prompt", "")
        formats = _values(table, "format", "png")
        uris = _values(table, "image_uri", None)
        for row in (row for row in range(len(ids)) if ok[row]):
            rank = int(hashlib.sha256(ids[row].encode()).hexdigest()[:16], 16)
            heap = self.heaps.setdefault(chains[row], [])
            if len(heap) == self.samples and -heap[0][0] <= rank:
                continue
            if any(item[1] == ids[row] for item in heap):  # a copy of an identical row
                continue
            key = image_key(ids[row], formats[row] if formats[row] in EXTENSIONS else "png")
            if uris[row] and "#" in uris[row]:  # in a shard's tar or Parquet file (io/layouts.py)
                file, member = uris[row].rsplit("#", 1)
                key = "/".join(file.split("/")[-2:]) + "#" + member
            item = (-rank, ids[row], prompts[row] or "", key)
            if len(heap) < self.samples:
                heapq.heappush(heap, item)
            else:
                heapq.heapreplace(heap, item)

    def _group_errors(self, table, ids: list[str], ok: list[bool]) -> None:
        """Failed rows by their exact message, with the smallest MAX_IDS ids of each."""
        errors = _values(table, "error")
        for row in (row for row in range(len(ids)) if not ok[row]):
            group = self.errors.setdefault(errors[row] or "(no error message)", [0, []])
            group[0] += 1
            if len(group[1]) < MAX_IDS or ids[row] < group[1][-1]:
                group[1] = sorted({*group[1], ids[row]})[:MAX_IDS]

    def _add_times(self, table) -> None:
        """Seconds per part (PARTS), summed over the ok rows."""
        import pyarrow.compute as pc

        if "status" not in table.column_names:
            return
        good = table.filter(pc.equal(table.column("status"), "ok"))
        if not good.num_rows:
            return

        def total(name: str) -> float:
            return _sum(good.column(name)) if name in good.column_names else 0.0

        text_encode = vae = 0.0
        if "stages" in good.column_names:
            stages = pc.list_flatten(good.column("stages"))
            names = {stages.type.field(i).name for i in range(stages.type.num_fields)}
            if "text_encode_seconds" in names:
                text_encode = _sum(pc.struct_field(stages, "text_encode_seconds"))
            if "vae_seconds" in names:
                vae = _sum(pc.struct_field(stages, "vae_seconds"))
        self.totals["prepare"] += total("prepare_seconds")
        self.totals["queue"] += total("queue_seconds")
        self.totals["text encode"] += text_encode
        self.totals["denoise"] += max(0.0, total("generation_seconds") - text_encode - vae)
        self.totals["vae"] += vae
        self.totals["encode"] += total("encode_seconds")
        self.totals["write"] += total("write_seconds")

    def commit_points(self, limit: int) -> tuple[float | None, float | None, list[CommitPoint]]:
        times = sorted({when for when, _ in self.commits})
        if not times:
            return None, None, []
        first, points, ok, failed = times[0], [CommitPoint(0.0, 0, 0)], 0, 0
        for when in times:
            ok += self.commits.get((when, True), 0)
            failed += self.commits.get((when, False), 0)
            points.append(CommitPoint(when - first, ok, failed))
        if len(points) > limit:  # keep the plot bounded: evenly spaced points, the last one kept
            step = (len(points) - 1) / (limit - 1)
            points = [points[round(i * step)] for i in range(limit)]
        return first, times[-1], points

    def finish(self) -> tuple[list[ChainSummary], list[ErrorGroup]]:
        for name, heap in self.heaps.items():
            self.chains[name].samples = sorted(
                (Sample(id=row_id, prompt=prompt, key=key) for _, row_id, prompt, key in heap), key=lambda s: s.id
            )
        chains = sorted(self.chains.values(), key=lambda chain: (-(chain.ok + chain.failed), chain.chain))
        errors = sorted(
            (ErrorGroup(message, count, ids) for message, (count, ids) in self.errors.items()),
            key=lambda group: (-group.count, group.message),
        )
        return chains, errors


def read_table(fs, path: str):
    """The report's columns of one metadata part (those it has: older parts lack some)."""
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            present = set(parquet.schema_arrow.names)
            return parquet.read(columns=[name for name in _COLUMNS if name in present])
    except ValueError as error:  # not Parquet, cut short: pyarrow's ArrowInvalid is a ValueError
        raise SpecError(f"{path} is not a metadata file synth wrote ({str(error).splitlines()[0][:200]}); "
                        "move it out of metadata/") from None


def summarise(output_path: str, storage_options: dict[str, Any] | None = None, samples: int = 48,
              max_points: int = 400) -> OutputSummary:
    """Read an output folder (local or s3://) into an OutputSummary. Raises SpecError when
    the path holds no synth output (neither job.json nor metadata)."""
    from pipeline.report.runs import read_runs

    log = CommitLog(output_path, storage_options)
    fs, _ = storage.filesystem(output_path, storage_options)
    job = read_job(log)
    files = log.metadata_files()
    if job is None and not files:
        raise SpecError(f"{output_path} holds no synth output: no job.json and no metadata/*.parquet")
    fold = _Fold(samples)
    for path in files:
        table = read_table(fs, path)
        if "id" in table.column_names:
            fold.add(table)
    chains, errors = fold.finish()
    first, last, points = fold.commit_points(max_points)
    runs, runs_total = read_runs(log)
    return OutputSummary(
        path=output_path, job=job, metadata_files=len(files), chains=chains, errors=errors, first_commit=first,
        last_commit=last, commits=points, time_totals=fold.totals, runs=runs, runs_total=runs_total,
    )
