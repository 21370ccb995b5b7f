"""The output's commit log: which job an output belongs to, which rows it has committed, and
a record of every run that wrote to it. One class owns all of it.

Under the output prefix:
- `job.json`: the resolved spec of the job the output belongs to; a run of a different job
  (an image-defining field changed) is refused. The first run creates it exclusively, so
  of two runs of different jobs started together into a new output, one is refused.
  `row_ids.json`: how rows without an id column got their ids (keys.ROW_ID_SCHEME).
  `shards.json`: the shard size the first run chose (pipeline/io/shards.py); resumes use it.
- `models.json`: the revision of each stage's model that the first run resolved; a resume
  whose model resolves to another one is refused, or with allow_change recorded there.
- `lease/`: the lease of the run writing now (pipeline/io/lease.py): one writer at a time.
- `metadata/shard-*.parquet` (`part-*.parquet` before shards): the commit log itself. A
  shard's rows are committed when its metadata file appears, written atomically after every
  image of the shard, so metadata never points at an image that is not written; its name
  carries the shard's number and row counts, so a listing says what is committed (see
  CommittedShards). A rerun of a shard overwrites the same files. A sharded layout's
  tar or Parquet file that no metadata file names (a killed writer's) is removed by a
  later run under the lease (sweep_orphan_shards).
- `shards.json`: the shard size the first run chose and a fingerprint of its input.
- `runs/<start>-<run id>.json`: one record per run, written when it starts ("running") and
  again when it ends; a run killed outright stays "running".
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline import storage
from pipeline.io.lease import Lease, create_exclusive
from pipeline.keys import ROW_ID_SCHEME, batch_name
from pipeline.spec import JobSpec, SpecError, resolved_dict

logger = logging.getLogger("synth.commit")

# Fields that decide what a row's image is. Resources, timeouts and storage options may
# change between a run and its resume; these may not, or one output would mix two jobs.
_OUTPUT_DEFINING = ("seed", "input.path", "input.id_column", "input.columns", "input.overrides", "output.format",
                    "output.quality", "output.png_compress_level", "output.layout")
# Stage fields that do not: resources, and `revision`, since which weights made the rows is
# pinned by the revision they resolve to (models.json), so naming the pinned commit is no change.
_STAGE_NOT_DEFINING = ("replicas", "gpus", "cpus", "revision")
_ABSENT = object()


def _defining(data: dict) -> dict:
    """The output-defining fields of a resolved spec, by dotted path; a field the data
    does not hold at all is left out."""
    picked = {}
    for dotted in _OUTPUT_DEFINING:
        node = data
        for part in dotted.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is not _ABSENT:
            picked[dotted] = node
    for index, stage in enumerate(data.get("stages", [])):
        for key, value in stage.items():
            if key not in _STAGE_NOT_DEFINING:
                picked[f"stages.{index}.{key}"] = value
    return picked


def _output_io(method):
    """A storage failure in the driver's work on the output (listing, reading, removing a
    chunk, taking the lease) ends the job with exit 2 and one line, like the writers'."""

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as error:
            raise storage.OutputWriteError.of(self.path, error, "use") from None

    return guarded


