"""Run a job: preflight, connect to Ray, plan resources, stream the dataset, record the run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pipeline import storage
from pipeline.io.commit_log import CommitLog, RunRecord
from pipeline.spec import JobSpec
from pipeline.summary import RunSummary

logger = logging.getLogger("synth.runner")

__all__ = ["RunSummary", "row_source", "run_job"]


def row_source(spec: JobSpec, columns, skip_ids: frozenset[str] = frozenset(), shard_rows: int | None = None):
    """How this job's input is read and cut into shards (columns: preflight.InputColumns;
    shard_rows: the output's shard size, default the one a new output gets) and how the
    prepare step turns its rows into stage rows."""
    from pipeline.io.prepare import RowRules, RowSource
    from pipeline.io.reader import base_dir
    from pipeline.io.shards import ShardPlan, shard_size

    rules = RowRules(
        job_seed=spec.seed,
        base_dir=base_dir(spec.input.path, spec.input_storage_options()),
        storage_options=spec.input_storage_options(),
        id_column=spec.input.id_column,
        roles=columns.roles,
        overrides=columns.overrides,
        max_image_pixels=spec.input.max_image_pixels,
        max_image_bytes=spec.input.max_image_bytes,
        allow_http=spec.input.allow_http,
        http_timeout_s=spec.input.http_timeout_s,
        prompt_required=spec.stages[0].needs_prompt,
    )
    rows = columns.rows or {}
    shards = ShardPlan.of(rows, shard_rows or shard_size(spec, sum(rows.values())), columns.versions)
    return RowSource(rules, skip_ids=skip_ids, table_schema=columns.schema, shards=shards, input_path=spec.input.path)


def _plan(spec: JobSpec):
    """The stage pools' plan for what the cluster can grow to (pipeline.capacity): on an
    autoscaling cluster, GPU actors that wait for GPU workers are the demand that starts them."""
    import ray

    from pipeline.capacity import cluster_capacity
    from pipeline.resources import plan_resources

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    capacity = cluster_capacity(spec.stages)
    if (len(nodes) > 1 or capacity.grows) and not storage.is_remote(spec.output.path):
        logger.warning(
            "output.path %s is local and the cluster has %d nodes%s: each node writes to its own disk unless "
            "the path is a shared mount; prefer s3://", spec.output.path, len(nodes),
            " and may add more" if capacity.grows else "",
        )
    plan = plan_resources(spec.stages, capacity.cpus, capacity.gpus, capacity.node_cpus)
    for index, stage_plan in enumerate(plan.stages):
        logger.info(
            "stage %d %s: %d-%d replicas x %g GPU, %g CPU, %d torch threads", index, spec.stages[index].kind,
            stage_plan.min_replicas, stage_plan.max_replicas, stage_plan.gpus, stage_plan.cpus,
            stage_plan.torch_threads,
        )
    return plan


def _finish(log: CommitLog, record: RunRecord, started: float, exit_code: int, summary: RunSummary | None = None,
            message: str | None = None) -> None:
    import ray

    job_id = ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    record.finish(exit_code, time.perf_counter() - started, summary, message, job_id)
    try:
        log.write_run(record)
    except storage.OutputWriteError as error:  # the same full disk, say: the run's own error matters more
        logger.warning("the run record could not be written: %s", error)




def run_job(spec: JobSpec, retry_failed: bool = False, allow_model_change: bool = False,
            wait_for_lease_s: float = 0.0) -> RunSummary:
    """Run a job into its output, resuming what an earlier run of it left.

    allow_model_change: go on when a stage's model resolves to another revision than the
    one pinned by the output's first run (recorded in models.json and the run record);
    without it such a resume is refused. wait_for_lease_s: how long to wait while another
    run writes to the same output before refusing (OutputBusy)."""
    from pipeline import preflight
    from pipeline.io.commit_log import new_run_id
    from pipeline.io.writer import OUTPUT_ERROR
    from pipeline.processor import build_dataset
    from pipeline.ray_session import connect_ray, job_data_context
    from pipeline.stages.attempts import start_chunk_attempts

    started = time.perf_counter()
    # 1. Checks that need no cluster: columns, models, output (seconds, no GPU held). Each
    # stage's model revision is resolved here, once, and pinned for every worker.
    spec = preflight.absolute_paths(spec)
    columns = preflight.check_input(spec)
    revisions = preflight.check_models(spec)
    adapters = preflight.adapter_fingerprints(spec)
    preflight.check_output(spec)

    # 2. One writer per output: the job claims it (job.json, created exclusively), then the
    # run takes its lease; under the lease, the job and the models are checked again
    # against what earlier runs recorded, before anything is recorded for this run.
    log = CommitLog.of(spec)
    log.claim(spec)
    run_id = new_run_id()
    with log.lease(run_id, spec, wait_for_lease_s) as lease:
        log.check_same_job(spec)
        changes = log.check_models(spec, revisions, allow_model_change, adapters)
        log.record_job(spec, revisions, changes, run_id, adapters)
        record = log.start_run(spec, retry_failed, run_id, revisions, changes)
        summary = None
        try:
            swept = storage.sweep_temporary(spec.output.path)  # under the lease: no writer is mid-write
            if swept:
                logger.info("removed %d temporary files that killed writers left in %s", swept, spec.output.path)
            resume = _resume(log, spec, columns, retry_failed)
            # Shard files a killed run wrote but never committed (after a retry's uncommit too).
            log.sweep_orphan_shards(spec.output.layout, spec.output.lease_timeout_s)
            # 3. Nothing left to do: the job's outcome, without Ray or any actor.
            if resume.nothing_left:
                logger.info("nothing left to do: every input row is committed in %s", spec.output.path)
                summary = resume.summary()
            else:
                # 4. The cluster and a plan that fits it; the workers get the pinned models.
                connect_ray()
                plan = _plan(spec)
                pinned = preflight.pin_models(spec, revisions)
                with job_data_context(spec.actor_start_timeout_s):
                    owners = preflight.override_owners(spec, columns.overrides)
                    attempts = start_chunk_attempts()
                    summary = resume.summary()
                    windows = _windows(resume.shards if resume.shards is not None else range(resume.source.shards.count))
                    for number, window in enumerate(windows):
                        if len(windows) > 1:
                            logger.info("window %d of %d: shards %d to %d", number + 1, len(windows), window[0],
                                        window[-1])
                        dataset = build_dataset(pinned, plan, resume.source, owners, attempts, window)
                        # 5. Stream: each item is one committed shard's id/status/error.
                        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                            lease.check()  # another run took the output over: stop writing beside it
                            if summary.first_batch_seconds is None:
                                summary.first_batch_seconds = time.perf_counter() - started
                            for row_id, status, error in zip(*(batch.column(c).to_pylist()
                                                               for c in ("id", "status", "error"))):
                                if status == OUTPUT_ERROR:
                                    raise storage.OutputWriteError(error)
                                summary.add(row_id, status, error)
            summary.wall_seconds = time.perf_counter() - started
        except BaseException as error:
            text = str(error).strip().splitlines()
            if isinstance(error, KeyboardInterrupt):  # Ctrl-C, or SIGTERM through the CLI
                _finish(log, record, started, 130, summary, "stopped by a signal")
                raise
            message = str(error) if isinstance(error, storage.OutputWriteError) else (
                f"{type(error).__name__}: {text[-1] if text else ''}")
            _finish(log, record, started, 2, summary, message[:500])
            raise
        _finish(log, record, started, summary.exit_code(spec.max_failed_fraction), summary)
    return summary


# The most shards one Ray dataset runs; a job with more runs them in windows of this many,
# one dataset after another. Ray Data keeps state on the driver for each block of a
# dataset from the moment the dataset is built (about 5-7 KB per block, and 60-80 s to
# build 10^5 of them on this machine), so one dataset for 10^8 rows (98k shards of 1,024)
# would hold that much and wait minutes before its first shard; a window bounds both,
# whatever the table. (The driver still grows some 13-17 KB per shard run, windows or not:
# native memory, see benchmarks/README.md.) Each window's stage pools start anew and load their models again, and the last shards
# of a window leave some actors idle: at 8,192 shards (8.4 M rows at 1,024 rows per
# shard) both are small next to the window's work. Shard composition does not depend on
# windows, so neither do the bytes.
WINDOW_SHARDS = 8192


def _windows(shards) -> list[list[int]]:
    shards = list(shards)
    return [shards[i: i + WINDOW_SHARDS] for i in range(0, len(shards), WINDOW_SHARDS)] or [[]]


@dataclass
class _Resume:
    source: object  # prepare.RowSource
    shards: list[int] | None  # the shard numbers to run; None: every shard (rows skipped by id)
    nothing_left: bool
    rows_skipped: int
    skipped_failed: int

    def summary(self) -> RunSummary:
        return RunSummary(rows_skipped=self.rows_skipped, skipped_failed=self.skipped_failed)


def _resume(log: CommitLog, spec: JobSpec, columns, retry_failed: bool) -> _Resume:
    """What an earlier run left to do. While the input is the one the output's first run
    read, a shard number names the same rows (their composition is a function of the input
    files and the shard size): the committed shards come from one listing of metadata/,
    whole shards are skipped and no row id travels anywhere. The shards left run whole,
    as in a clean run, including a row identical to one committed in another shard (no
    input.id_column: their ids are their content's hash), which a clean run writes too.
    Otherwise (an input that changed; an output written before shards) every committed row
    id is read and the prepare tasks skip rows by id, as a partly committed shard's rows
    ride along unwritten with the others (io/prepare.py)."""
    from pipeline.io.done import every_row_committed

    rows = columns.rows or {}
    shard_rows, same_input = log.shards(spec, rows, columns.sizes or {}, columns.versions or {})
    if same_input:
        done = log.committed_shards(retry_failed)
        if done.retried:
            logger.info("retrying the shards of %d committed rows that hold failed ones", done.retried)
        source = row_source(spec, columns, frozenset(), shard_rows)
        pending = [shard for shard in range(source.shards.count) if shard not in done.rows]
        return _Resume(source, pending, not pending, done.total, done.failed)
    skip = log.rows_to_skip(retry_failed)
    source = row_source(spec, columns, frozenset(skip), shard_rows)
    failed = sum(1 for status in skip.values() if status != "ok")
    return _Resume(source, None, every_row_committed(spec, source), len(skip), failed)
