"""JobSpec -> Ray Data graph: read -> prepare -> stage actor pools -> write."""

from __future__ import annotations

from pipeline.io.commit_log import CommitLog
from pipeline.io.prepare import RowSource, prepare_rows
from pipeline.io.reader import read_input
from pipeline.io.writer import Encoding, OutputTarget, stage_info, write_outputs
from pipeline.resources import Plan
from pipeline.spec import JobSpec


def output_target(spec: JobSpec) -> OutputTarget:
    return OutputTarget(
        log=CommitLog.of(spec),
        encoding=Encoding(spec.output.format, spec.output.quality, spec.output.png_compress_level),
        stages=tuple(stage_info(stage) for stage in spec.stages),
    )


def chunk_rows(spec: JobSpec) -> int:
    """Rows per chunk: the largest stage batch, so no stage batch spans two chunks."""
    return max(stage.batch_size for stage in spec.stages)


def build_dataset(spec: JobSpec, plan: Plan, source: RowSource, owners: list[list[str]], attempts=None):
    """The lazy dataset of the whole job; iterating it runs the job and yields, per written
    batch, the rows' id, status and error. attempts: the run's ChunkAttempts actor."""
    import ray.data

    ds = read_input(spec, source.columns(), plan.task_cpus, schema=source.read_schema())
    # The unit of work and of commit is a chunk: `chunk_rows(spec)` consecutive input rows,
    # cut before anything is filtered. Every later step keeps a chunk in one block, so its
    # rows always share the same batch mates (batched kernels round differently with other
    # mates) and its metadata is one file written after all its images. A rerun therefore
    # skips whole committed chunks and recomputes the others byte for byte.
    # Small blocks also spread the rows over every actor of a pool: actors receive whole
    # blocks, and a one-file table would otherwise be one block on one actor.
    ds = ds.repartition(target_num_rows_per_block=chunk_rows(spec), strict=True)
    ds = ds.map_batches(
        prepare_rows,
        fn_kwargs={"source": source},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=plan.task_cpus,
    )
    for index, (stage, stage_plan) in enumerate(zip(spec.stages, plan.stages)):
        resources = {"num_cpus": stage_plan.cpus}
        if stage_plan.gpus:
            resources["num_gpus"] = stage_plan.gpus
        ds = ds.map_batches(
            stage.worker,
            fn_constructor_kwargs={
                "stage": stage.model_dump(),
                "index": index,
                "overrides": owners[index],
                "storage_options": spec.storage_options,
                "torch_threads": stage_plan.torch_threads,
                "max_output_pixels": spec.output.max_pixels,
                "attempts": attempts,
                "max_deaths": spec.max_worker_deaths,
            },
            # One chunk per call; the worker slices it into batch_size groups itself. Ray Data
            # bundles blocks until a batch is full, so this is exact because chunks are
            # never short mid-stream (a rerun skips or redoes whole chunks, see commit_log.py).
            batch_size=chunk_rows(spec),
            batch_format="numpy",
            # One batch running and one queued per actor: enough to hide the hand-off, few
            # enough that a burst of blocks spreads over the pool instead of one actor's queue.
            compute=ray.data.ActorPoolStrategy(
                min_size=stage_plan.min_replicas,
                max_size=stage_plan.max_replicas,
                max_tasks_in_flight_per_actor=2,
            ),
            # A dead actor (preempted node, OOM kill) is restarted and its in-flight batches
            # retried: Ray Data's actor pools default to unlimited restarts and task retries,
            # and a retried chunk keeps its composition, so its bytes. A chunk that kills
            # max_worker_deaths workers fails its rows instead (stages/attempts.py).
            **resources,
        )
    return ds.map_batches(
        write_outputs,
        fn_kwargs={"target": output_target(spec)},
        batch_format="numpy",
        batch_size=None,  # the whole chunk: one metadata file per chunk
        num_cpus=plan.task_cpus,
    )
