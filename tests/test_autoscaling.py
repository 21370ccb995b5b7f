"""A job on an autoscaling cluster whose GPU workers sit at zero: it plans for the GPUs the
cluster can grow to, its GPU actors wait as demand, the autoscaler starts a GPU worker, and
the job completes there.

The cluster is Ray's fake multi-node autoscaler (the provider behind ray.cluster_utils.
AutoscalingCluster: `ray start --head --autoscaling-config` with the fake_multinode provider
and RAY_FAKE_CLUSTER=1), started here in its own process group on free ports. Not through
AutoscalingCluster itself: its start() and shutdown() run `ray stop --force`, which kills
every Ray on the machine (this suite's session Ray among them), and this Ray wheel lacks the
fake_multi_node/example.yaml it reads."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import _free_port, job, read_metadata, stage, write_table
from ray_head import start_head, stop_head

pytestmark = pytest.mark.timeout(400)


def fake_autoscaling_config(gcs_port: int, head_cpus: int, worker_types: dict) -> dict:
    return {
        "cluster_name": "synth-fake",
        "max_workers": sum(kind["max_workers"] for kind in worker_types.values()),
        # The fake provider starts worker nodes as processes of the head's autoscaler,
        # joining the GCS at gcs_address (its default is port 6379).
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            **worker_types,
        },
        "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


def wait_for_the_autoscaler(head, timeout_s: float = 120) -> None:
    """Until the autoscaler's first report names the config's node types, as on a real
    cluster, whose autoscaler has reported long before a job arrives."""
    import time

    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    deadline = time.monotonic() + timeout_s
    while True:
        status = subprocess.run([ray_cli if os.path.exists(ray_cli) else "ray", "status", "--address",
                                 head.gcs_address], capture_output=True, text=True, timeout=60,
                                env={**os.environ, **head.env})
        if "ray.head.default" in status.stdout:
            return
        assert time.monotonic() < deadline, f"the autoscaler never reported: {status.stdout[-1000:]}{status.stderr[-1000:]}"
        time.sleep(1)


def test_a_job_with_no_gpu_worker_scales_one_up_and_completes_on_it(tiny, tmp_path):
    gcs_port = _free_port()
    gpu_worker = {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(fake_autoscaling_config(gcs_port, 2, {"gpu_worker": gpu_worker})))
    head = start_head(num_cpus=2, port=gcs_port, extra_args=(f"--autoscaling-config={config}",),
                      extra_env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    try:
        wait_for_the_autoscaler(head)
        table = write_table(tmp_path / "prompts.parquet", {"prompt": [f"a shape {i}" for i in range(4)]})
        spec = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], gpus=1)],
                   actor_start_timeout_s=240)
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "job.yaml")],
                                capture_output=True, text=True, timeout=360,
                                env={**os.environ, **head.env, "RAY_ADDRESS": head.gcs_address})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "has 0 GPUs now and can grow to 1" in result.stdout
        assert "stage 0 txt2img: 1-1 replicas x 1 GPU" in result.stdout
        rows = read_metadata(str(tmp_path / "out"))
        assert [row["status"] for row in rows] == ["ok"] * 4
        assert {row["stages"][0]["device"] for row in rows} == {"cpu (ray gpu 0)"}  # on the worker it started
    finally:
        stop_head(head)
