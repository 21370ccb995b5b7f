"""Submitting a job to a Ray cluster through the Ray Jobs API, and following it.

The job runs on the cluster as `python -m pipeline run job.json`: the spec travels in the
job's working_dir and this exact version of the code in its py_modules, so the nodes need
only synth's dependencies installed (cluster.yaml installs the project on every node).
The submitting machine checks the job first (spec, columns, models, output) where it can
reach the storage, so a bad job is refused before it takes a place on the cluster.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

from pipeline.spec import JobSpec, SpecError, resolved_dict

logger = logging.getLogger("synth.submit")

# Ray's job states that do not change again.
_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
# What `--wait` answers when Ray stopped the job (as `synth run` answers Ctrl-C).
STOPPED_EXIT_CODE = 130


@dataclass(frozen=True)
class RunOptions:
    """The `synth run` flags a submitted job runs with."""

    retry_failed: bool = False
    allow_model_change: bool = False
    wait_for_lease_s: float = 0.0

    def arguments(self) -> list[str]:
        flags = ["--wait-for-lease", f"{self.wait_for_lease_s:g}"]
        if self.retry_failed:
            flags.append("--retry-failed")
        if self.allow_model_change:
            flags.append("--allow-model-change")
        return flags


def client(address: str | None):
    """A Jobs API client for the dashboard at `address` (http://HEAD:8265); without one, Ray's
    own lookup: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS. A cluster with token authentication
    takes its token from RAY_AUTH_TOKEN or ~/.ray/auth_token, as Ray's own `ray job` does."""
    from ray.job_submission import JobSubmissionClient

    with jobs_api_errors(address):
        return JobSubmissionClient(address)


@contextlib.contextmanager
def jobs_api_errors(address: str | None, job_id: str | None = None):
    """The Jobs API's refusals (unreachable, no token, unknown job id) as one line naming
    the address and job, instead of a traceback."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as error:
        where = f"the Ray Jobs API at {address or '$RAY_API_SERVER_ADDRESS / $RAY_ADDRESS'}"
        about = f" about job {job_id}" if job_id else ""
        first = str(error).strip().splitlines()
        raise SpecError(f"--address: {where} refused{about}: {type(error).__name__}: "
                        f"{first[0] if first else ''}") from None


def preflight(spec: JobSpec) -> JobSpec:
    """The checks `synth run` makes before it joins Ray, made here: the spec with its local
    paths made absolute."""
    from pipeline import preflight as checks

    spec = checks.absolute_paths(spec)
    checks.check_input(spec)
    checks.check_models(spec)
    checks.check_output(spec)
    return spec


def _package(spec: JobSpec, staging: str) -> dict:
    """The job's runtime env: the spec in its working_dir, synth's packages as py_modules."""
    import jobs
    import pipeline

    with open(os.path.join(staging, "job.json"), "w") as handle:
        json.dump(resolved_dict(spec), handle, indent=2)
    modules = [os.path.dirname(pipeline.__file__), os.path.dirname(jobs.__file__)]
    return {"working_dir": staging, "py_modules": modules, "excludes": ["__pycache__", "*.pyc"]}


def entrypoint(options: RunOptions, log_level: str = "info") -> str:
    return " ".join(["python", "-m", "pipeline", "--log-level", log_level, "run", "job.json", *options.arguments()])


def submit(spec: JobSpec, address: str | None, options: RunOptions = RunOptions(), check: bool = True,
           log_level: str = "info") -> str:
    """Check the job here (unless check is False), submit it, and return Ray's job id."""
    if check:
        spec = preflight(spec)
    from pipeline import storage

    from pipeline.lora import lora_source
    from pipeline.models import model_source

    local = [path for path in (spec.input.path, spec.output.path) if not storage.is_remote(path)]
    for stage in spec.stages:  # models, ControlNets and adapters are read on the nodes too
        local += [model for model in (stage.model, stage.controlnet) if model and model_source(model) == "local"]
        local += [lora.path for lora in stage.loras if lora_source(lora.path) == "local"]
    if local:
        logger.warning("%s: local paths are read and written on the cluster's nodes, not on this machine; "
                       "use s3:// or a mount every node shares", ", ".join(local))
    jobs_api = client(address)
    staging = tempfile.mkdtemp(prefix="synth-submit-")
    try:
        with jobs_api_errors(address):
            job_id = jobs_api.submit_job(
                entrypoint=entrypoint(options, log_level),
                runtime_env=_package(spec, staging),
                metadata={"synth_job": spec.name, "synth_output": spec.output.path},
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # uploaded by now
    return job_id


def follow(job_id: str, address: str | None) -> int:
    """Print the job's logs as they come until it ends; its outcome as `synth run`'s exit
    code (the driver's own, or 130 when it was stopped)."""
    import asyncio

    jobs_api = client(address)

    async def tail() -> None:
        async for lines in jobs_api.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    with jobs_api_errors(address, job_id):
        asyncio.run(tail())
    return outcome(job_id, address)


def outcome(job_id: str, address: str | None) -> int:
    """The exit code of an ended job (waiting briefly for Ray to record the end)."""
    import time

    jobs_api = client(address)
    deadline = time.monotonic() + 60
    with jobs_api_errors(address, job_id):
        info = jobs_api.get_job_info(job_id)
        while _state(info) not in _ENDED and time.monotonic() < deadline:
            time.sleep(0.5)
            info = jobs_api.get_job_info(job_id)
    status = _state(info)
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        print(f"synth: Ray job {job_id} was stopped", file=sys.stderr)
        return STOPPED_EXIT_CODE
    if info.driver_exit_code is not None and info.driver_exit_code in (1, 2):
        return info.driver_exit_code  # synth run's own verdict, explained in the logs above
    reason = (info.message or "").strip().splitlines()
    print(f"synth: Ray job {job_id} ended {status}: {reason[0] if reason else 'no reason given'}", file=sys.stderr)
    return info.driver_exit_code or 2


def _state(info) -> str:
    return getattr(info.status, "value", str(info.status))


def status_line(job_id: str, address: str | None) -> str:
    with jobs_api_errors(address, job_id):
        info = client(address).get_job_info(job_id)
    line = f"{job_id}: {_state(info)}"
    if info.driver_exit_code is not None:
        line += f" (exit code {info.driver_exit_code})"
    name = (info.metadata or {}).get("synth_job")
    if name:
        line += f", job {name} into {info.metadata.get('synth_output')}"
    return line


def logs(job_id: str, address: str | None) -> str:
    with jobs_api_errors(address, job_id):
        return client(address).get_job_logs(job_id)


def stop(job_id: str, address: str | None) -> bool:
    """Ask Ray to stop the job (SIGTERM to its driver: the run is recorded as stopped and
    the output's lease released); False when it had already ended."""
    with jobs_api_errors(address, job_id):
        return client(address).stop_job(job_id)
