"""The Ray Data graph a job becomes: which steps run where."""

import contextlib
import io

from conftest import job, stage, write_table

from pipeline import preflight
from pipeline.processor import build_dataset
from pipeline.resources import plan_resources
from pipeline.runner import row_source
from pipeline.spec import parse_spec


def optimized_physical_plan(ray_cluster, tiny, tmp_path, gpus: int) -> str:
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle"] * 4})
    spec = preflight.absolute_paths(parse_spec(job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])])))
    columns = preflight.check_input(spec)
    plan = plan_resources(spec.stages, 2, gpus)
    dataset = build_dataset(spec, plan, row_source(spec, columns), preflight.override_owners(spec, columns.overrides))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        dataset.explain()  # plans only; runs nothing
    return printed.getvalue().split("Physical Plan (Optimized)")[1]


def test_a_gpu_stage_gets_its_input_prepared_in_cpu_tasks(ray_cluster, tiny, tmp_path):
    # Fetching and decoding input images must not hold a GPU actor: with a GPU request the
    # stage's remote args differ from prepare's, so Ray Data keeps prepare a task operator.
    plan = optimized_physical_plan(ray_cluster, tiny, tmp_path, gpus=1)
    assert "TaskPoolMapOperator[MapBatches(prepare_shards)]" in plan
    assert "ActorPoolMapOperator[MapBatches(Txt2ImgWorker)]" in plan


def test_a_cpu_only_stage_runs_prepare_in_its_actor(ray_cluster, tiny, tmp_path):
    # Same CPU request, so Ray Data fuses prepare into the actor (README, "Pipeline").
    plan = optimized_physical_plan(ray_cluster, tiny, tmp_path, gpus=0)
    assert "ActorPoolMapOperator[MapBatches(prepare_shards)->MapBatches(Txt2ImgWorker)]" in plan
