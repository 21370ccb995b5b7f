"""Which chunks keep killing the stage workers that run them.

A worker process that dies outright (killed by the kernel for memory, a segfault in a
library) raises nothing: Ray restarts the actor and runs the same chunk again, and a chunk
that kills every worker would be retried forever. Each stage call tells this counter when it
begins and ends a chunk; a begin without an end is a worker that died running it.
"""

from __future__ import annotations


class ChunkAttempts:
    """Held as one small Ray actor per run (no CPU), alive as long as the driver."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def begin(self, chunk: str) -> int:
        """Count an attempt at this chunk; return how many earlier attempts never ended."""
        deaths = self._open.get(chunk, 0)
        self._open[chunk] = deaths + 1
        return deaths

    def end(self, chunk: str) -> None:
        self._open.pop(chunk, None)


def start_chunk_attempts():
    """The run's counter, as a Ray actor handle that stage workers take. It lives on the
    driver's node, which the job cannot outlive anyway, and Ray restarts it if it dies (the
    counts then start again: a chunk costs a few more deaths, no more)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(ChunkAttempts).options(num_cpus=0, max_restarts=-1, scheduling_strategy=here).remote()
