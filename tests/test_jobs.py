"""Whole jobs on a real local Ray (2 CPUs, 2 fake GPUs): read -> stages -> write."""

import hashlib
from pathlib import Path

import pytest
from conftest import half_mask, job, png_bytes, read_metadata, stage, write_table

from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(300)  # a deadlocked Ray job hangs silently; fail instead

PROMPTS = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")]


def run(raw: dict):
    summary = run_job(parse_spec(raw))
    return summary, read_metadata(raw["output"]["path"])


def check_outputs(rows, count, size):
    assert len(rows) == count
    assert len({row["id"] for row in rows}) == count
    for row in rows:
        assert row["status"] == "ok", row["error"]
        data = Path(row["image_uri"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert (row["width"], row["height"]) == size


def test_txt2img_job(ray_cluster, tiny, tmp_path):
    table = write_table(tmp_path / "prompts.parquet", {"prompt": PROMPTS})
    summary, rows = run(job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])]))
    assert (summary.rows_ok, summary.rows_failed) == (6, 0)
    check_outputs(rows, 6, (32, 32))
    row = rows[0]
    assert row["stage_chain"] == "txt2img" and row["format"] == "png"
    assert row["stages"][0]["model_revision"].startswith("files:")
    assert row["stages"][0]["steps"] == 2 and row["stages"][0]["seconds"] > 0
    assert (tmp_path / "out" / "job.json").is_file()


def test_img2img_job_reads_images_from_the_table(ray_cluster, tiny, tmp_path):
    images = [png_bytes((i * 40, 0, 0)) for i in range(4)]
    table = write_table(tmp_path / "t.parquet", {"prompt": PROMPTS[:4], "image": images})
    _, rows = run(job(table, str(tmp_path / "out"), [stage("img2img", tiny["img2img"], strength=0.7)]))
    check_outputs(rows, 4, (32, 32))
    assert rows[0]["stages"][0]["strength"] == 0.7


def test_inpaint_job_with_image_and_mask_paths(ray_cluster, tiny, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes())
    (tmp_path / "img" / "m.png").write_bytes(half_mask())
    # relative paths resolve against the table's folder
    table = write_table(
        tmp_path / "t.parquet", {"prompt": ["x", "y"], "image": ["img/a.png"] * 2, "mask": ["img/m.png"] * 2}
    )
    _, rows = run(job(table, str(tmp_path / "out"), [stage("inpaint", tiny["inpaint"])]))
    check_outputs(rows, 2, (32, 32))


def test_upscale_job(ray_cluster, tiny, tmp_path):
    table = write_table(tmp_path / "t.parquet", {"prompt": ["x", "y"], "image": [png_bytes(size=(16, 16))] * 2})
    _, rows = run(job(table, str(tmp_path / "out"), [stage("upscale", tiny["upscale"])], ))
    check_outputs(rows, 2, (64, 64))


def test_two_stage_chain_on_two_cpus_completes(ray_cluster, tiny, tmp_path):
    """txt2img -> upscale on ray.init(num_cpus=2): the case that hangs when actors hold every CPU."""
    assert ray_cluster.cluster_resources()["CPU"] == 2
    table = write_table(tmp_path / "prompts.parquet", {"prompt": PROMPTS})
    summary, rows = run(
        job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"]), stage("upscale", tiny["upscale"])])
    )
    assert summary.rows_ok == 6
    check_outputs(rows, 6, (128, 128))
    assert rows[0]["stage_chain"] == "txt2img>upscale"
    assert [s["kind"] for s in rows[0]["stages"]] == ["txt2img", "upscale"]
    assert rows[0]["stages"][1]["seed"] != rows[0]["stages"][0]["seed"] == rows[0]["seed"]
    # Waiting between steps is measured: never negative, and never more than the job took.
    assert all(0 <= row["queue_seconds"] < summary.wall_seconds for row in rows)


def test_txt2img_then_inpaint_with_mask_from_the_table(ray_cluster, tiny, tmp_path):
    table = write_table(tmp_path / "t.parquet", {"prompt": PROMPTS[:4], "mask": [half_mask()] * 4})
    _, rows = run(
        job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"]), stage("inpaint", tiny["inpaint"])])
    )
    check_outputs(rows, 4, (32, 32))


def test_same_job_twice_gives_byte_identical_images(ray_cluster, tiny, tmp_path):
    table = write_table(tmp_path / "prompts.parquet", {"prompt": PROMPTS, "id": [f"r{i}" for i in range(6)]})
    stages = [stage("txt2img", tiny["txt2img"]), stage("img2img", tiny["img2img"], strength=0.5)]
    _, first = run(job(table, str(tmp_path / "a"), stages, input={"path": table, "id_column": "id"}))
    _, second = run(job(table, str(tmp_path / "b"), stages, input={"path": table, "id_column": "id"}))
    assert [r["id"] for r in first] == [f"r{i}" for i in range(6)]
    assert [r["sha256"] for r in first] == [r["sha256"] for r in second]
    for a, b in zip(first, second):
        assert Path(a["image_uri"]).read_bytes() == Path(b["image_uri"]).read_bytes()
    assert len({r["sha256"] for r in first}) == 6  # different seeds per row


