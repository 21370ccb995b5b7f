"""Several nodes on one machine (ray.cluster_utils.Cluster: a head and two worker nodes with a
fake GPU each), in a process of its own: the stage actors spread over the nodes, one GPU each,
and a job whose worker node is removed mid-run still writes every row exactly once, with a
clean run's bytes. The output is a local folder, which every node of this one machine shares."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)


def test_actors_spread_over_nodes_and_a_job_survives_losing_one(tiny, tmp_path):
    script = Path(__file__).parent / "multinode_run.py"
    result = subprocess.run(
        [sys.executable, str(script), tiny["txt2img"], str(tmp_path)],
        capture_output=True, text=True, timeout=560,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    # The clean run: one actor on each worker node, each seeing its node's one GPU.
    assert seen["clean_ok"] == 16
    assert seen["actor_nodes"] == seen["worker_nodes"] and len(seen["worker_nodes"]) == 2
    assert {device for _, _, device in seen["clean"].values()} == {"cpu (ray gpu 0)"}

    # A worker node removed after the first commit: every row once, ok, with the clean bytes.
    assert seen["removed"] and seen["chunks_committed_at_removal"] < 8  # of 8 chunks: mid-run
    assert seen["lossy_rows"] == 16 and seen["lossy_ok"] == 16
    assert {row: status_sha for row, status_sha in seen["lossy"].items()} == {
        row: [status, sha] for row, (status, sha, _) in seen["clean"].items()}
