"""Run a job: preflight, connect to Ray, plan resources, stream the dataset, summarise."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from pipeline import storage
from pipeline.spec import JobSpec, resolved_dict


@dataclass
class RunSummary:
    rows_ok: int = 0
    rows_failed: int = 0
    wall_seconds: float = 0.0
    first_batch_seconds: float | None = None
    errors: list[str] = field(default_factory=list)  # a few examples, "id: message"

    @property
    def rows(self) -> int:
        return self.rows_ok + self.rows_failed

    @property
    def images_per_second(self) -> float:
        return self.rows_ok / self.wall_seconds if self.wall_seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.rows_ok} rows ok, {self.rows_failed} failed, "
            f"{self.images_per_second:.2f} images/s, wall {self.wall_seconds:.1f} s"
        )


def connect_ray() -> None:
    """Join the cluster at RAY_ADDRESS, or start a local one (nothing to do when connected)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        import pipeline

        # Ship this exact version of the code to the cluster's workers.
        ray.init(address=address, runtime_env={"py_modules": [os.path.dirname(pipeline.__file__)]})
    else:
        ray.init()


def write_resolved_spec(spec: JobSpec) -> None:
    fs, root = storage.filesystem(spec.output.path, spec.output_storage_options())
    data = json.dumps(resolved_dict(spec), indent=2).encode()
    storage.write_bytes_atomic(fs, storage.join(root, "job.json"), data)


def run_job(spec: JobSpec, log: Callable[[str], None] = print) -> RunSummary:
    import ray
    import ray.data

    from pipeline import preflight
    from pipeline.io.prepare import RowSource
    from pipeline.io.reader import base_dir
    from pipeline.processor import build_dataset
    from pipeline.resources import plan_resources

    started = time.perf_counter()
    # 1. Checks that need no cluster: columns, models, output (seconds, no GPU held).
    spec = preflight.absolute_paths(spec)
    roles, overrides = preflight.check_input(spec)
    preflight.check_models(spec)
    preflight.check_output(spec)

    # 2. The cluster and a plan that fits it.
    connect_ray()
    resources = ray.cluster_resources()
    plan = plan_resources(spec.stages, resources.get("CPU", 0), resources.get("GPU", 0))
    for index, stage_plan in enumerate(plan.stages):
        log(
            f"stage {index} {spec.stages[index].kind}: {stage_plan.min_replicas}-{stage_plan.max_replicas} "
            f"replicas x {stage_plan.gpus:g} GPU, {stage_plan.cpus:g} CPU"
        )
    context = ray.data.DataContext.get_current()
    # Fixed batch composition is what makes a rerun byte-identical (batched kernels may
    # round differently for different batch mates), so blocks keep their input order.
    context.execution_options.preserve_order = True
    # Start every pool's minimum actors before rows flow: work spreads over the whole pool
    # from the first batch, and a pool that cannot be placed fails with a timeout instead
    # of hanging.
    context.wait_for_min_actors_s = spec.actor_start_timeout_s

    write_resolved_spec(spec)
    source = RowSource(
        job_seed=spec.seed,
        base_dir=base_dir(spec.input.path),
        storage_options=spec.input_storage_options(),
        id_column=spec.input.id_column,
        roles=roles,
        overrides=overrides,
    )
    dataset = build_dataset(spec, plan, source, preflight.override_owners(spec, overrides))

    # 3. Stream: each item is one written batch's id/status/error.
    summary = RunSummary()
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if summary.first_batch_seconds is None:
            summary.first_batch_seconds = time.perf_counter() - started
        for row_id, status, error in zip(*(batch.column(c).to_pylist() for c in ("id", "status", "error"))):
            if status == "ok":
                summary.rows_ok += 1
            else:
                summary.rows_failed += 1
                if len(summary.errors) < 5:
                    summary.errors.append(f"{row_id}: {error}")
    summary.wall_seconds = time.perf_counter() - started
    return summary
