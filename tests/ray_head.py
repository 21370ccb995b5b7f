"""A real Ray head for tests that submit jobs: `ray start --head --block` in its own process
group, on loopback ports that are free, with its own temp dir and its own auth token, so the
session Ray of conftest (another process tree, another address) is never touched."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from conftest import _free_port


@dataclass
class Head:
    address: str  # the Jobs API, http://127.0.0.1:PORT
    gcs_address: str  # for ray.init
    env: dict  # what a client process needs: RAY_AUTH_MODE and the head's token
    process: subprocess.Popen
    temp_dir: str


def start_head(num_cpus: int = 2, num_gpus: int = 0, timeout_s: float = 120, extra_args: tuple[str, ...] = (),
               extra_env: dict | None = None, port: int | None = None) -> Head:
    # Short: Ray's socket paths live under it and must stay under the OS's 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")
    dashboard = _free_port()
    ports = {name: _free_port() for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "node-manager-port", "object-manager-port", "ray-client-server-port")}
    ports["port"] = port or _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(auth)
    # Job entrypoints run `python` from the head's PATH: this interpreter's, as on a cluster node.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra_env or {})
    # The `ray` of this interpreter's environment, also when that environment is not on PATH.
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    command = [ray_cli if os.path.exists(ray_cli) else "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
               f"--num-gpus={num_gpus}", *extra_args, "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
               *(f"--{name}={port}" for name, port in ports.items())]
    with open(os.path.join(temp_dir, "head.log"), "w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{ports['port']}", auth, process, temp_dir)
    try:
        _wait_for_jobs_api(head, timeout_s)
    except BaseException:
        stop_head(head)
        raise
    return head


def _wait_for_jobs_api(head: Head, timeout_s: float) -> None:
    import json
    import urllib.request

    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{head.address}/api/version",
                                     headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    while True:
        if head.process.poll() is not None:
            raise RuntimeError(f"ray start exited {head.process.returncode}: {_tail(head)}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                json.load(answer)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray head's Jobs API did not answer in {timeout_s:g} s: {_tail(head)}")
            time.sleep(1)


def _tail(head: Head) -> str:
    with open(os.path.join(head.temp_dir, "head.log")) as handle:
        return handle.read()[-2000:]


def stop_head(head: Head) -> None:
    """SIGTERM to the head's process group (ours alone), SIGKILL what is left soon after (a
    head drains for 30 s on SIGTERM; a throwaway one need not); its temp dir goes too."""
    try:
        try:
            os.killpg(head.process.pid, signal.SIGTERM)
            head.process.wait(3)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.process.wait()
    except ProcessLookupError:
        pass
    finally:
        shutil.rmtree(head.temp_dir, ignore_errors=True)
