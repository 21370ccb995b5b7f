"""Storage that fails mid-run: a full disk or a bucket that disappears ends the job with
exit 2 and one line naming output.path, leaves no temporary file, and keeps what was committed."""

import os
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import job, read_metadata, stage, write_table

from pipeline.io.commit_log import CommitLog
from pipeline.runner import run_job
from pipeline.spec import parse_spec
from pipeline.storage import OutputWriteError

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB filesystem (tmpfs), which a 24-row job fills."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def temporary_files(folder) -> list[str]:
    return [name for _, _, names in os.walk(folder) for name in names if ".tmp-" in name]


def test_a_full_disk_ends_the_job_with_exit_2_and_one_line(ray_cluster, tiny, tmp_path, small_disk):
    rows = 24
    table = write_table(tmp_path / "t.parquet", {"id": [f"r{i:02d}" for i in range(rows)], "prompt": ["x"] * rows})
    out = small_disk / "out"
    spec = job(table, str(out), [stage("txt2img", tiny["txt2img"], width=64, height=64)],
               input={"path": table, "id_column": "id"})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    address = ray_cluster.get_runtime_context().gcs_address
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "job.yaml")], capture_output=True,
                            text=True, timeout=240, env={**os.environ, "RAY_ADDRESS": address})
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"synth: error: output.path: cannot write to {out}: [Errno 28] No space left on device")
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    # nothing half-written stays; what was committed before the disk filled reads back whole
    assert temporary_files(small_disk) == []
    committed = read_metadata(str(out))
    assert len(committed) < rows and all(os.path.getsize(row["image_uri"]) == row["bytes"] for row in committed)


def test_a_bucket_that_disappears_mid_run_ends_the_job_naming_the_output(ray_cluster, tiny, tmp_path, s3):
    bucket, options, fs = s3
    rows = 16
    table = write_table(tmp_path / "t.parquet", {"id": [f"r{i:02d}" for i in range(rows)], "prompt": ["x"] * rows})
    out = f"{bucket}/out"
    raw = job(table, out, [stage("txt2img", tiny["txt2img"], steps=10, width=64, height=64)],
              input={"path": table, "id_column": "id"}, storage_options=options)

    def remove_the_bucket_after_the_first_commit():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not fs.glob(f"{out}/metadata/*.parquet"):
            time.sleep(0.2)
        while time.monotonic() < deadline:
            try:  # the run keeps writing: a PUT between the listing and the delete leaves it non-empty
                fs.rm(bucket, recursive=True)
                return
            except OSError:
                fs.invalidate_cache()

    remover = threading.Thread(target=remove_the_bucket_after_the_first_commit)
    remover.start()
    with pytest.raises(OutputWriteError, match=rf"^output.path: cannot write to {out}: .*(NoSuchBucket|bucket)"):
        run_job(parse_spec(raw))
    remover.join()


def test_a_stale_temporary_file_from_a_killed_run_is_swept_by_the_next(ray_cluster, tiny, tmp_path):
    table = write_table(tmp_path / "t.parquet", {"prompt": ["a red circle"]})
    out = tmp_path / "out"
    (out / "images" / "ab").mkdir(parents=True)
    stale = out / "images" / "ab" / ".ab12.png.tmp-4242"
    stale.write_bytes(b"")  # the zero-byte file a writer killed mid-write leaves
    run_job(parse_spec(job(table, str(out), [stage("txt2img", tiny["txt2img"])])))
    assert not stale.exists() and temporary_files(out) == []
    assert CommitLog(str(out)).runs()[0]["status"] == "succeeded"