def test_row_seed_column_reproduces_a_seeded_diffusers_call(ray_cluster, tiny, tmp_path):
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    table = write_table(tmp_path / "t.parquet", {"prompt": ["a red circle", "a blue square"], "seed": [11, 12]})
    spec = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], batch_size=2)])
    _, rows = run(spec)
    pipe = StableDiffusionPipeline.from_pretrained(tiny["txt2img"])
    expected = pipe(
        ["a red circle", "a blue square"],
        num_inference_steps=2,
        width=32,
        height=32,
        generator=[torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)],
        output_type="pil",
    ).images
    by_prompt = {row["prompt"]: row for row in rows}
    from PIL import Image

    for prompt, image in zip(["a red circle", "a blue square"], expected):
        row = by_prompt[prompt]
        assert row["seed"] == (11 if "red" in prompt else 12)
        written = np.asarray(Image.open(row["image_uri"]))
        assert np.array_equal(written, np.asarray(image))


def test_each_actor_gets_its_own_gpu(ray_cluster, tiny, tmp_path):
    table = write_table(tmp_path / "t.parquet", {"prompt": [f"p{i}" for i in range(12)]})
    # Batches slow enough (40 steps, 64 px, about 1 s) that blocks queue up, as in real
    # generation: an actor holds at most 2, so the third block must go to the other one. A
    # 2-step tiny batch would end before the next block arrived, and one actor take all.
    one_gpu_each = stage("txt2img", tiny["txt2img"], gpus=1, replicas={"min": 2, "max": 2}, steps=40, width=64, height=64)
    spec = job(table, str(tmp_path / "out"), [one_gpu_each])
    _, rows = run(spec)
    devices = {row["stages"][0]["device"] for row in rows}
    assert devices == {"cpu (ray gpu 0)", "cpu (ray gpu 1)"}


def test_bad_rows_fail_alone_and_are_recorded(ray_cluster, tiny, tmp_path):
    table = write_table(
        tmp_path / "t.parquet", {"prompt": ["a", "b", "c"], "image": [png_bytes(), b"garbage", "missing.png"]}
    )
    summary, rows = run(job(table, str(tmp_path / "out"), [stage("img2img", tiny["img2img"])]))
    assert (summary.rows_ok, summary.rows_failed) == (1, 2)
    failed = sorted(row["error"] for row in rows if row["status"] == "failed")
    assert failed[0].startswith("image: cannot decode") and failed[1].startswith("image: cannot fetch")
    assert all(row["image_uri"] is None for row in rows if row["status"] == "failed")


def test_missing_column_is_refused_before_ray_work(tiny, tmp_path):
    table = write_table(tmp_path / "t.parquet", {"prompt": ["a"]})
    raw = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"]), stage("inpaint", tiny["inpaint"])])
    with pytest.raises(SpecError, match=r"input.columns.mask: column 'mask' is not in the input table"):
        run_job(parse_spec(raw))
    raw["stages"][1]["model"] = str(tmp_path / "nowhere")
    raw["stages"].pop(1)
    raw["stages"][0]["model"] = str(tmp_path / "nowhere")
    with pytest.raises(SpecError, match=r"stages.0.model: no diffusers model"):
        run_job(parse_spec(raw))


def test_a_run_that_fails_records_why_and_leaves_ray_datas_settings_as_it_found_them(ray_cluster, tiny, tmp_path):
    import ray.data

    from pipeline.io.commit_log import CommitLog
    from pipeline.resources import PlanError

    context = ray.data.DataContext.get_current()
    before = (context.execution_options.preserve_order, context.execution_no_progress_timeout_s)
    table = write_table(tmp_path / "t.parquet", {"prompt": ["a red circle"]})
    out = str(tmp_path / "out")
    # The stage asks for more GPUs than the cluster has: the plan refuses it once Ray is up.
    with pytest.raises(PlanError):
        run_job(parse_spec(job(table, out, [stage("txt2img", tiny["txt2img"], gpus=3)])))
    run_job(parse_spec(job(table, out, [stage("txt2img", tiny["txt2img"])], actor_start_timeout_s=77)))
    assert (context.execution_options.preserve_order, context.execution_no_progress_timeout_s) == before

    failed, succeeded = CommitLog(out).runs()
    assert (failed["status"], failed["exit_code"]) == ("error", 2) and failed["rows"] == {}
    assert failed["message"].startswith("PlanError: the stages' minimum replicas need 3 GPUs")
    assert (succeeded["status"], succeeded["rows"]["ok"], succeeded["message"]) == ("succeeded", 1, None)
    assert sorted(p.name for p in (tmp_path / "out" / "runs").iterdir()) == [
        f"{r['started_at'].replace('-', '').replace(':', '')}-{r['run_id']}.json" for r in (failed, succeeded)
    ]
