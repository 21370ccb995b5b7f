"""Rows that would exhaust a worker: sizes over the pixel budget fail alone, and a chunk that
kills its worker outright fails its rows after max_worker_deaths deaths, not the job."""

import os

import pytest
from conftest import job, png_bytes, read_metadata, stage, write_table

from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(400)


def test_a_stage_size_over_the_pixel_budget_is_refused_before_the_job(tmp_path):
    raw = job("in.parquet", "out", [stage("txt2img", "m", width=8192, height=8192)])
    with pytest.raises(SpecError, match=r"stages.0.width: 8192x8192 = 67108864 pixels is over output.max_pixels"):
        parse_spec(raw)
    raw["output"]["max_pixels"] = 8192 * 8192
    assert parse_spec(raw).output.max_pixels == 8192 * 8192


def test_rows_whose_override_or_input_is_over_the_pixel_budget_fail_alone(ray_cluster, tiny, tmp_path):
    table = write_table(tmp_path / "t.parquet", {
        "id": ["fine", "huge", "wide"],
        "prompt": ["a red circle"] * 3,
        "width": [None, 65536, 256],
        "height": [None, 65536, 64],
    })
    raw = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])],
              input={"path": table, "id_column": "id"}, output={"path": str(tmp_path / "out"), "max_pixels": 64 * 64})
    summary = run_job(parse_spec(raw))
    assert (summary.rows_ok, summary.rows_failed) == (1, 2)
    rows = {row["id"]: row for row in read_metadata(str(tmp_path / "out"))}
    assert rows["huge"]["error"] == (
        "stages.0 (txt2img): 65536x65536 = 4294967296 pixels is over output.max_pixels (4096); lower the row's "
        "width and height, or the input's size"
    )
    assert rows["wide"]["error"].startswith("stages.0 (txt2img): 256x64 = 16384 pixels is over")

    # An upscale's output is 4x its input: a 32x32 input makes 128x128, over a 64x64 budget.
    table = write_table(tmp_path / "u.parquet", {"id": ["small", "big"], "prompt": ["x", "x"],
                                                 "image": [png_bytes(size=(16, 16)), png_bytes(size=(32, 32))]})
    raw = job(table, str(tmp_path / "up"), [stage("upscale", tiny["upscale"])],
              input={"path": table, "id_column": "id"}, output={"path": str(tmp_path / "up"), "max_pixels": 64 * 64})
    run_job(parse_spec(raw))
    rows = {row["id"]: row for row in read_metadata(str(tmp_path / "up"))}
    assert rows["small"]["status"] == "ok" and (rows["small"]["width"], rows["small"]["height"]) == (64, 64)
    assert rows["big"]["error"].startswith("stages.0 (upscale): 128x128 = 16384 pixels is over output.max_pixels")


def test_a_chunk_that_kills_its_worker_fails_its_rows_and_the_job_goes_on(ray_cluster, tiny, tmp_path, monkeypatch):
    import cloudpickle

    from pipeline.stages import STAGES

    class KilledByPoison(STAGES["txt2img"].worker):
        """A worker whose process dies outright on one prompt, as one the kernel kills for memory."""

        def generate(self, group):
            if "poison" in group.prompts:
                os._exit(9)
            return super().generate(group)

    # The class travels to the actors by value (this test module is not importable there).
    cloudpickle.register_pickle_by_value(__import__(__name__))
    monkeypatch.setattr(STAGES["txt2img"], "worker", KilledByPoison)
    ids = ["a", "b", "c", "poison-row", "e", "f"]
    table = write_table(tmp_path / "t.parquet", {"id": ids, "prompt": ["x", "y", "z", "poison", "v", "w"]})
    raw = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])],
              input={"path": table, "id_column": "id"}, max_worker_deaths=1)
    summary = run_job(parse_spec(raw))
    # Chunks of 2 rows (batch_size 2): the poison row's chunk fails, with its batch mate.
    assert (summary.rows_ok, summary.rows_failed) == (4, 2)
    rows = {row["id"]: row for row in read_metadata(str(tmp_path / "out"))}
    assert {row_id for row_id, row in rows.items() if row["status"] == "failed"} == {"c", "poison-row"}
    assert rows["c"]["error"] == rows["poison-row"]["error"] == (
        "stages.0 (txt2img): the worker died 1 times while running this chunk of 2 rows (c, poison-row); rerun "
        "with --retry-failed, if need be with a smaller stages.0.batch_size"
    )

    # With a worker that survives the row, --retry-failed commits them, each row once.
    monkeypatch.undo()
    again = run_job(parse_spec(raw), retry_failed=True)
    assert (again.rows_ok, again.rows_failed, again.rows_skipped) == (2, 0, 4)
    rows = read_metadata(str(tmp_path / "out"))
    assert sorted(row["id"] for row in rows) == sorted(ids) and all(row["status"] == "ok" for row in rows)
