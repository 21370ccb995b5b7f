"""Run a job: preflight, connect to Ray, plan resources, stream the dataset, summarise."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from pipeline import storage
from pipeline.spec import JobSpec, SpecError, resolved_dict


@dataclass
class RunSummary:
    rows_ok: int = 0
    rows_failed: int = 0
    rows_skipped: int = 0  # committed by an earlier run of the same output
    skipped_failed: int = 0  # of those, rows committed as failed (not retried this run)
    wall_seconds: float = 0.0
    first_batch_seconds: float | None = None
    errors: list[str] = field(default_factory=list)  # a few examples, "id: message"

    @property
    def rows(self) -> int:
        return self.rows_ok + self.rows_failed

    @property
    def failed_share(self) -> float:
        """Failed rows over all committed rows, this run's and earlier runs': a rerun that
        finds nothing to do still reports the job's real outcome."""
        total = self.rows + self.rows_skipped
        return (self.rows_failed + self.skipped_failed) / total if total else 0.0

    @property
    def images_per_second(self) -> float:
        return self.rows_ok / self.wall_seconds if self.wall_seconds else 0.0

    def line(self) -> str:
        skipped = f", {self.rows_skipped} already done" if self.rows_skipped else ""
        return (
            f"{self.rows_ok} rows ok, {self.rows_failed} failed{skipped}, "
            f"{self.images_per_second:.2f} images/s, wall {self.wall_seconds:.1f} s"
        )


def connect_ray(local: bool = False) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local one (nothing to do when connected).
    local: always start a Ray of this machine's own, for commands that write their input
    and read their output on local disk (the demo, the model evaluation): on a cluster,
    workers on other nodes could not see either."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if local:
        ray.init(address="local")
    elif address:
        import pipeline

        # Ship this exact version of the code to the cluster's workers.
        ray.init(address=address, runtime_env={"py_modules": [os.path.dirname(pipeline.__file__)]})
    else:
        ray.init()


# Fields that decide what a row's image is. Resources, timeouts and storage options may
# change between a run and its resume; these may not, or one output would mix two jobs.
_OUTPUT_DEFINING = ("seed", "input.path", "input.id_column", "input.columns", "input.overrides", "output.format",
                    "output.quality", "output.png_compress_level")
_STAGE_RESOURCES = ("replicas", "gpus", "cpus")


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
            if key not in _STAGE_RESOURCES:
                picked[f"stages.{index}.{key}"] = value
    return picked


def check_same_job(spec: JobSpec) -> None:
    """Refuse to resume into an output that a different spec wrote (its job.json)."""
    fs, root = storage.filesystem(spec.output.path, spec.output_storage_options())
    path = storage.join(root, "job.json")
    if not fs.exists(path):
        return
    written = json.loads(fs.cat_file(path))
    try:  # with the defaults of fields added since it was written
        written = resolved_dict(JobSpec.model_validate(written))
        compared = None
    except Exception:  # it holds a field since removed: compare the fields it holds
        compared = set(_defining(written))
    _check_row_id_scheme(spec, fs, root)
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


def _check_row_id_scheme(spec: JobSpec, fs, root: str) -> None:
    """Without an id column, a row's id is a hash of its values (keys.ROW_ID_SCHEME): an
    output whose committed rows were hashed another way cannot be resumed."""
    from pipeline.keys import ROW_ID_SCHEME

    if spec.input.id_column or not fs.glob(storage.join(root, "metadata", "*.parquet")):
        return
    path = storage.join(root, "row_ids.json")
    scheme = json.loads(fs.cat_file(path))["scheme"] if fs.exists(path) else 1
    if scheme != ROW_ID_SCHEME:
        raise SpecError(
            f"output.path: {spec.output.path} holds rows whose ids an older synth computed (row id scheme "
            f"{scheme}, now {ROW_ID_SCHEME}): a resume would match none of them and generate every row again. "
            "Run into a new output path"
        )


def write_resolved_spec(spec: JobSpec) -> None:
    from pipeline.keys import ROW_ID_SCHEME

    fs, root = storage.filesystem(spec.output.path, spec.output_storage_options())
    data = json.dumps(resolved_dict(spec), indent=2).encode()
    storage.write_bytes_atomic(fs, storage.join(root, "job.json"), data)
    scheme = {"scheme": ROW_ID_SCHEME, "about": "how rows without input.id_column got their ids"}
    storage.write_bytes_atomic(fs, storage.join(root, "row_ids.json"), json.dumps(scheme).encode())


