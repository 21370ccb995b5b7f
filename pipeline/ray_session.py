"""Connecting to Ray, and the Ray Data settings a job runs under."""

from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger("synth.ray")


def connect_ray(local: bool = False) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local one (nothing to do when connected).
    local: always start a Ray of this machine's own, for commands that write their input
    and read their output on local disk (the demo, the model evaluation): on a cluster,
    workers on other nodes could not see either."""
    import ray

    if ray.is_initialized():
        return
    with _keeping_sigterm_handler():
        _init(local)


@contextlib.contextmanager
def _keeping_sigterm_handler():
    """ray.init installs a SIGTERM handler of its own (sys.exit(15)); the caller's (the CLI
    stops a run as Ctrl-C does: recorded, lease released) is put back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)


def _init(local: bool) -> None:
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if local:
        ray.init(address="local")
    elif os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # A job submitted through the Jobs API (synth submit): its runtime env already
        # carries the code, and Ray refuses a second py_modules beside it.
        ray.init()
    elif address:
        import pipeline

        # Ship this exact version of the code to the cluster's workers.
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"py_modules": [os.path.dirname(pipeline.__file__)]})
    else:
        ray.init()


@contextlib.contextmanager
def job_data_context(no_progress_timeout_s: float):
    """Ray Data's settings for a job, restored when it ends (the driver may run other
    Ray Data work, or another job, afterwards)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.wait_for_min_actors_s,
        context.execution_no_progress_timeout_s,
        context.target_max_block_size,
    )
    # Shards finish and commit in any order: a shard's composition, not its place in the
    # stream, keeps reruns byte-identical (pipeline/io/shards.py), so one slow shard holds
    # back no other's commit.
    context.execution_options.preserve_order = False
    # Start the pools' actors without holding up the job: reads, Ray Data's own actors and
    # every stage's model load overlap (waiting for each pool in turn loads a chain's models
    # one after another). A pool gets chunks only from actors that have loaded, at most 2
    # each (max_tasks_in_flight_per_actor), so work still spreads as its actors come up.
    context.wait_for_min_actors_s = -1
    # The hang guard: no progress at all for this long (actors that cannot be placed, a
    # model load that hangs, or a later stall) fails the job instead of waiting.
    context.execution_no_progress_timeout_s = no_progress_timeout_s
    # Never split a block by size: a block is a shard, the unit of commit (several 4K
    # upscales pass the default 128 MiB). Shards stay within shards.SHARD_IMAGE_BYTES.
    context.target_max_block_size = None
    try:
        yield context
    finally:
        (
            context.execution_options.preserve_order,
            context.wait_for_min_actors_s,
            context.execution_no_progress_timeout_s,
            context.target_max_block_size,
        ) = saved
