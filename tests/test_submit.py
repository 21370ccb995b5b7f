"""Jobs submitted to a real Ray head (`ray start --head` on loopback) through `synth submit` and
`synth schedule run --address`: the Jobs API, the exit codes, and a date fired twice at once."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import job, read_metadata, stage, write_table
from ray_head import start_head, stop_head

pytestmark = pytest.mark.timeout(600)

PROMPTS = [f"a {colour} circle" for colour in ("red", "green", "blue", "white")]


@pytest.fixture(scope="module")
def head():
    head = start_head()
    try:
        yield head
    finally:
        stop_head(head)


def synth(head, *args, timeout=400):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **head.env})


def synth_async(head, *args):
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **head.env})


def write_job(tmp_path, tiny, **fields) -> Path:
    table = write_table(tmp_path / "prompts.parquet", {"prompt": PROMPTS})
    spec = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])], **fields)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def image_digests(output: str) -> dict[str, str]:
    rows = read_metadata(output)
    assert len(rows) == len({row["id"] for row in rows}), "a row was written twice"
    for row in rows:
        assert row["status"] == "ok", row["error"]
        assert hashlib.sha256(Path(row["image_uri"]).read_bytes()).hexdigest() == row["sha256"]
    return {row["id"]: row["sha256"] for row in rows}


def test_submit_wait_runs_the_job_on_the_cluster_and_reports_it(head, tiny, tmp_path):
    spec = write_job(tmp_path, tiny)
    result = synth(head, "submit", str(spec), "--address", head.address, "--wait")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = result.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "4 rows ok, 0 failed" in result.stdout  # the driver's own summary, followed from its logs
    assert len(image_digests(str(tmp_path / "out"))) == 4

    status = synth(head, "status", job_id, "--address", head.address)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout and "exit code 0" in status.stdout
    assert "job test into" in status.stdout
    logs = synth(head, "logs", job_id, "--address", head.address)
    assert "4 rows ok, 0 failed" in logs.stdout
    stop = synth(head, "stop", job_id, "--address", head.address)
    assert stop.returncode == 0 and "had already ended" in stop.stdout


def test_a_bad_job_is_refused_on_the_submitting_machine(head, tiny, tmp_path):
    spec = write_job(tmp_path, tiny)
    before = _job_count(head)
    result = synth(head, "submit", str(spec), "--set", "input.columns.prompt=caption", "--address", head.address)
    assert result.returncode == 2
    assert "caption" in result.stderr
    assert _job_count(head) == before, "a job that preflight refuses must not reach the cluster"


def _job_count(head) -> int:
    code = "from ray.job_submission import JobSubmissionClient as C; import sys; print(len(C(sys.argv[1]).list_jobs()))"
    answer = subprocess.run([sys.executable, "-c", code, head.address], capture_output=True, text=True,
                            env={**os.environ, **head.env}, timeout=60)
    assert answer.returncode == 0, answer.stderr[-2000:]
    return int(answer.stdout.strip())


def test_the_clusters_verdict_is_the_exit_code_and_unknown_jobs_are_named(head, tiny, tmp_path):
    # Submitted unchecked, an input the cluster cannot read fails there: synth run's exit 2
    # comes back through --wait, with its reason in the followed logs.
    spec = write_job(tmp_path, tiny)
    result = synth(head, "submit", str(spec), "--set", f"input.path={tmp_path}/missing.parquet",
                   "--address", head.address, "--wait", "--skip-preflight")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "missing.parquet" in result.stdout

    result = synth(head, "status", "raysubmit_nosuchjob", "--address", head.address)
    assert result.returncode == 2 and "raysubmit_nosuchjob" in result.stderr


def write_schedule(tmp_path, tiny) -> Path:
    for date in ("2026-11-23", "2026-11-24"):
        (tmp_path / "prompts" / f"date={date}").mkdir(parents=True)
        write_table(tmp_path / "prompts" / f"date={date}" / "part.parquet", {"prompt": PROMPTS})
    template = job(f"{tmp_path}/prompts/date={{date}}/part.parquet", f"{tmp_path}/generated/date={{date}}",
                   [stage("txt2img", tiny["txt2img"])], name="nightly-{date_compact}")
    schedule = {"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Berlin", "wait_for_lease_s": 300,
                "job": template}
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(schedule))
    return path


def test_a_date_fired_twice_at_once_writes_its_partition_once_and_a_backfill_runs_each_date_once(
        head, tiny, tmp_path):
    schedule = write_schedule(tmp_path, tiny)
    command = ("schedule", "run", str(schedule), "--date", "2026-11-23", "--address", head.address, "--wait")
    firings = [synth_async(head, *command) for _ in range(2)]
    try:
        outputs = [firing.communicate(timeout=300) for firing in firings]
    finally:
        for firing in firings:  # a hung one must not outlive the test
            firing.kill()
            firing.wait()
    codes = [firing.returncode for firing in firings]
    logs = "\n".join(out + err for out, err in outputs)
    # Both end well: one writes the partition; the other waited on its lease (or came after
    # it) and found every row committed.
    assert codes == [0, 0], logs[-5000:]
    assert sum("4 rows ok, 0 failed" in out for out, _ in outputs) == 1, logs[-5000:]
    assert sum("0 rows ok, 0 failed, 4 already done" in out for out, _ in outputs) == 1, logs[-5000:]
    first = image_digests(f"{tmp_path}/generated/date=2026-11-23")
    assert len(first) == 4

    # A backfill over both dates: the done date has nothing left, the other runs once.
    result = synth(head, "schedule", "run", str(schedule), "--from", "2026-11-23", "--to", "2026-11-24",
                   "--address", head.address, "--wait")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 dates, 2 succeeded" in result.stdout
    assert image_digests(f"{tmp_path}/generated/date=2026-11-23") == first
    second = image_digests(f"{tmp_path}/generated/date=2026-11-24")
    assert set(second) == set(first)  # same prompts, same ids; each date its own partition
