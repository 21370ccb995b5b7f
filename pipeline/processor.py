"""JobSpec -> Ray Data graph: read -> prepare -> stage actor pools -> write."""

from __future__ import annotations

from pipeline.io.prepare import RowSource, prepare_rows
from pipeline.io.reader import read_input
from pipeline.io.writer import OutputTarget, StageInfo, write_outputs
from pipeline.resources import Plan
from pipeline.spec import JobSpec


def output_target(spec: JobSpec) -> OutputTarget:
    return OutputTarget(
        path=spec.output.path,
        format=spec.output.format,
        quality=spec.output.quality,
        png_compress_level=spec.output.png_compress_level,
        storage_options=spec.output_storage_options(),
        stages=tuple(
            StageInfo(s.kind, s.model, s.scheduler, s.noise_level, s.negative_prompt) for s in spec.stages
        ),
    )


def build_dataset(spec: JobSpec, plan: Plan, source: RowSource, owners: list[list[str]]):
    """The lazy dataset of the whole job; iterating it runs the job and yields, per written
    batch, the rows' id, status and error."""
    import ray.data

    from pipeline.stages import WORKERS

    ds = read_input(spec, source.columns(), plan.task_cpus)
    ds = ds.map_batches(
        prepare_rows,
        fn_kwargs={"source": source},
        batch_format="pyarrow",
        batch_size=spec.stages[0].batch_size,
        num_cpus=plan.task_cpus,
    )
    # Actors receive whole blocks: a one-file table is one block and would keep every row
    # on one actor. Blocks of one batch each spread the rows over the pool.
    ds = ds.repartition(target_num_rows_per_block=spec.stages[0].batch_size)
    for index, (stage, stage_plan) in enumerate(zip(spec.stages, plan.stages)):
        resources = {"num_cpus": stage_plan.cpus}
        if stage_plan.gpus:
            resources["num_gpus"] = stage_plan.gpus
        ds = ds.map_batches(
            WORKERS[stage.kind],
            fn_constructor_kwargs={
                "stage": stage.model_dump(),
                "index": index,
                "overrides": owners[index],
                "storage_options": spec.storage_options,
                "torch_threads": stage_plan.torch_threads,
            },
            batch_size=stage.batch_size,
            batch_format="numpy",
            # One batch running and one queued per actor: enough to hide the hand-off, few
            # enough that a burst of blocks spreads over the pool instead of one actor's queue.
            compute=ray.data.ActorPoolStrategy(
                min_size=stage_plan.min_replicas,
                max_size=stage_plan.max_replicas,
                max_tasks_in_flight_per_actor=2,
            ),
            **resources,
        )
    return ds.map_batches(
        write_outputs,
        fn_kwargs={"target": output_target(spec)},
        batch_format="numpy",
        batch_size=spec.stages[-1].batch_size,
        num_cpus=plan.task_cpus,
    )