def rows_to_skip(spec: JobSpec, retry_failed: bool, log: Callable[[str], None]) -> dict[str, str]:
    """Id -> status of the rows a previous run committed. With retry_failed, the chunks that
    hold failed rows are first removed from the metadata (so no row can appear twice) and
    run again whole."""
    from pipeline.io.ledger import committed_rows, uncommit_chunks

    options = spec.output_storage_options()
    committed = committed_rows(spec.output.path, options)
    if retry_failed:
        failed = {row_id for row_id, status in committed.items() if status != "ok"}
        if failed:
            redo = uncommit_chunks(spec.output.path, options, failed)
            log(f"retrying {len(failed)} failed rows ({len(redo)} rows in their chunks)")
            # Read again, not filtered: an identical row (same content id) of a removed chunk
            # may still be committed in another chunk, which must then not run again.
            committed = committed_rows(spec.output.path, options)
    if committed:
        log(f"resuming: {len(committed)} rows already committed in {spec.output.path}")
    return committed


def row_source(spec: JobSpec, columns, skip_ids: frozenset[str] = frozenset()):
    """How this job's input is read (columns: preflight.InputColumns) and how the prepare
    step turns its rows into stage rows."""
    from pipeline.io.prepare import RowSource
    from pipeline.io.reader import base_dir

    return RowSource(
        job_seed=spec.seed,
        base_dir=base_dir(spec.input.path, spec.input_storage_options()),
        storage_options=spec.input_storage_options(),
        id_column=spec.input.id_column,
        roles=columns.roles,
        overrides=columns.overrides,
        skip_ids=skip_ids,
        max_image_pixels=spec.input.max_image_pixels,
        prompt_required=spec.stages[0].kind != "upscale",
        table_schema=columns.schema,
    )


def run_job(spec: JobSpec, log: Callable[[str], None] = print, retry_failed: bool = False) -> RunSummary:
    import ray
    import ray.data

    from pipeline import preflight
    from pipeline.processor import build_dataset
    from pipeline.resources import plan_resources

    started = time.perf_counter()
    # 1. Checks that need no cluster: columns, models, output (seconds, no GPU held).
    spec = preflight.absolute_paths(spec)
    columns = preflight.check_input(spec)
    preflight.check_models(spec)
    preflight.check_output(spec)
    check_same_job(spec)

    # 2. The cluster and a plan that fits it.
    connect_ray()
    resources = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) > 1 and not storage.is_remote(spec.output.path):
        log(
            f"warning: output.path {spec.output.path} is local and the cluster has {len(nodes)} nodes: "
            "each node writes to its own disk unless the path is a shared mount; prefer s3://"
        )
    node_cpus = max((node.get("Resources", {}).get("CPU", 0) for node in nodes), default=None)
    plan = plan_resources(spec.stages, resources.get("CPU", 0), resources.get("GPU", 0), node_cpus)
    for index, stage_plan in enumerate(plan.stages):
        log(
            f"stage {index} {spec.stages[index].kind}: {stage_plan.min_replicas}-{stage_plan.max_replicas} "
            f"replicas x {stage_plan.gpus:g} GPU, {stage_plan.cpus:g} CPU, {stage_plan.torch_threads} torch threads"
        )
    context = ray.data.DataContext.get_current()
    # Fixed batch composition is what makes a rerun byte-identical (batched kernels may
    # round differently for different batch mates), so blocks keep their input order.
    context.execution_options.preserve_order = True
    # Start the pools' actors without holding up the job: reads, Ray Data's own actors and
    # every stage's model load overlap. Waiting for each pool in turn (Ray Data starts its
    # operators one after another) loaded a chain's models one after another: a tiny
    # txt2img -> upscale job took 32 s instead of 26 s. A pool gets chunks only from actors
    # that have loaded, at most 2 each (max_tasks_in_flight_per_actor), so work still
    # spreads over the pool as its actors come up.
    context.wait_for_min_actors_s = -1
    # The hang guard: no progress at all for actor_start_timeout_s (actors that cannot be
    # placed, a model load that hangs, or a later stall) fails the job instead of waiting.
    context.execution_no_progress_timeout_s = spec.actor_start_timeout_s
    # Never split a block by size: a block is a chunk, the unit of commit (several 4K
    # upscales pass the default 128 MiB). Chunks are small by construction (max batch_size).
    context.target_max_block_size = None

    write_resolved_spec(spec)
    skip = rows_to_skip(spec, retry_failed, log)
    source = row_source(spec, columns, frozenset(skip))
    dataset = build_dataset(spec, plan, source, preflight.override_owners(spec, columns.overrides))

    # 3. Stream: each item is one written batch's id/status/error.
    summary = RunSummary(rows_skipped=len(skip), skipped_failed=sum(1 for status in skip.values() if status != "ok"))
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
