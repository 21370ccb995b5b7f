"""JobSpec -> Ray Data graph: read -> prepare -> stage actor pools -> write."""

from __future__ import annotations

from pipeline.io.commit_log import CommitLog
from pipeline.io.prepare import RowSource, prepare_shards
from pipeline.io.writer import Encoding, OutputTarget, stage_info, write_outputs
from pipeline.resources import Plan
from pipeline.spec import JobSpec


def output_target(spec: JobSpec) -> OutputTarget:
    return OutputTarget(
        log=CommitLog.of(spec),
        encoding=Encoding(spec.output.format, spec.output.quality, spec.output.png_compress_level),
        stages=tuple(stage_info(stage) for stage in spec.stages),
        layout=spec.output.layout,
    )


def build_dataset(spec: JobSpec, plan: Plan, source: RowSource, owners: list[list[str]], attempts=None,
                  shards: list[int] | None = None):
    """The lazy dataset of the whole job; iterating it runs the job and yields, per written
    shard, the rows' id, status and error. attempts: the run's ChunkAttempts actor.
    shards: the numbers of the shards to run (default: all of source.shards)."""
    import ray.data

    # The unit of work and of commit is a shard (pipeline/io/shards.py). Each shard is one
    # item here and one block in every later step: a task reads and prepares it, each stage
    # gets it in one call (batch_size=None: one block per call) and cuts its own batches
    # from it, and the write step commits it in one metadata file. Its rows always share
    # the same batch mates (batched kernels round differently with other mates), so a rerun
    # skips whole committed shards and recomputes the others byte for byte, in whatever
    # order they finish. One block per shard also spreads the shards over every actor.
    # Blocks are never split by size (ray_session.job_data_context) nor merged: a task gets
    # one input block and returns one.
    numbers = list(range(source.shards.count)) if shards is None else list(shards)
    ds = ray.data.from_items([{"shard": number} for number in numbers], override_num_blocks=max(1, len(numbers)))
    ds = ds.map_batches(
        prepare_shards,
        fn_kwargs={"source": source},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=plan.task_cpus,
    )
    for index, (stage, stage_plan) in enumerate(zip(spec.stages, plan.stages)):
        resources = {"num_cpus": stage_plan.cpus}
        if stage_plan.gpus:
            resources["num_gpus"] = stage_plan.gpus
        # map_batches_internal (a Ray Data DeveloperAPI): map_batches refuses batch_size=None
        # with GPUs, and any row count would cut shards into batches that ignore their bounds.
        ds = ds.map_batches_internal(
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
            batch_size=None,  # one shard per call
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
            # and a retried shard keeps its composition, so its bytes. A shard that kills
            # max_worker_deaths workers fails its rows instead (stages/attempts.py).
            **resources,
        )
    return ds.map_batches(
        write_outputs,
        fn_kwargs={"target": output_target(spec)},
        batch_format="numpy",
        batch_size=None,  # one shard per call: one metadata file per shard
        num_cpus=plan.task_cpus,
    )