def _utc(timestamp: float) -> str:
    """ISO 8601 in UTC, to the millisecond: run records named by it sort in start order."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _synth_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synth")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


# metadata/shard-<number>-<hash of its row ids>-r<rows>-f<failed rows>.parquet
_SHARD_FILE = re.compile(r"^shard-(\d{9,})-([0-9a-f]{20})-r(\d+)-f(\d+)\.parquet$")


def _modified(info: dict[str, Any]) -> float | None:
    """A listed file's last write, as Unix time: local files give mtime, S3 LastModified;
    None where the file system gives neither (the file is then never judged old)."""
    if isinstance(info.get("mtime"), (int, float)):
        return float(info["mtime"])
    modified = info.get("LastModified") or info.get("last_modified")
    return modified.timestamp() if isinstance(modified, datetime) else None


def orphan_quiet_s(lease_timeout_s: float) -> float:
    """How old an uncommitted shard file must be before a run removes it."""
    return max(3600.0, 4 * lease_timeout_s)


@dataclass
class CommittedShards:
    """What a listing of metadata/ says is committed: rows per shard number, no row ids."""

    rows: dict[int, int] = field(default_factory=dict)  # shard -> its committed rows
    failed: int = 0  # committed rows whose status is not ok
    retried: int = 0  # rows uncommitted to run again (retry_failed)
    legacy: int = 0  # metadata files not named after a shard (written before shards)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def shard_stem(shard: int, ids: list[str]) -> str:
    """The name of what a shard's rows commit: its number and a hash of the row ids (a
    rerun of the same rows writes the same names)."""
    return f"shard-{shard:09d}-{batch_name(ids).removeprefix('part-')}"


def _input_fingerprint(rows: dict[str, int], sizes: dict[str, int], versions: dict[str, str]) -> str:
    # The version (ETag, mtime) too: a file rewritten with its rows in another order can keep
    # its size, and shard numbers would then name other rows.
    text = "\n".join(f"{file}\t{rows[file]}\t{sizes.get(file)}\t{versions.get(file)}" for file in sorted(rows))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class RunRecord:
    """One run of a job into an output, as `runs/<start>-<run id>.json` holds it."""

    run_id: str
    started_at: str  # UTC, ISO 8601 to the millisecond
    spec_sha256: str  # of the resolved spec: runs of one job share it
    retry_failed: bool
    synth_version: str
    host: str
    # then "succeeded" (exit 0), "failed_rows" (exit 1), "error" (exit 2) or "stopped" (130: a signal)
    status: str = "running"
    exit_code: int | None = None
    message: str | None = None  # the error, in one line
    ended_at: str | None = None
    wall_seconds: float | None = None
    first_image_seconds: float | None = None
    rows: dict[str, int] = field(default_factory=dict)  # ok, failed, skipped, skipped_failed
    images_per_second: float | None = None
    ray_job_id: str | None = None  # None when the run ended without starting Ray (nothing left to do)
    models: list[dict[str, Any]] = field(default_factory=list)  # per stage: model, revision
    model_changes: list[dict[str, Any]] = field(default_factory=list)  # revisions changed since the pin

    def finish(self, exit_code: int, wall_seconds: float, summary=None, message: str | None = None,
               ray_job_id: str | None = None) -> None:
        """The run's end: its exit code (status follows), and what it did (a RunSummary)."""
        self.ended_at = _utc(time.time())
        self.wall_seconds = round(wall_seconds, 3)
        self.exit_code = exit_code
        self.status = {0: "succeeded", 1: "failed_rows", 130: "stopped"}.get(exit_code, "error")
        self.message = message
        self.ray_job_id = ray_job_id
        if summary is not None:
            self.first_image_seconds = summary.first_batch_seconds
            self.rows = {"ok": summary.rows_ok, "failed": summary.rows_failed, "skipped": summary.rows_skipped,
                         "skipped_failed": summary.skipped_failed}
            self.images_per_second = round(summary.images_per_second, 4)

    def file_name(self) -> str:
        return f"{self.started_at.replace('-', '').replace(':', '')}-{self.run_id}.json"


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


