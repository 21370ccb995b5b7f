"""Run a job: preflight, connect to Ray, plan resources, stream the dataset, record the run."""

from __future__ import annotations

import logging
import time

from pipeline import storage
from pipeline.io.commit_log import CommitLog, RunRecord
from pipeline.spec import JobSpec
from pipeline.summary import RunSummary

logger = logging.getLogger("synth.runner")

__all__ = ["RunSummary", "row_source", "run_job"]


def row_source(spec: JobSpec, columns, skip_ids: frozenset[str] = frozenset()):
    """How this job's input is read (columns: preflight.InputColumns) and how the prepare
    step turns its rows into stage rows."""
    from pipeline.io.prepare import RowRules, RowSource
    from pipeline.io.reader import base_dir

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
    return RowSource(rules, skip_ids=skip_ids, table_schema=columns.schema)


def _plan(spec: JobSpec):
    """The cluster's resources, and the stage pools' plan that fits them."""
    import ray

    from pipeline.resources import plan_resources

    resources = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1 and not storage.is_remote(spec.output.path):
        logger.warning(
            "output.path %s is local and the cluster has %d nodes: each node writes to its own disk unless "
            "the path is a shared mount; prefer s3://", spec.output.path, len(nodes)
        )
    node_cpus = max((node.get("Resources", {}).get("CPU", 0) for node in nodes), default=None)
    plan = plan_resources(spec.stages, resources.get("CPU", 0), resources.get("GPU", 0), node_cpus)
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




def run_job(spec: JobSpec, retry_failed: bool = False) -> RunSummary:
    from pipeline import preflight
    from pipeline.io.writer import OUTPUT_ERROR
    from pipeline.processor import build_dataset
    from pipeline.ray_session import connect_ray, job_data_context
    from pipeline.stages.attempts import start_chunk_attempts

    started = time.perf_counter()
    # 1. Checks that need no cluster: columns, models, output (seconds, no GPU held).
    spec = preflight.absolute_paths(spec)
    columns = preflight.check_input(spec)
    preflight.check_models(spec)
    preflight.check_output(spec)
    log = CommitLog.of(spec)
    log.check_same_job(spec)
    record = log.start_run(spec, retry_failed)
    summary = None
    try:
        # 2. The cluster and a plan that fits it.
        connect_ray()
        plan = _plan(spec)
        with job_data_context(spec.actor_start_timeout_s):
            log.record_job(spec)
            swept = storage.sweep_temporary(spec.output.path)
            if swept:
                logger.info("removed %d temporary files that killed writers left in %s", swept, spec.output.path)
            skip = log.rows_to_skip(retry_failed)
            source = row_source(spec, columns, frozenset(skip))
            owners = preflight.override_owners(spec, columns.overrides)
            dataset = build_dataset(spec, plan, source, owners, start_chunk_attempts())

            # 3. Stream: each item is one committed chunk's id/status/error.
            summary = RunSummary(rows_skipped=len(skip),
                                 skipped_failed=sum(1 for status in skip.values() if status != "ok"))
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                if summary.first_batch_seconds is None:
                    summary.first_batch_seconds = time.perf_counter() - started
                for row_id, status, error in zip(*(batch.column(c).to_pylist() for c in ("id", "status", "error"))):
                    if status == OUTPUT_ERROR:
                        raise storage.OutputWriteError(error)
                    summary.add(row_id, status, error)
        summary.wall_seconds = time.perf_counter() - started
    except BaseException as error:
        text = str(error).strip().splitlines()
        message = str(error) if isinstance(error, storage.OutputWriteError) else f"{type(error).__name__}: {text[-1] if text else ''}"
        _finish(log, record, started, 2, summary, message[:500])
        raise
    _finish(log, record, started, summary.exit_code(spec.max_failed_fraction), summary)
    return summary
