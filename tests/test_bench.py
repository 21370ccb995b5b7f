"""The benchmark runs from its command and reports every figure (no speed assertions:
speed targets live in the benchmark's own output, not in tests)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(400)


def test_bench_command_writes_all_figures(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", "--rows", "64", "--batch-size", "8", "--steps", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=380, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "E = " in result.stdout and "time to first image" in result.stdout
    figures = json.loads(out.read_text())
    for name in ("bare_images_per_s", "pipeline_images_per_s_end_to_end", "efficiency_end_to_end",
                 "time_to_first_image_s", "startup_s", "ray_init_s", "wall_s", "peak_rss_bytes"):
        assert figures[name] > 0, name
    assert figures["ray_init_s"] < figures["startup_s"] < figures["time_to_first_image_s"]
    # the steady-state slope needs commits spread over time; on a loaded machine a short run's
    # chunks can land together, so only its presence is checked here
    assert figures["pipeline_images_per_s_steady"] >= 0 and "efficiency_steady" in figures
    assert set(figures["split_ms_per_image"]) >= {"prepare (read, decode)", "text encode", "denoise", "vae",
                                                  "image encode", "write", "waiting in queues"}
    assert figures["split_ms_per_image"]["waiting in queues"] >= 0
    assert figures["split_ms_per_image"]["denoise"] > 0
    assert figures["spilled_bytes"] >= 0


def test_startup_is_time_to_first_image_less_the_first_chunks_work():
    from benchmarks.harness import startup_seconds

    def row(committed_at, stage_seconds):
        stage = {"index": 0, "seconds": stage_seconds, "text_encode_seconds": 0.1, "vae_seconds": 0.2}
        failed_later = {"index": 1, "seconds": None, "text_encode_seconds": None, "vae_seconds": None}
        return {"committed_at": committed_at, "prepare_seconds": 0.01, "encode_seconds": 0.02,
                "write_seconds": 0.03, "queue_seconds": 0.7, "stages": [stage, failed_later]}

    # two rows in the first chunk (committed at 100.0), listed after a row of a later chunk
    # that must not count; a failed row has no stage time (NaN) and an older record no
    # prepare_seconds
    failed = row(100.0, float("nan"))
    failed["stages"][0].update(text_encode_seconds=float("nan"), vae_seconds=float("nan"))
    del failed["prepare_seconds"]
    table = [row(103.0, 9.0), row(100.0, 0.5), failed]
    assert startup_seconds(table, 12.0) == pytest.approx(12.0 - (0.5 + 0.06) - 0.05)