class CommitLog:
    """The commit log of one output (a local folder or an s3:// prefix). Plain data: the
    writer tasks carry it to commit their chunks."""

    def __init__(self, path: str, storage_options: dict[str, Any] | None = None):
        self.path = path
        self.storage_options = storage_options or {}

    @classmethod
    def of(cls, spec: JobSpec) -> "CommitLog":
        return cls(spec.output.path, spec.output_storage_options())

    def _fs(self):
        return storage.filesystem(self.path, self.storage_options)

    def _read_json(self, name: str) -> Any | None:
        fs, root = self._fs()
        try:  # not exists() then read: s3fs may answer exists() from a cached listing
            return json.loads(fs.cat_file(storage.join(root, name)))
        except FileNotFoundError:
            return None

    @staticmethod
    def _is_part(path: str, suffix: str) -> bool:
        """A file of the log, not a temporary one an interrupted atomic write left (dot-
        and underscore-files are not parts, as for pyarrow's dataset reader)."""
        return path.endswith(suffix) and not os.path.basename(path).startswith((".", "_"))

    def _write(self, name: str, data: bytes) -> None:
        """Write one file of the log atomically; a storage failure ends the job (exit 2)."""
        try:
            fs, root = self._fs()
            storage.write_bytes_atomic(fs, storage.join(root, name), data)
        except Exception as error:  # storage I/O only: a full disk, permissions, a missing bucket
            raise storage.OutputWriteError.of(self.path, error) from None

    def _write_json(self, name: str, data: Any) -> None:
        self._write(name, json.dumps(data, indent=2).encode())

    # ------------------------------------------------------------ the job

    def job(self) -> dict[str, Any] | None:
        """job.json as written (not validated: an older output's spec may not parse now),
        None where there is none. Raises ValueError when it is not JSON."""
        return self._read_json("job.json")

    @_output_io
    def claim(self, spec: JobSpec) -> None:
        """Make the output this job's before anything else is written to it: create job.json
        exclusively when there is none (a local hard link, a conditional PUT on S3), else
        check that it is this job's. Of two runs of different jobs that start together on
        a new output, exactly one creates it and the other is refused."""
        fs, root = self._fs()
        data = json.dumps(resolved_dict(spec), indent=2).encode()
        if self._read_json("job.json") is None and create_exclusive(fs, storage.join(root, "job.json"), data) != "exists":
            return
        self.check_same_job(spec)

    def lease(self, run_id: str, spec: JobSpec, wait_s: float = 0.0) -> Lease:
        """The output's lease for this run (`with log.lease(...)`: taken, renewed, released)."""
        fs, root = self._fs()
        return Lease(fs, root, self.path, run_id, spec.output.lease_renew_s, spec.output.lease_timeout_s, wait_s)

    @_output_io
    def check_same_job(self, spec: JobSpec) -> None:
        """Refuse to resume into an output that a different spec wrote (its job.json), or
        whose rows' ids an older synth computed."""
        written = self._read_json("job.json")
        if written is None:
            return
        try:  # with the defaults of fields added since it was written
            written = resolved_dict(JobSpec.model_validate(written))
            compared = None
        except Exception:  # it holds a field since removed: compare the fields it holds
            compared = set(_defining(written))
        self._check_row_id_scheme(spec)
        before = _defining(written)
        now = _defining(resolved_dict(spec))
        keys = set(before) | set(now) if compared is None else compared
        changed = [key for key in sorted(keys) if before.get(key) != now.get(key)]
        if changed:
            detail = "; ".join(f"{key} was {before.get(key)!r}, is now {now.get(key)!r}" for key in changed[:3])
            raise SpecError(
                f"output.path: {spec.output.path} holds the results of a different job ({detail}). "
                f"Use a new output path, or delete {spec.output.path}/job.json to mix them on purpose"
            )

    def _check_row_id_scheme(self, spec: JobSpec) -> None:
        """Without an id column, a row's id is a hash of its values (keys.ROW_ID_SCHEME): an
        output whose committed rows were hashed another way cannot be resumed."""
        if spec.input.id_column or not self.metadata_files():
            return
        written = self._read_json("row_ids.json")
        scheme = written["scheme"] if written else 1
        if scheme != ROW_ID_SCHEME:
            raise SpecError(
                f"output.path: {spec.output.path} holds rows whose ids an older synth computed (row id scheme "
                f"{scheme}, now {ROW_ID_SCHEME}): a resume would match none of them and generate every row again. "
                "Run into a new output path"
            )

    @_output_io
    def record_job(self, spec: JobSpec, revisions: list[str | None] | None = None,
                   changes: list[dict[str, Any]] = (), run_id: str | None = None,
                   adapters: list[str | None] = ()) -> None:
        """Write job.json and row_ids.json: the output belongs to this job from now on. With
        revisions (each stage's, as the driver resolved them), pin them in models.json; the
        changes check_models allowed go into its history."""
        self._write_json("job.json", resolved_dict(spec))
        self._write_json("row_ids.json", {"scheme": ROW_ID_SCHEME, "about": "how rows without input.id_column got their ids"})
        if revisions is None:
            return
        now = _utc(time.time())
        before = self._read_json("models.json") or {}
        pinned = {entry["stage"]: entry for entry in before.get("stages", [])}
        stages = []
        adapters = list(adapters) or [None] * len(spec.stages)
        for index, (stage, revision, adapter) in enumerate(zip(spec.stages, revisions, adapters)):
            entry = pinned.get(index)
            if entry is None or (entry["model"], entry["revision"], entry.get("adapters")) != (
                    stage.model, revision, adapter):
                entry = {"stage": index, "model": stage.model, "revision": revision, "pinned_at": now, "run_id": run_id}
                if adapter:
                    entry["adapters"] = adapter
            stages.append(entry)
        history = before.get("history", []) + [{**change, "at": now, "run_id": run_id} for change in changes]
        self._write_json("models.json", {
            "about": "each stage's model revision, pinned by the first run; a run whose model resolves to another "
                     "revision is refused unless run with --allow-model-change, and its change is listed in history",
            "stages": stages,
            "history": history,
        })

    @_output_io
    def check_models(self, spec: JobSpec, revisions: list[str | None], allow_change: bool = False,
                     adapters: list[str | None] = ()) -> list[dict]:
        """Compare each stage's model revision, as the driver resolved it now, with the one
        pinned in models.json. When rows are committed, a change would mix two models'
        images in one output: refused (SpecError naming the stage and both revisions),
        unless allow_change. Returns the changes to record (also those before any row was
        committed, which mix nothing)."""
        pinned = {entry["stage"]: entry for entry in (self._read_json("models.json") or {}).get("stages", [])}
        committed = bool(self.metadata_files())
        changes = []
        for index, adapter in enumerate(adapters):
            entry = pinned.get(index)
            if entry is None or None in (entry.get("adapters"), adapter) or entry["adapters"] == adapter:
                continue
            if committed and not allow_change:
                raise SpecError(
                    f"stages.{index}.loras: the files of this stage's LoRA adapters or ControlNet changed (now "
                    f"{adapter}, {entry['adapters']} when run {entry['run_id']} committed rows in {self.path}): a "
                    "resume would mix images made with both. Use a new output.path, restore the files, or run "
                    "with --allow-model-change"
                )
            changes.append({"stage": index, "model": "its LoRA adapters and ControlNet", "from": entry["adapters"],
                            "to": adapter, "reason": "--allow-model-change" if committed else "no row was committed yet"})
            logger.warning("stages.%d: its adapter files now fingerprint %s (was %s)", index, adapter,
                           entry["adapters"])
        for index, (stage, revision) in enumerate(zip(spec.stages, revisions)):
            entry = pinned.get(index)
            if entry is None or None in (entry["revision"], revision) or entry["revision"] == revision:
                continue
            if entry["model"] == stage.model and committed and not allow_change:
                raise SpecError(
                    f"stages.{index}.model: {stage.model} now resolves to revision {revision}, but the rows "
                    f"committed in {self.path} were made with revision {entry['revision']} (pinned by run "
                    f"{entry['run_id']} at {entry['pinned_at']}): a resume would mix two models' images in one "
                    "output. Use a new output.path, restore the model, or run with --allow-model-change to go on "
                    "with the new revision (recorded in models.json and the run record)"
                )
            reason = ("--allow-model-change" if committed and entry["model"] == stage.model
                      else "no row was committed yet" if not committed else "another model (job.json was removed)")
            changes.append({"stage": index, "model": stage.model, "from": entry["revision"], "to": revision,
                            "reason": reason})
            logger.warning("stages.%d.model: %s now resolves to revision %s (was %s); %s", index, stage.model,
                           revision, entry["revision"], reason)
        return changes

    # ------------------------------------------------------------ shards

    @_output_io
    def shards(self, spec: JobSpec, rows: dict[str, int], sizes: dict[str, int],
               versions: dict[str, str] | None = None) -> tuple[int, bool]:
        """This output's shard size, and whether the input is the one its first run read.

        The size is the one the first run chose (shards.json), so a resume cuts the same
        shards; a new output's is chosen now (shards.shard_size, from the input's `rows`
        per file) and recorded with a fingerprint of the input's files, row counts and
        sizes. An output whose first run predates shards was committed in chunks of the
        largest batch size, which is its shard size. An output.shard_rows other than the one
        the first run was given is refused: it would cut other shards. When the input
        changed (a file added, removed or rewritten), a committed shard number no longer
        names the same rows, and the caller resumes by row ids instead, from then on: shards
        committed for the changed input are numbered by its plan, so the first input coming
        back would not make the numbers right again."""
        from pipeline.io.shards import shard_size

        fingerprint = _input_fingerprint(rows, sizes, versions or {})
        recorded = self._read_json("shards.json")
        if recorded is None:
            files = self.metadata_files()
            legacy = bool(files)
            shard_rows = max(stage.batch_size for stage in spec.stages) if legacy else shard_size(spec, sum(rows.values()))
            committed = [int(match[3]) for match in map(_SHARD_FILE.match, map(os.path.basename, files)) if match]
            if committed:
                # Shards were committed, and shards.json was lost (removed by hand): their size
                # is the spec's, or the largest a committed shard holds (every shard but the
                # last is whole). Whether the input is the same is unknown: resume by ids.
                shard_rows = spec.output.shard_rows or max(committed)
                logger.warning("%s has committed shards but no shards.json: taking shards of %d rows and resuming "
                               "by row ids", self.path, shard_rows)
            self._write_json("shards.json", {
                "about": "the shard size (rows committed together) of this output's first run, which every resume "
                         "uses, and a fingerprint of the input it read (files, row counts, sizes)",
                "shard_rows": shard_rows, "requested": spec.output.shard_rows,
                "input": None if legacy else fingerprint,
                # preflight found this input's ids unique (the check ran before this record)
                "unique_ids_checked": spec.input.id_column,
            })
            return shard_rows, not legacy
        if spec.output.shard_rows is not None and spec.output.shard_rows != recorded.get("requested"):
            raise SpecError(
                f"output.shard_rows: {spec.output.shard_rows} differs from the {recorded.get('requested')} that "
                f"the first run into {self.path} was given (it cut shards of {recorded['shard_rows']} rows): a "
                "resume must cut the same shards. Leave output.shard_rows as it was, or use a new output.path"
            )
        same = recorded.get("input") == fingerprint
        if not same:
            logger.info("the input changed since the first run into %s: resuming by row ids", self.path)
            if recorded.get("input") is not None:
                self._write_json("shards.json", {**recorded, "input": None, "input_changed": _utc(time.time())})
        return int(recorded["shard_rows"]), same

    def ids_checked(self, spec: JobSpec, rows: dict[str, int], sizes: dict[str, int],
                    versions: dict[str, str]) -> bool:
        """Whether an earlier run into this output found the ids of this very input unique
        (shards.json holds its fingerprint and id column, recorded after preflight's check;
        a changed input clears the fingerprint for good), so a resume need not read every
        id again: at 10^8 rows the check is most of a resume's start. False when unsure (no
        record, or the output cannot be read now: check_output will say why)."""
        try:
            recorded = self._read_json("shards.json")
        except Exception:
            return False
        return bool(recorded and spec.input.id_column and recorded.get("input") is not None
                    and recorded.get("unique_ids_checked") == spec.input.id_column
                    and recorded.get("input") == _input_fingerprint(rows, sizes, versions))

    @_output_io
    def committed_shards(self, retry_failed: bool = False) -> "CommittedShards":
        """The committed shards, from one listing of metadata/ (file names carry each
        shard's number and row counts; no file is read). With retry_failed, the shards
        that hold failed rows are uncommitted first (their files removed), to run again."""
        fs, root = self._fs()
        found = CommittedShards()
        for file in self.metadata_files():
            match = _SHARD_FILE.match(os.path.basename(file))
            if match is None:
                found.legacy += 1
                continue
            shard, rows, failed = int(match[1]), int(match[3]), int(match[4])
            if retry_failed and failed:
                fs.rm_file(file)
                found.retried += rows
                continue
            found.rows[shard] = found.rows.get(shard, 0) + rows
            found.failed += failed
        if found.rows:
            logger.info("resuming: %d rows of %d shards already committed in %s", found.total, len(found.rows),
                        self.path)
        return found

    @_output_io
    def sweep_orphan_shards(self, layout: str, lease_timeout_s: float) -> int:
        """Remove the shard files (tar or Parquet) that no committed metadata file names, that
        is those a killed writer wrote before its commit, and that were last written long
        ago (orphan_quiet_s); return how many. Call it only under the output's lease.

        A file is named by the metadata file of the same stem (shard number and row-id hash,
        as both are named by shard_stem), so two listings tell, and no file is read. The
        shard files are listed before the metadata: a file committed before the second
        listing is kept. Under the lease no writer of this run is running yet; a writer of an
        earlier run could still be: a driver that could not renew its lease stands down at
        its next shard, but its write tasks already under way go on, and one whose metadata
        write is retried after its shard file's would commit a removed file. So only files
        older than an hour (or four lease timeouts) go, an age no retried write reaches,
        measured on the store's clock (the lease file this run just wrote), not this
        machine's. Orphans cost only bytes; younger ones are left to a later run, and a
        rerun of the same shard writes the same name anyway."""
        from pipeline.io.layouts import FOLDERS, SUFFIXES
        from pipeline.io.lease import FOLDER as LEASE_FOLDER

        if layout not in FOLDERS:
            return 0
        fs, root = self._fs()
        fs.invalidate_cache(root)  # a listing cached before this run's lease would miss commits
        folder = storage.join(root, FOLDERS[layout])
        pattern = re.compile(rf"^(shard-\d{{9,}}-[0-9a-f]{{20}}){re.escape(SUFFIXES[layout])}$")
        if not fs.exists(folder):
            return 0
        shard_files = {}
        for path, info in fs.find(folder, detail=True).items():
            match = pattern.match(os.path.basename(path))
            if match:
                shard_files[path] = (match[1], _modified(info))
        committed = set()
        for file in self.metadata_files():
            match = _SHARD_FILE.match(os.path.basename(file))
            if match:
                committed.add(f"shard-{match[1]}-{match[2]}")
        lease_folder = storage.join(root, LEASE_FOLDER)
        stamps = [_modified(info) for info in fs.find(lease_folder, detail=True).values()] \
            if fs.exists(lease_folder) else []
        stamps = [stamp for stamp in stamps if stamp is not None]
        quiet_s = orphan_quiet_s(lease_timeout_s)
        now, removed, young = max(stamps) if stamps else time.time(), 0, 0
        for path, (stem, modified) in sorted(shard_files.items()):
            if stem in committed:
                continue
            if modified is None or now - modified <= quiet_s:
                young += 1
                continue
            fs.rm_file(path)
            removed += 1
        if removed:
            logger.info("removed %d shard files that no metadata commits (left by killed runs) in %s", removed,
                        self.path)
        if young:
            logger.info("left %d uncommitted shard files in %s written within the last %g s (a writer may still "
                        "commit them); a later run removes any that stay uncommitted", young, self.path, quiet_s)
        return removed

    # ------------------------------------------------------------ committed rows

    @_output_io
    def metadata_files(self) -> list[str]:
        """Every committed shard's metadata file, sorted."""
        fs, root = self._fs()
        folder = storage.join(root, "metadata")
        if not fs.exists(folder):
            return []
        return sorted(f for f in fs.find(folder) if self._is_part(f, ".parquet"))

    def commit(self, table, shard: int | None = None) -> None:
        """Commit a shard's rows: its metadata (a pyarrow table, images already written) in
        one file named after the shard, its row ids and its rows' counts, so a resume finds
        what is committed from a listing, and a rerun of the same rows overwrites it."""
        import io

        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        ids = table.column("id").to_pylist()
        if shard is None:
            self._write(f"metadata/{batch_name(ids)}.parquet", buffer.getvalue())
            return
        failed = table.num_rows - pc.sum(pc.equal(table.column("status"), "ok")).as_py() if table.num_rows else 0
        stem = shard_stem(shard, ids)
        file = f"metadata/{stem}-r{table.num_rows}-f{failed}.parquet"
        self._write(file, buffer.getvalue())
        try:  # an earlier attempt at the same rows that ended with other statuses (a retried task)
            fs, root = self._fs()
            for other in fs.glob(storage.join(root, f"metadata/{stem}-*.parquet")):
                if os.path.basename(other) != os.path.basename(file):
                    fs.rm_file(other)
        except Exception as error:
            raise storage.OutputWriteError.of(self.path, error) from None

    def read_part(self, fs, file: str, columns: list[str] | None = None):
        """One metadata file's columns; a file in metadata/ that synth did not write (not
        Parquet, cut short, other columns) ends the job naming it, rather than a traceback."""
        import pyarrow.parquet as pq

        try:
            with fs.open(file, "rb") as handle:
                return pq.read_table(handle, columns=columns)
        except (ValueError, KeyError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise SpecError(
                f"output.path: {file} is not a metadata file synth wrote ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}); move it out of metadata/ and run again"
            ) from None

    @_output_io
    def committed(self) -> dict[str, str]:
        """id -> status of every committed row ("ok" wins over a failed copy)."""
        fs, _ = self._fs()
        rows: dict[str, str] = {}
        for file in self.metadata_files():
            table = self.read_part(fs, file, ["id", "status"])
            for row_id, status in zip(table.column("id").to_pylist(), table.column("status").to_pylist()):
                if rows.get(row_id) != "ok":
                    rows[row_id] = status
        return rows

    @_output_io
    def uncommit(self, ids: set[str]) -> set[str]:
        """Remove every chunk (metadata file) that holds one of these rows, and return the
        ids of all rows removed.

        Used by --retry-failed before the rerun starts. Whole chunks, not single rows: a
        chunk reruns with its original batch mates (so its other rows get the same bytes
        again, under the same keys), and no short chunk ever shifts the batches of the
        chunks after it. If the run is killed in between, those rows are merely missing and
        the next run fills them.
        """
        fs, _ = self._fs()
        removed: set[str] = set()
        for file in self.metadata_files():
            chunk_ids = set(self.read_part(fs, file, ["id"]).column("id").to_pylist())
            if chunk_ids & ids:
                fs.rm_file(file)
                removed |= chunk_ids
        return removed

    def rows_to_skip(self, retry_failed: bool) -> dict[str, str]:
        """Id -> status of the rows a previous run committed. With retry_failed, the chunks
        that hold failed rows are first uncommitted (so no row can appear twice) and run
        again whole."""
        committed = self.committed()
        if retry_failed:
            failed = {row_id for row_id, status in committed.items() if status != "ok"}
            if failed:
                redo = self.uncommit(failed)
                logger.info("retrying %d failed rows (%d rows in their chunks)", len(failed), len(redo))
                # Read again, not filtered: an identical row (same content id) of a removed
                # chunk may still be committed in another chunk, which must then not run again.
                committed = self.committed()
        if committed:
            logger.info("resuming: %d rows already committed in %s", len(committed), self.path)
        return committed

    # ------------------------------------------------------------ runs

    def start_run(self, spec: JobSpec, retry_failed: bool, run_id: str | None = None,
                  revisions: list[str | None] = (), changes: list[dict[str, Any]] = ()) -> RunRecord:
        """Record a run as started (runs/<start>-<run id>.json, status "running"), with the
        revision of each stage's model and the changes from the pinned ones it was allowed."""
        canonical = json.dumps(resolved_dict(spec), sort_keys=True).encode()
        record = RunRecord(
            run_id=run_id or new_run_id(),
            started_at=_utc(time.time()),
            spec_sha256=hashlib.sha256(canonical).hexdigest(),
            retry_failed=retry_failed,
            synth_version=_synth_version(),
            host=socket.gethostname(),
            models=[{"stage": index, "model": stage.model, "revision": revision}
                    for index, (stage, revision) in enumerate(zip(spec.stages, revisions))],
            model_changes=list(changes),
        )
        self.write_run(record)
        return record

    def write_run(self, record: RunRecord) -> None:
        self._write_json(f"runs/{record.file_name()}", asdict(record))

    @_output_io
    def run_records(self, newest: int | None = None) -> tuple[list[tuple[str, Any]], int]:
        """The newest run records, oldest first (file names start with the start time), each
        as (file name, its JSON, or the error that kept it from being read); and how many
        records there are."""
        fs, root = self._fs()
        folder = storage.join(root, "runs")
        files = sorted(
            (f for f in fs.ls(folder, detail=False) if self._is_part(f, ".json")), key=os.path.basename
        ) if fs.exists(folder) else []
        records = []
        for file in files[-newest:] if newest else files:
            try:
                records.append((os.path.basename(file), json.loads(fs.cat_file(file))))
            except (OSError, ValueError) as error:  # a JSON or UTF-8 error is a ValueError
                records.append((os.path.basename(file), error))
        return records, len(files)

    def runs(self) -> list[dict[str, Any]]:
        """Every readable run record, oldest first."""
        return [data for _, data in self.run_records()[0] if not isinstance(data, Exception)]
