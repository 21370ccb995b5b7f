"""The `synth` command as a user runs it: real subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from conftest import job, png_bytes, read_metadata, stage, write_table

pytestmark = pytest.mark.timeout(400)


def synth(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_demo_draws_every_prompt_with_the_builtin_model(ray_cluster, tmp_path):
    from pipeline.shapes import judge

    # RAY_ADDRESS names this test session's cluster: the demo starts a Ray of its own anyway,
    # as its files are on local disk
    address = ray_cluster.get_runtime_context().gcs_address
    result = synth("demo", str(tmp_path / "demo"), env={"RAY_ADDRESS": address})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Started a local Ray instance" in result.stderr  # Ray's words; it joined none
    assert "36 rows ok, 0 failed" in result.stdout
    rows = read_metadata(str(tmp_path / "demo" / "output"))
    assert len(rows) == 36 and all(row["status"] == "ok" for row in rows)
    assert all((row["width"], row["height"]) == (32, 32) for row in rows)
    assert all(row["models"] == ["synth:shapes"] for row in rows)
    assert (tmp_path / "demo" / "job.yaml").is_file()
    # Recognisable pictures, not noise: most read back as their prompt (the semantic tests
    # hold the exact pass marks).
    hits = 0
    for row in rows:
        words = row["prompt"].split()
        reading = judge.read_image(np.asarray(Image.open(row["image_uri"]).convert("RGB")))
        hits += reading.matches(words[1], words[2], words[5])
    assert hits >= 0.75 * len(rows)
    grid = Image.open(tmp_path / "demo" / "grid.png")
    assert grid.size == (6 * 100 + 4, 6 * 100 + 4)
    # The README shows docs/demo-grid.png as the sheet the demo makes. Each row's seed comes
    # from its named id, so the sheet is the same on this machine type; a change of seeds
    # or sampling moves every pixel (a mean difference of about 40).
    # (On a GPU the demo runs in bfloat16: other pictures, so no comparison there.)
    if not torch.cuda.is_available():
        committed = Image.open(Path(__file__).parents[1] / "docs" / "demo-grid.png").convert("RGB")
        difference = np.abs(np.asarray(grid.convert("RGB"), np.int16) - np.asarray(committed, np.int16))
        assert difference.mean() < 4, f"the demo's sheet differs from docs/demo-grid.png by {difference.mean():.1f}"


def test_run_on_a_cluster_at_ray_address_with_overrides(ray_cluster, tiny, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    table = write_table(tmp_path / "t.parquet", {"prompt": ["a", "b", "c"], "image": [png_bytes()] * 2 + [b"junk"]})
    spec = job(table, str(tmp_path / "out"), [stage("img2img", tiny["img2img"], steps=30)])
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))

    result = synth("run", str(tmp_path / "job.yaml"), "--set", "stages.0.steps=2", env={"RAY_ADDRESS": address})
    # one undecodable image out of three is above the default max_failed_fraction of 0
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 rows ok, 1 failed" in result.stdout
    assert "synth: stage 0 img2img: 1-" in result.stdout  # progress goes through logging, at info
    assert "1 of 3 committed rows failed" in result.stderr and "above max_failed_fraction" in result.stderr
    rows = read_metadata(str(tmp_path / "out"))
    assert {row["stages"][0]["steps"] for row in rows if row["status"] == "ok"} == {2}

    # a plain rerun has nothing left to do, and still reports the committed failure
    result = synth("run", str(tmp_path / "job.yaml"), "--set", "stages.0.steps=2", env={"RAY_ADDRESS": address})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "0 rows ok, 0 failed, 3 already done" in result.stdout
    assert "1 of 3 committed rows failed" in result.stderr
    assert "nothing left to do" in result.stdout and "joining the Ray cluster" not in result.stdout

    result = synth(
        "--log-level", "warning", "run", str(tmp_path / "job.yaml"), "--set", "stages.0.steps=2",
        "--set", "max_failed_fraction=0.5", env={"RAY_ADDRESS": address},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage 0" not in result.stdout and "0 rows ok, 0 failed, 3 already done" in result.stdout

    # resuming with other generation parameters would mix two jobs in one output: refused
    result = synth("run", str(tmp_path / "job.yaml"), "--set", "stages.0.steps=3", env={"RAY_ADDRESS": address})
    assert result.returncode == 2
    assert "holds the results of a different job (stages.0.steps was 2, is now 3)" in result.stderr

    # Each run left a record of its own; the refused one wrote nothing into this output.
    from pipeline.io.commit_log import CommitLog

    runs = CommitLog(str(tmp_path / "out")).runs()
    assert [(r["status"], r["exit_code"]) for r in runs] == [("failed_rows", 1), ("failed_rows", 1), ("succeeded", 0)]
    assert runs[0]["rows"] == {"ok": 2, "failed": 1, "skipped": 0, "skipped_failed": 0}
    assert runs[1]["rows"] == {"ok": 0, "failed": 0, "skipped": 3, "skipped_failed": 1}
    assert runs[0]["spec_sha256"] == runs[1]["spec_sha256"] != runs[2]["spec_sha256"]  # max_failed_fraction
    assert all(r["host"] and r["wall_seconds"] > 0 and r["ended_at"] for r in runs)
    # the reruns found every row committed and ended in the driver, without Ray
    assert runs[0]["ray_job_id"] and runs[1]["ray_job_id"] is runs[2]["ray_job_id"] is None
    assert len({r["run_id"] for r in runs}) == 3 and runs[0]["first_image_seconds"] > 0


def test_run_with_missing_input_exits_2_naming_the_field(tmp_path, tiny):
    spec = job(str(tmp_path / "nothing.parquet"), str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])])
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    result = synth("run", str(tmp_path / "job.yaml"), timeout=60)
    assert result.returncode == 2
    assert "input.path: no Parquet files" in result.stderr


def test_tiny_model_command_writes_a_loadable_safetensors_model(tmp_path):
    result = synth("tiny-model", str(tmp_path / "m"), "--kind", "inpaint", timeout=120)
    assert result.returncode == 0, result.stderr
    files = {p.name for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert "model_index.json" in files and "diffusion_pytorch_model.safetensors" in files
    assert not any(name.endswith((".bin", ".ckpt", ".pt")) for name in files)


def test_train_tiny_takes_its_step_counts_from_the_command_line(tmp_path):
    import json

    result = synth("train-tiny", str(tmp_path / "model"), "--vae-steps", "2", "--unet-steps", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "synth: unet step 2/2" in result.stdout
    config = json.loads((tmp_path / "model" / "training.json").read_text())["config"]
    assert (config["vae_steps"], config["unet_steps"], config["threads"]) == (2, 2, 1)
    assert (tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_eval_tiny_refuses_a_sample_count_below_one():
    result = synth("eval-tiny", "--samples", "0")
    assert result.returncode == 2 and "--samples" in result.stderr


def test_sigterm_stops_a_run_that_records_it_releases_the_output_and_resumes(ray_cluster, tiny, tmp_path):
    import json
    import signal
    import time

    from pipeline.io.commit_log import CommitLog

    address = ray_cluster.get_runtime_context().gcs_address
    table = write_table(tmp_path / "t.parquet", {"id": [f"r{i:02d}" for i in range(16)], "prompt": ["x"] * 16})
    spec = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], steps=20, width=64, height=64)],
               input={"path": table, "id_column": "id"})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "pipeline", "run", str(tmp_path / "job.yaml")]
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "RAY_ADDRESS": address})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "out" / "metadata").glob("*.parquet")):
        time.sleep(0.2)
    running.send_signal(signal.SIGTERM)
    _, stderr = running.communicate(timeout=120)
    assert running.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "synth: stopped; run the same command again to resume"
    [record] = CommitLog(str(tmp_path / "out")).runs()
    assert (record["status"], record["exit_code"]) == ("stopped", 130)
    assert all(json.loads(lease.read_text())["released"] for lease in (tmp_path / "out" / "lease").glob("*.json"))
    # the output is free at once, and the rerun completes it
    result = synth("run", str(tmp_path / "job.yaml"), env={"RAY_ADDRESS": address})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_metadata(str(tmp_path / "out"))) == 16
