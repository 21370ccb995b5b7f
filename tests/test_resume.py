"""What a resume may and may not do: one writer per output, one model revision per output,
and a rerun with nothing left to do that ends without Ray."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import job, read_metadata, stage, upload_folder, write_table

from pipeline.io.commit_log import CommitLog
from pipeline.keys import derive_seed
from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(400)


def table_of(tmp_path, rows=4):
    ids = [f"row-{i}" for i in range(rows)]
    return write_table(tmp_path / "in.parquet", {"id": ids, "prompt": [f"prompt {i}" for i in range(rows)]})


def spec_of(table, out, model, **fields):
    return job(table, str(out), [stage("txt2img", model)], input={"path": table, "id_column": "id"}, **fields)


def flip_last_byte(file) -> None:
    data = bytearray(Path(file).read_bytes())
    data[-1] ^= 0xFF
    Path(file).write_bytes(bytes(data))


def synth_run(*args, env=None):
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", "run", *args], capture_output=True, text=True,
                          timeout=300, env=environment)


def test_a_resume_with_the_local_model_overwritten_is_refused_unless_allowed(ray_cluster, tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny["txt2img"], model)
    out = tmp_path / "out"
    raw = spec_of(table_of(tmp_path), out, str(model))
    assert run_job(parse_spec(raw)).rows_ok == 4
    pinned = json.loads((out / "models.json").read_text())["stages"][0]["revision"]
    assert {row["stages"][0]["model_revision"] for row in read_metadata(str(out))} == {pinned}

    # A kill left the second chunk uncommitted; then a fine-tune was saved over the weights.
    next(iter(sorted((out / "metadata").glob("*.parquet")))).unlink()
    flip_last_byte(next(model.glob("unet/*.safetensors")))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    refused = synth_run(str(tmp_path / "job.yaml"))
    assert refused.returncode == 2, refused.stderr[-2000:]
    message = refused.stderr
    assert f"stages.0.model: {model} now resolves to revision files:" in message
    assert f"were made with revision {pinned}" in message and "--allow-model-change" in message
    assert "Started a local Ray instance" not in message  # refused before any cluster or GPU

    summary = run_job(parse_spec(raw), allow_model_change=True)
    assert (summary.rows_ok, summary.rows_skipped) == (2, 2)
    now = json.loads((out / "models.json").read_text())
    assert now["stages"][0]["revision"] != pinned
    [change] = now["history"]
    assert (change["stage"], change["from"], change["to"]) == (0, pinned, now["stages"][0]["revision"])
    assert change["reason"] == "--allow-model-change"
    assert CommitLog(str(out)).runs()[-1]["model_changes"][0]["to"] == now["stages"][0]["revision"]
    assert {row["stages"][0]["model_revision"] for row in read_metadata(str(out))} == {
        pinned, now["stages"][0]["revision"]}  # what the flag allowed, and the record says


def test_a_resume_with_the_s3_model_overwritten_is_refused(ray_cluster, tiny, s3, tmp_path):
    bucket, options, fs = s3
    model = f"{bucket}/models/txt2img"
    upload_folder(fs, Path(tiny["txt2img"]), model)
    raw = spec_of(table_of(tmp_path, rows=2), f"{bucket}/out", model, storage_options=options)
    assert run_job(parse_spec(raw)).rows_ok == 2
    weights = next(Path(tiny["txt2img"]).glob("unet/*.safetensors"))
    changed = bytearray(weights.read_bytes())
    changed[-1] ^= 0xFF
    fs.pipe_file(f"{model}/unet/{weights.name}", bytes(changed))  # the prefix is overwritten
    with pytest.raises(SpecError, match=rf"stages.0.model: {model} now resolves to revision files:\w+, but the "
                                        r"rows committed in .* were made with revision files:\w+"):
        run_job(parse_spec(raw))


def test_two_runs_of_different_jobs_into_one_output_at_once_one_is_refused(ray_cluster, tiny, tmp_path):
    table = table_of(tmp_path)
    out = tmp_path / "out"
    start = threading.Barrier(2)
    outcomes = {}

    def run(seed):
        start.wait()
        try:
            outcomes[seed] = run_job(parse_spec(spec_of(table, out, tiny["txt2img"], seed=seed)))
        except SpecError as error:
            outcomes[seed] = error

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (7, 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    [winner] = [seed for seed, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    [refused] = [outcome for outcome in outcomes.values() if isinstance(outcome, Exception)]
    assert "holds the results of a different job (seed was" in str(refused) or "being written by another run" in str(
        refused), refused
    assert outcomes[winner].rows_ok == 4
    assert json.loads((out / "job.json").read_text())["seed"] == winner
    rows = read_metadata(str(out))
    assert [row["seed"] for row in rows] == [derive_seed(winner, row["id"]) for row in rows]  # one job's rows only


def test_two_runs_of_one_job_commit_each_row_once_and_a_waiting_rerun_ends_without_ray(ray_cluster, tiny, tmp_path):
    from pipeline import storage
    from pipeline.io.lease import Holder, create_exclusive

    table = table_of(tmp_path)
    out = tmp_path / "out"
    raw = spec_of(table, out, tiny["txt2img"])
    start = threading.Barrier(2)
    summaries = []

    def run():
        start.wait()
        summaries.append(run_job(parse_spec(raw), wait_for_lease_s=240))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    # One did the work; the other waited for it, then found nothing left to do.
    assert sorted((s.rows_ok, s.rows_skipped) for s in summaries) == [(0, 4), (4, 0)]
    rows = read_metadata(str(out))
    assert [row["id"] for row in rows] == [f"row-{i}" for i in range(4)]  # each row committed once
    for row in rows:
        assert row["status"] == "ok" and hashlib.sha256(Path(row["image_uri"]).read_bytes()).hexdigest() == row["sha256"]

    # A run holds the lease (this test, renewing it by hand) when `synth run` starts: it
    # waits; then the holder dies (stops renewing), its lease goes stale after 3 s, and the
    # waiting run takes it over and finds nothing to do, without starting Ray.
    fs, root = storage.filesystem(str(out))
    path = storage.join(root, "lease", "000000000009.json")
    holder = Holder("by-hand", "elsewhere", 1, time.time(), time.time(), timeout_s=3)
    assert create_exclusive(fs, path, holder.to_json()) == "created"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(tmp_path / "job.yaml"), "--wait-for-lease", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**environment, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(waiting.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("waiting up to 120 s" in line for line in lines) and time.monotonic() < deadline:
        assert waiting.poll() is None, "".join(lines)[-3000:]
        holder.renewed_unix = time.time()
        storage.write_bytes_atomic(fs, path, holder.to_json())
        time.sleep(0.3)
    assert waiting.wait(timeout=120) == 0
    reader.join(timeout=10)
    output = "".join(lines)
    assert "is being written by run by-hand on host elsewhere" in output
    assert "taking over the lease" in output and "it is stale" in output
    assert "0 rows ok, 0 failed, 4 already done" in output
    assert "Started a local Ray instance" not in output and "joining the Ray cluster" not in output
    last = CommitLog(str(out)).runs()[-1]
    assert (last["status"], last["ray_job_id"], last["rows"]["skipped"]) == ("succeeded", None, 4)
    assert json.loads(fs.cat_file(storage.join(root, "lease", "000000000010.json")))["released"]
