"""Resume without duplicates, per-row errors, faults survived, hostile input refused."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import half_mask, job, png_bytes, read_metadata, stage, write_table

from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(400)

ROWS = 24


def prompts_table(tmp_path):
    return write_table(
        tmp_path / "prompts.parquet",
        {"id": [f"row-{i:02d}" for i in range(ROWS)], "prompt": [f"prompt number {i}" for i in range(ROWS)]},
    )


def slow_job(table, out, tiny):
    # 12 chunks of 2 rows, each slow enough (20 steps, 64 px) to be interrupted mid-run; a
    # killed run's lease goes stale after 4 s
    return job(
        table,
        str(out),
        [stage("txt2img", tiny["txt2img"], steps=20, width=64, height=64)],
        input={"path": table, "id_column": "id"},
        output={"path": str(out), "lease_timeout_s": 4, "lease_renew_s": 1},
    )


def metadata_files(out: Path) -> list[Path]:
    return sorted((out / "metadata").glob("*.parquet")) if (out / "metadata").exists() else []


def assert_same_as_clean(rows, clean_rows):
    ids = [row["id"] for row in rows]
    assert ids == sorted(set(ids)) == [row["id"] for row in clean_rows]  # each row exactly once
    for row, clean in zip(rows, clean_rows):
        assert row["status"] == "ok", row["error"]
        assert row["sha256"] == clean["sha256"]
        assert Path(row["image_uri"]).read_bytes() == Path(clean["image_uri"]).read_bytes()


@pytest.fixture(scope="module")
def clean_run(ray_cluster, tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    table = prompts_table(tmp)
    summary = run_job(parse_spec(slow_job(table, tmp / "out", tiny)))
    assert summary.rows_ok == ROWS
    return table, read_metadata(str(tmp / "out"))


def test_driver_sigkill_then_rerun_commits_each_row_once_with_clean_bytes(ray_cluster, tiny, tmp_path, clean_run):
    table, clean_rows = clean_run
    out = tmp_path / "out"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(slow_job(table, out, tiny)))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(tmp_path / "job.yaml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not metadata_files(out) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    committed_at_kill = len(metadata_files(out))
    assert 0 < committed_at_kill < ROWS // 2, "the kill should land mid-run"
    time.sleep(2)  # let the cluster reap the dead driver's tasks

    # The dead driver's lease is still fresh: the rerun waits until it is stale, then takes it over.
    [killed_lease] = (out / "lease").glob("*.json")
    summary = run_job(parse_spec(slow_job(table, out, tiny)), wait_for_lease_s=60)
    [lease] = (out / "lease").glob("*.json")
    assert int(lease.stem) == int(killed_lease.stem) + 1 and json.loads(lease.read_text())["released"]
    assert summary.rows_skipped >= 2 * committed_at_kill - 2
    assert summary.rows_skipped + summary.rows_ok == ROWS
    assert_same_as_clean(read_metadata(str(out)), clean_rows)
    assert len(list((out / "images").rglob("*.png"))) == ROWS

    again = run_job(parse_spec(slow_job(table, out, tiny)))
    assert (again.rows_ok, again.rows_skipped) == (0, ROWS)  # nothing left to do


def sigkill_mid_run_then_resume(ray_cluster, tiny, tmp_path, clean_run, layout: str):
    """Run the slow job in `layout` as `synth run` in a subprocess, SIGKILL its driver after
    its first commit, rerun it in-process; check each row is committed once, and return the
    output folder and its metadata rows."""
    table, clean_rows = clean_run
    out = tmp_path / "out"
    raw = slow_job(table, out, tiny)
    raw["output"]["layout"] = layout
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(tmp_path / "job.yaml")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not metadata_files(out) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 0 < len(metadata_files(out)) < ROWS // 2, "the kill should land mid-run"
    time.sleep(2)

    summary = run_job(parse_spec(raw), wait_for_lease_s=60)
    assert summary.rows_skipped + summary.rows_ok == ROWS and summary.rows_skipped >= 2
    rows = read_metadata(str(out))
    assert [row["id"] for row in rows] == [row["id"] for row in clean_rows]  # each row once
    return out, rows


def test_a_sigkilled_webdataset_job_resumes_with_the_bytes_of_a_clean_run(ray_cluster, tiny, tmp_path, clean_run):
    import hashlib
    import tarfile

    clean_rows = clean_run[1]
    out, rows = sigkill_mid_run_then_resume(ray_cluster, tiny, tmp_path, clean_run, "webdataset")
    images = {}
    for shard in (out / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            images.update({member.name: tar.extractfile(member).read() for member in tar if member.name.endswith(".png")})
    for row, clean in zip(rows, clean_rows):  # the images of a clean run of the files layout, byte for byte
        assert hashlib.sha256(images[row["image_uri"].rsplit("#", 1)[1]]).hexdigest() == row["sha256"] == clean["sha256"]
    assert len(images) == ROWS


def clean_parquet_shards(clean_rows, shard_rows: int) -> dict[str, bytes]:
    """The Parquet shard files a clean run of the job with output.layout parquet writes: the
    layout's own writer over the clean (files layout) run's images and metadata, shard by
    shard (consecutive rows of the input, which is in id order), named as the writer names them."""
    import pyarrow as pa

    from pipeline.io.commit_log import shard_stem
    from pipeline.io.layouts import SAMPLE_FIELDS, parquet_shard, shard_file
    from pipeline.io.writer import metadata_schema
    from pipeline.keys import image_key

    schema = pa.schema([metadata_schema().field(name) for name in SAMPLE_FIELDS])
    files = {}
    for shard, first in enumerate(range(0, len(clean_rows), shard_rows)):
        rows = clean_rows[first:first + shard_rows]
        metadata = pa.Table.from_pylist([{name: row[name] for name in SAMPLE_FIELDS} for row in rows], schema=schema)
        data, _ = parquet_shard(metadata, [image_key(row["id"], row["format"]) for row in rows],
                                [Path(row["image_uri"]).read_bytes() for row in rows])
        files[shard_file("parquet", shard_stem(shard, [row["id"] for row in rows]))] = data
    return files


def test_a_sigkilled_parquet_job_resumes_with_the_files_of_a_clean_run(ray_cluster, tiny, tmp_path, clean_run):
    import hashlib

    import datasets

    clean_rows = clean_run[1]
    out, rows = sigkill_mid_run_then_resume(ray_cluster, tiny, tmp_path, clean_run, "parquet")
    shard_rows = json.loads((out / "shards.json").read_text())["shard_rows"]
    written = {f"data/{path.name}": path.read_bytes() for path in (out / "data").glob("*.parquet")}
    assert written == clean_parquet_shards(clean_rows, shard_rows)  # byte for byte, no file more or less

    loaded = datasets.load_dataset("parquet", data_files=sorted(str(out / name) for name in written), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert sorted(loaded["id"]) == [row["id"] for row in clean_rows]
    assert loaded[0]["image"].size == (64, 64)
    raw_images = loaded.cast_column("image", datasets.Image(decode=False))
    assert sorted(hashlib.sha256(item["image"]["bytes"]).hexdigest() for item in raw_images) == sorted(
        row["sha256"] for row in clean_rows)


def _stage_actor_pids(marker: str) -> list[int]:
    import psutil

    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if marker in cmdline and "MapWorker" in cmdline:
            pids.append(process.info["pid"])
    return pids


def test_stage_actor_killed_mid_batch_is_restarted_and_the_job_completes(ray_cluster, tiny, tmp_path, clean_run):
    table, clean_rows = clean_run
    out = tmp_path / "out"
    result = {}
    runner = threading.Thread(
        target=lambda: result.update(summary=run_job(parse_spec(slow_job(table, out, tiny))))
    )
    runner.start()
    deadline = time.monotonic() + 180
    while not metadata_files(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = _stage_actor_pids("Txt2ImgWorker")
    assert pids, "no stage actor process found"
    os.kill(pids[0], signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive()
    assert result["summary"].rows_ok == ROWS
    assert_same_as_clean(read_metadata(str(out)), clean_rows)


def test_job_completes_through_injected_s3_faults(ray_cluster, tiny, s3, s3_endpoint, tmp_path):
    from faultproxy import FaultProxy

    bucket, options, fs = s3
    prompts = [f"prompt {i}" for i in range(6)]
    write_table(f"{bucket}/in/prompts.parquet", {"prompt": prompts}, options)
    with FaultProxy(s3_endpoint, slowdown_every=4, reset_every=7) as proxy:
        through_proxy = {"client_kwargs": {"endpoint_url": proxy.url}}
        raw = job(f"{bucket}/in/prompts.parquet", f"{bucket}/out", [stage("txt2img", tiny["txt2img"])])
        raw["storage_options"] = through_proxy
        summary = run_job(parse_spec(raw))
        faults = dict(proxy.faults)
    assert faults["slowdown"] > 0 and faults["reset"] > 0, faults
    assert (summary.rows_ok, summary.rows_failed) == (6, 0)
    rows = read_metadata(f"{bucket}/out", options)
    assert sorted(row["prompt"] for row in rows) == prompts
    assert len(fs.find(f"{bucket}/out/images")) == 6


def test_bad_rows_fail_alone_with_named_errors_and_retry_failed_reruns_only_them(ray_cluster, tiny, tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes())
    long_prompt = "a very long prompt " * 40
    table = write_table(
        tmp_path / "t.parquet",
        {
            "id": ["good", "long", "empty", "garbage", "missing", "mask", "bomb", "steps"],
            "prompt": ["fine", long_prompt, "  ", "x", "x", "x", "x", "x"],
            "image": [png_bytes(), png_bytes(), png_bytes(), b"\x89PNG garbage", "nowhere.png", png_bytes(),
                      png_bytes(size=(64, 64)), png_bytes()],
            "mask": [half_mask()] * 5 + [half_mask(size=(16, 16)), half_mask(), half_mask()],
            "steps": [None] * 7 + [0],
        },
    )
    raw = job(table, str(tmp_path / "out"), [stage("inpaint", tiny["inpaint"])],
              input={"path": table, "id_column": "id", "max_image_pixels": 32 * 32})
    summary = run_job(parse_spec(raw))
    assert (summary.rows_ok, summary.rows_failed) == (2, 6)
    rows = {row["id"]: row for row in read_metadata(str(tmp_path / "out"))}
    assert rows["good"]["status"] == rows["long"]["status"] == "ok"
    assert rows["long"]["stages"][0]["prompt_truncated"] is True
    assert rows["good"]["stages"][0]["prompt_truncated"] is False
    expected = {
        "empty": "prompt: the prompt is empty",
        "garbage": "image: cannot decode the image",
        "missing": "image: cannot fetch",
        "mask": "mask: its size 16x16 differs",
        "bomb": "image: cannot decode the image: 64x64 = 4096 pixels is over input.max_image_pixels (1024)",
        "steps": "steps: 0 must be between 1 and 1000",
    }
    for row_id, message in expected.items():
        assert rows[row_id]["status"] == "failed" and rows[row_id]["error"].startswith(message), rows[row_id]["error"]

    # Fix two inputs, then --retry-failed: only failed rows run, none appears twice.
    (tmp_path / "nowhere.png").write_bytes(png_bytes())
    again = run_job(parse_spec(raw), retry_failed=True)
    assert again.rows_skipped == 2 and again.rows_ok == 1 and again.rows_failed == 5
    rows = read_metadata(str(tmp_path / "out"))
    assert sorted(row["id"] for row in rows) == sorted([*expected, "good", "long"]) and len(rows) == 8
    assert {row["id"]: row["status"] for row in rows}["missing"] == "ok"


def test_nan_output_fails_the_row(ray_cluster, tiny, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan-model"
    shutil.copytree(tiny["txt2img"], model)
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.conv_out.bias"] = torch.full_like(state["decoder.conv_out.bias"], float("nan"))
    save_file(state, weights)
    table = write_table(tmp_path / "t.parquet", {"prompt": ["a", "b"]})
    summary = run_job(parse_spec(job(table, str(tmp_path / "out"), [stage("txt2img", str(model))])))
    assert summary.rows_failed == 2
    for row in read_metadata(str(tmp_path / "out")):
        assert row["error"] == "stages.0 (txt2img): the model produced NaN pixels"
        assert row["image_uri"] is None


def test_a_stage_that_can_never_be_placed_fails_after_actor_start_timeout_s(ray_cluster, tiny, tmp_path):
    from ray.data.exceptions import ExecutionTimeoutError

    from pipeline.cli import _cluster_error

    # Another workload holds both of the cluster's GPUs: the stage's actor is never placed,
    # although the plan (made from the cluster's totals) fits.
    @ray_cluster.remote(num_gpus=2, num_cpus=0)
    class HoldsTheGpus:
        def ready(self):
            return True

    holder = HoldsTheGpus.remote()
    ray_cluster.get(holder.ready.remote())
    try:
        raw = job(prompts_table(tmp_path), str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], steps=2, gpus=1)],
                  actor_start_timeout_s=5)
        started = time.monotonic()
        with pytest.raises(ExecutionTimeoutError) as caught:
            run_job(parse_spec(raw))
        assert time.monotonic() - started < 120  # failed, instead of waiting for the GPU forever
        message = _cluster_error(caught.value)
        assert "actor_start_timeout_s" in message and "still running:" in message and "Txt2ImgWorker" in message
        assert metadata_files(tmp_path / "out") == []
    finally:
        ray_cluster.kill(holder)


def test_hostile_ids_never_escape_the_output_prefix(ray_cluster, tiny, tmp_path):
    hostile = ["../../escape", "/etc/passwd", "%2e%2e%2fx", "a\x00b", "..", "C:\\windows"]
    table = write_table(tmp_path / "t.parquet", {"id": hostile, "prompt": ["p"] * len(hostile)})
    out = tmp_path / "nested" / "out"
    raw = job(table, str(out), [stage("txt2img", tiny["txt2img"])], input={"path": table, "id_column": "id"})
    assert run_job(parse_spec(raw)).rows_ok == len(hostile)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".png"]
    assert len(written) == len(hostile)
    assert all(out / "images" in p.parents for p in written)
    assert sorted(row["id"] for row in read_metadata(str(out))) == sorted(hostile)


def test_pickle_model_folders_are_refused_unless_allowed(tiny, tmp_path):
    import shutil

    model = tmp_path / "pickled"
    shutil.copytree(tiny["txt2img"], model)
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    table = write_table(tmp_path / "t.parquet", {"prompt": ["a"]})
    raw = job(table, str(tmp_path / "out"), [stage("txt2img", str(model))])
    with pytest.raises(SpecError, match=r"stages.0.model: .* holds pickle weights \(unet/diffusion_pytorch_model.bin\)"):
        run_job(parse_spec(raw))
    from pipeline.preflight import check_models

    raw["stages"][0]["allow_pickle"] = True
    check_models(parse_spec(raw))  # allowed explicitly: no error


def test_duplicate_ids_and_invalid_chain_are_refused_before_any_work(tiny, tmp_path):
    table = write_table(tmp_path / "t.parquet", {"id": ["a", "b", "a"], "prompt": ["x", "y", "z"]})
    raw = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])], input={"path": table, "id_column": "id"})
    with pytest.raises(SpecError, match=r"input.id_column: 1 ids appear more than once .* e.g. 'a'"):
        run_job(parse_spec(raw))
    bad = job(table, str(tmp_path / "out"), [stage("img2img", tiny["img2img"], steps=2, strength=0.2)])
    with pytest.raises(SpecError, match=r"stages.0.strength: steps x strength = 2 x 0.2 leaves no denoising step"):
        parse_spec(bad)
    file_as_dir = tmp_path / "a-file"
    file_as_dir.write_text("x")
    raw = job(table, str(file_as_dir / "out"), [stage("txt2img", tiny["txt2img"])])
    with pytest.raises(SpecError, match="output.path: cannot write"):
        run_job(parse_spec(raw))


def test_credentials_never_reach_logs_metadata_or_the_written_spec(tiny, s3, s3_endpoint, tmp_path):
    bucket, options, fs = s3
    secret = "SECRET-do-not-leak-9f3a"
    write_table(f"{bucket}/in/p.parquet", {"prompt": ["a", "b"]}, options)
    raw = job(f"{bucket}/in/p.parquet", f"{bucket}/out", [stage("txt2img", tiny["txt2img"])], storage_options=options)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(AWS_SECRET_ACCESS_KEY=secret, AWS_ACCESS_KEY_ID="AKIAEXAMPLELEAKCHECK")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(tmp_path / "job.yaml")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    everything = result.stdout + result.stderr
    for path in fs.find(f"{bucket}/out"):
        if not path.endswith(".png"):
            everything += fs.cat_file(path).decode("latin-1")
    assert secret not in everything and "AKIAEXAMPLELEAKCHECK" not in everything


def chunk_prompts(out):
    """The prompts of each committed chunk (metadata file)."""
    import pyarrow.parquet as pq

    return sorted(sorted(pq.read_table(file).column("prompt").to_pylist()) for file in metadata_files(out))


def digests(out) -> dict[str, set[str]]:
    """prompt -> the sha256 of each of its committed rows."""
    found: dict[str, set[str]] = {}
    for row in read_metadata(str(out)):
        found.setdefault(row["prompt"], set()).add(row["sha256"])
    return found


def test_a_partly_committed_chunk_keeps_its_batch_mates_and_writes_only_new_rows(ray_cluster, tiny, tmp_path):
    import os
    import shutil

    import pyarrow.parquet as pq

    # No id_column: row 5 is a copy of row 1, so they share a content id. Chunks of 4 rows.
    prompts = [f"prompt {i}" for i in range(12)]
    prompts[5] = prompts[1]
    table = write_table(tmp_path / "p.parquet", {"prompt": prompts})
    chain = [stage("txt2img", tiny["txt2img"], batch_size=4), stage("img2img", tiny["img2img"], batch_size=4)]
    run_job(parse_spec(job(table, str(tmp_path / "clean"), chain)))
    clean = digests(tmp_path / "clean")  # prompt 1 has two: its copies had other batch mates
    assert [len(chunk) for chunk in chunk_prompts(tmp_path / "clean")] == [4, 4, 4]

    # As after a kill that came after the first chunk's commit: only rows 0-3 are committed.
    # The input is the first run's, so the resume skips that shard from a listing and runs
    # the others whole, as the clean run did: the copy of row 1 is written again with its
    # own batch mates, and the output equals the clean run's.
    def killed_after_first_chunk(name):
        shutil.copytree(tmp_path / "clean", tmp_path / name)
        for file in metadata_files(tmp_path / name):
            if "prompt 0" not in pq.read_table(file).column("prompt").to_pylist():
                file.unlink()
        return tmp_path / name

    summary = run_job(parse_spec(job(table, str(killed_after_first_chunk("fast")), chain)))
    assert (summary.rows_skipped, summary.rows_ok) == (4, 8)
    assert digests(tmp_path / "fast") == clean

    # The same after the input file was rewritten (another version): shard numbers may name
    # other rows now, so the resume goes by row ids, and the second chunk is partly
    # committed (row 5 = row 1). It runs with all four rows, as a clean run does, and
    # writes three: the copy is neither written nor counted again. (Dropping the copy left
    # a 3-row chunk that the img2img stage merged with the next.)
    resumed_out = killed_after_first_chunk("resumed")
    os.utime(table, ns=(10**18, 10**18))
    summary = run_job(parse_spec(job(table, str(resumed_out), chain)))
    assert (summary.rows_skipped, summary.rows_ok) == (4, 7)
    assert chunk_prompts(tmp_path / "resumed") == [
        [f"prompt {i}" for i in (0, 1, 2, 3)],
        [f"prompt {i}" for i in (10, 11, 8, 9)],
        [f"prompt {i}" for i in (4, 6, 7)],
    ]
    resumed = digests(tmp_path / "resumed")
    assert all(resumed[prompt] <= clean[prompt] for prompt in prompts) and len(resumed["prompt 1"]) == 1

    # Rows appended to the input: the last chunk grows from 2 rows to 4. Its 2 committed
    # rows are batch mates again, and only the 2 new ones are written, with the bytes of a
    # clean run of the grown table; the 2 old ones keep theirs (made with 2 batch mates,
    # which on this CPU already changes some bytes).
    short = write_table(tmp_path / "short.parquet", {"prompt": prompts[:10]})
    run_job(parse_spec(job(short, str(tmp_path / "grown"), chain)))
    before = digests(tmp_path / "grown")
    shutil.copy(table, short)
    summary = run_job(parse_spec(job(short, str(tmp_path / "grown"), chain)))
    assert (summary.rows_skipped, summary.rows_ok) == (9, 2)  # 10 rows, 9 ids
    rows = read_metadata(str(tmp_path / "grown"))
    assert sorted(row["prompt"] for row in rows) == sorted(prompts)  # each row once, the copy with its chunk
    assert digests(tmp_path / "grown") == {**before, "prompt 10": clean["prompt 10"], "prompt 11": clean["prompt 11"]}


def test_retry_failed_leaves_a_copy_committed_in_another_chunk_alone(ray_cluster, tiny, tmp_path):
    import os

    # Chunks [x, y] and [x, z]: the two x rows share a content id; y fails (steps 0).
    table = write_table(tmp_path / "t.parquet", {"prompt": ["x", "y", "x", "z"], "steps": [None, 0, None, None]})
    for name, changed in (("same", False), ("changed", True)):
        raw = job(table, str(tmp_path / name), [stage("txt2img", tiny["txt2img"], batch_size=2)])
        first = run_job(parse_spec(raw))
        assert (first.rows_ok, first.rows_failed) == (3, 1)
        if not changed:
            # Same input: the retry reruns [x, y]'s shard whole, as the first run did.
            again = run_job(parse_spec(raw), retry_failed=True)
            assert (again.rows_ok, again.rows_failed) == (1, 1)
            assert sorted(row["prompt"] for row in read_metadata(str(tmp_path / name))) == ["x", "x", "y", "z"]
            continue
        # A rewritten input resumes by ids: the retry removes [x, y]'s file; x is still
        # committed in [x, z]'s, so that chunk is not run again, and x rides along with y
        # unwritten: x stays committed once.
        os.utime(table, ns=(10**18, 10**18))
        again = run_job(parse_spec(raw), retry_failed=True)
        assert (again.rows_ok, again.rows_failed) == (0, 1)
        assert sorted(row["prompt"] for row in read_metadata(str(tmp_path / name))) == ["x", "y", "z"]


def test_a_file_added_beside_the_input_leaves_the_committed_rows_alone(ray_cluster, tiny, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # January's file: int64 seeds, no id column. February's, written by pandas: its seed
    # column has a null, so it is float64, and it brings a steps column. Reading both widens
    # January's seeds to double and gives its rows null steps; neither may give them new
    # content ids, which would generate and commit them a second time.
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"prompt": ["a red circle", "a blue square"], "seed": pa.array([5, 6], pa.int64())}),
                   folder / "2024-01.parquet")
    raw = job(str(folder), str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], batch_size=2)])
    assert run_job(parse_spec(raw)).rows_ok == 2
    pq.write_table(pa.table({"prompt": ["a green triangle", "a red square"], "seed": pa.array([None, 8.0]),
                             "steps": pa.array([3, None], pa.int64())}), folder / "2024-02.parquet")
    summary = run_job(parse_spec(raw))
    assert (summary.rows_skipped, summary.rows_ok) == (2, 2)
    rows = read_metadata(str(tmp_path / "out"))
    assert sorted(row["prompt"] for row in rows) == ["a blue square", "a green triangle", "a red circle", "a red square"]
    assert {row["prompt"]: row["seed"] for row in rows}["a red square"] == 8
