"""The control-plane benchmark: what grows with the table on the driver.

    synth bench --control-plane [--sizes 10000,100000,1000000,10000000] [--resume-rows 1000000] [--out FILE]

A CONSTANT-IMAGE GENERATOR REPLACES THE MODEL (benchmarks/plumbing.py). For each table size,
on local disk: preflight and planning time (input footers, the unique-id check, the shard
plan), time to first commit of `synth run` (a subprocess, stopped by SIGTERM after it),
the driver's peak memory until then (RSS of the driver process), and the objects the
output would hold at the end per layout (from the shard count). Then, on a loopback S3
server (moto): an output with `resume_rows` committed rows, and how long a resume takes
to find what is left (preflight + listing + plan), and to its first new commit. The
per-row cost of each and its extrapolation to 10^8 rows are printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml


def _table(fs, path: str, rows: int, files: int = 1) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    per_file = -(-rows // files)
    for index in range(files):
        first, last = index * per_file, min(rows, (index + 1) * per_file)
        table = pa.table({"id": [f"row-{i:010d}" for i in range(first, last)],
                          "prompt": [f"a grey square {i}" for i in range(first, last)]})
        with fs.open(f"{path}/part-{index:05d}.parquet", "wb") as handle:
            pq.write_table(table, handle, row_group_size=65536)


def _spec(table: str, out: str, model: str, storage: dict | None = None) -> dict:
    spec = {"name": "control-plane", "seed": 1, "input": {"path": table, "id_column": "id"},
            "stages": [{"kind": "txt2img", "model": model, "steps": 1, "batch_size": 16, "width": 64, "height": 64}],
            "output": {"path": out, "format": "jpeg"}}
    if storage:
        spec["storage_options"] = storage
    return spec


def planning_seconds(raw: dict) -> dict:
    """Preflight's input checks and the shard plan, in this process, as run_job does them."""
    from pipeline import preflight
    from pipeline.io.commit_log import CommitLog
    from pipeline.runner import _resume
    from pipeline.spec import parse_spec

    started = time.perf_counter()
    spec = preflight.absolute_paths(parse_spec(raw))
    columns = preflight.check_input(spec)
    checked = time.perf_counter()
    log = CommitLog.of(spec)
    log.claim(spec)
    resume = _resume(log, spec, columns, retry_failed=False)
    planned = time.perf_counter()
    return {"preflight_input_s": round(checked - started, 2), "plan_s": round(planned - checked, 2),
            "shards": resume.source.shards.count, "pending_shards": len(resume.shards or []),
            "rows_skipped": resume.rows_skipped}


