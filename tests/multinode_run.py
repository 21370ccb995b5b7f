"""Run by tests/test_multinode.py in a process of its own (a process joins one Ray only, and
the suite's session Ray is another): a ray.cluster_utils.Cluster of a head and two worker
nodes with one fake GPU each, a clean run of a job, then the same job into a second output
while one worker node is removed mid-run. Prints one JSON line of what it saw."""

from __future__ import annotations

import glob
import json
import os
import sys
import threading
import time


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (each socket held until all are chosen)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def main(model: str, work: str) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import job, read_metadata, stage, write_table

    from pipeline.runner import run_job
    from pipeline.spec import parse_spec

    # Ports Ray would otherwise take at fixed defaults (the agents' 52365), clashing with
    # another Ray on this machine; the state API (which actor ran where) needs the dashboard.
    dashboard, *agents = free_ports(4)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": dashboard, "dashboard_agent_listen_port": agents[0]})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1, dashboard_agent_listen_port=port) for port in agents[1:]]
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        table = write_table(f"{work}/prompts.parquet", {"prompt": [f"shape {i}" for i in range(16)]})
        # Batches slow enough that blocks queue up for both actors (see test_jobs' GPU test).
        one_gpu_each = stage("txt2img", model, gpus=1, replicas={"min": 2, "max": 2}, steps=20, width=64,
                             height=64)

        def run(output: str):
            return run_job(parse_spec(job(table, output, [one_gpu_each], actor_start_timeout_s=240))), read_metadata(output)

        clean_summary, clean = run(f"{work}/clean")
        worker_ids = {worker.node_id for worker in workers}
        stage_actors = [actor for actor in list_actors(filters=[("state", "=", "DEAD")], limit=1000)
                        if actor.class_name.startswith("MapWorker") and actor.node_id in worker_ids]

        # The same job into a second output; the second worker node goes when the first
        # chunk is committed.
        removed = threading.Event()
        committed_at_removal = []

        def remove_when_a_chunk_is_committed():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                committed = glob.glob(f"{work}/lossy/metadata/*.parquet")
                if committed:
                    cluster.remove_node(workers[1], allow_graceful=False)
                    committed_at_removal.append(len(committed))
                    removed.set()
                    return
                time.sleep(0.2)

        remover = threading.Thread(target=remove_when_a_chunk_is_committed, daemon=True)
        remover.start()
        lossy_summary, lossy = run(f"{work}/lossy")
        remover.join(timeout=60)
        print(json.dumps({
            "clean": {row["id"]: [row["status"], row["sha256"], row["stages"][0]["device"]] for row in clean},
            "clean_ok": clean_summary.rows_ok,
            "actor_nodes": sorted({actor.node_id for actor in stage_actors}),
            "worker_nodes": sorted(worker_ids),
            "removed": removed.is_set(),
            "chunks_committed_at_removal": committed_at_removal[0] if committed_at_removal else None,
            "lossy": {row["id"]: [row["status"], row["sha256"]] for row in lossy},
            "lossy_rows": len(lossy),
            "lossy_ok": lossy_summary.rows_ok,
        }), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