def first_commit(spec_file: Path, out_metadata, env: dict, timeout_s: float = 600) -> dict:
    """Start `synth run` with the model replaced; the time to its first committed shard and
    the driver's peak RSS until then; then stop it as Ctrl-C does."""
    import psutil

    code = ("import sys; from benchmarks.plumbing import constant_images; from pipeline.cli import main\n"
            "with constant_images(): sys.exit(main(['run', sys.argv[1]]))")
    started = time.perf_counter()
    log = open(os.environ["SYNTH_BENCH_DRIVER_LOG"], "ab") if os.environ.get("SYNTH_BENCH_DRIVER_LOG") else None
    driver = subprocess.Popen([sys.executable, "-c", code, str(spec_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # When the driver has done everything before generating (preflight, lease, resume plan,
    # ray.init, pool plan): Ray Data logs that the dataset starts executing.
    dataset_started: list[float] = []

    def watch() -> None:
        for line in driver.stderr:
            if not dataset_started and b"Starting execution of Dataset" in line:
                dataset_started.append(time.perf_counter() - started)
            if log:
                log.write(line)

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    process, peak, seconds = psutil.Process(driver.pid), 0, None
    before = set(out_metadata())
    while time.perf_counter() - started < timeout_s and driver.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if set(out_metadata()) - before:
            seconds = time.perf_counter() - started
            break
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    try:
        driver.wait(60)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
    reader.join(10)
    if log:
        log.close()
    return {"dataset_started_s": round(dataset_started[0], 1) if dataset_started else None,
            "first_commit_s": round(seconds, 1) if seconds else None, "driver_peak_rss_mib": round(peak / 2**20)}


def _commit_synthetic(raw: dict, upto_rows: int) -> None:
    """Commit the shards of the first `upto_rows` rows as a run would name them (real
    metadata files of their ids, status ok), so a resume faces that many committed rows."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from pipeline import preflight
    from pipeline.io.commit_log import CommitLog
    from pipeline.io.writer import metadata_schema
    from pipeline.spec import parse_spec

    spec = preflight.absolute_paths(parse_spec(raw))
    columns = preflight.check_input(spec)
    log = CommitLog.of(spec)
    shard_rows, _ = log.shards(spec, columns.rows, columns.sizes, columns.versions)
    schema = metadata_schema()

    def commit(shard: int) -> None:
        first = shard * shard_rows
        ids = [f"row-{i:010d}" for i in range(first, first + shard_rows)]
        columns_ = {name: pa.nulls(len(ids), schema.field(name).type) for name in schema.names}
        columns_.update(id=pa.array(ids), status=pa.array(["ok"] * len(ids)))
        log.commit(pa.table(columns_, schema=schema), shard)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(commit, range(upto_rows // shard_rows)))


def bench_control_plane(sizes: list[int], resume_rows: int, out: str | None) -> dict:
    import s3fs
    from moto.server import ThreadedMotoServer

    from pipeline import storage
    from pipeline.io.shards import DEFAULT_SHARD_ROWS
    from pipeline.tiny_models import write_tiny_model

    results = {"label": "CONTROL PLANE, constant-image generator instead of the model", "cases": []}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="synth-control-") as folder:
        work = Path(folder)
        model = str(write_tiny_model(work / "model", "txt2img"))
        local = storage.filesystem(str(work))[0]
        for rows in sizes:
            table, output = work / f"in-{rows}", work / f"out-{rows}"
            table.mkdir()
            started = time.perf_counter()
            _table(local, str(table), rows, files=max(1, rows // 1_000_000))
            written = round(time.perf_counter() - started, 1)
            raw = _spec(str(table), str(output), model)
            # Planned into another output: the plan records shards.json (and the ids found
            # unique), which would spare the run below its own unique-id check.
            planned = planning_seconds(_spec(str(table), str(work / f"plan-{rows}"), model))
            case = {"rows": rows, "write_table_s": written, **planned}
            spec_file = work / f"job-{rows}.yaml"
            spec_file.write_text(yaml.safe_dump(raw))
            metadata = output / "metadata"
            case.update(first_commit(spec_file, lambda: list(metadata.glob("*.parquet")) if metadata.exists() else [],
                                     env))
            shards = -(-rows // DEFAULT_SHARD_ROWS)
            case["objects_at_end"] = {"files": rows + shards, "webdataset": 2 * shards, "parquet": 2 * shards}
            print(json.dumps(case), flush=True)
            results["cases"].append(case)

        # Resume with resume_rows committed, on a loopback S3 server.
        import socket

        with socket.socket() as probe:  # a free loopback port
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")  # moto takes any; never in the spec
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        try:
            options = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
            fs = s3fs.S3FileSystem(**options)
            fs.mkdir("synth-bench")
            total = resume_rows + 20 * DEFAULT_SHARD_ROWS
            _table(fs, "synth-bench/in", total, files=max(1, total // 1_000_000))
            raw = _spec("s3://synth-bench/in", "s3://synth-bench/out", model, options)
            started = time.perf_counter()
            _commit_synthetic(raw, resume_rows)
            resume = {"committed_rows": resume_rows, "commit_synthetic_s": round(time.perf_counter() - started, 1),
                      **planning_seconds(raw)}
            spec_file = work / "job-s3.yaml"
            spec_file.write_text(yaml.safe_dump(raw))
            resume.update(first_commit(spec_file, lambda: fs.invalidate_cache() or fs.find("synth-bench/out/metadata"),
                                       {**env, **{key: os.environ[key] for key in ("AWS_ACCESS_KEY_ID",
                                                                                   "AWS_SECRET_ACCESS_KEY")}}))
            per_row = (resume["preflight_input_s"] + resume["plan_s"]) / resume_rows
            resume["planning_s_per_committed_row"] = per_row
            resume["planning_s_extrapolated_to_1e8_rows"] = round(per_row * 1e8, 1)
            print(json.dumps(resume), flush=True)
            results["resume_s3"] = resume
        finally:
            server.stop()
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return results
