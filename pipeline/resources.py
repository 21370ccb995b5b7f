"""Resource planning: how many actors of which size each stage gets, so a job cannot deadlock.

Ray Data runs every stage at once (streaming). Two traps follow:
- If stage actors hold every CPU, the read and write *tasks* never get one and the job hangs
  with no error (seen on a 2-core machine with two 1-CPU actors). So actor CPUs are capped
  at the cluster's CPUs minus a reserve kept for tasks, and tasks ask for at most that reserve.
- If the stages' minimum actors need more GPUs than exist, some stage never starts. So the
  minimums must fit together; a stage whose `gpus` is left out shares what is free.

The planner is a pure function of the stage specs and the cluster's resources, so it is
tested without a cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.spec import StageSpec

# Below this a stage actor would be starved of CPU for its Python and data handling.
_MIN_ACTOR_CPUS = 0.05


class PlanError(ValueError):
    """The stages cannot fit on the cluster; the message names the fields to change."""


@dataclass(frozen=True)
class StagePlan:
    cpus: float
    gpus: float
    min_replicas: int
    max_replicas: int
    torch_threads: int


@dataclass(frozen=True)
class Plan:
    stages: list[StagePlan]
    task_cpus: float  # CPUs each read / prepare / write task asks for
    reserved_cpus: float  # CPUs that actors may never take


def _reserve(total_cpus: float) -> float:
    # At least one whole CPU: some of Ray Data's own tasks (ListFiles of read_parquet, seen
    # with Ray 2.60) ask for 1 CPU whatever we request, and hang if no whole CPU is free.
    # One CPU per 8 beyond that leaves room for image encoding and uploads on large nodes.
    return max(1.0, total_cpus / 8)


def plan_resources(
    stages: list[StageSpec], total_cpus: float, total_gpus: float, node_cpus: float | None = None
) -> Plan:
    """`node_cpus`: the CPUs of the largest node (default: all of them, one node)."""
    reserve = _reserve(total_cpus)
    budget = total_cpus - reserve
    if budget <= 0:
        raise PlanError(
            f"the cluster has {total_cpus:g} CPUs; stage actors need more than the {reserve:g} kept "
            "for read and write tasks (at least 2 CPUs in all)"
        )
    mins = [stage.replicas.min for stage in stages]

    # 1. GPUs per replica: explicit values first, then auto stages share what is free.
    gpus = [stage.gpus for stage in stages]
    explicit_gpu_demand = sum(m * g for m, g in zip(mins, gpus) if g is not None)
    auto_replicas = sum(m for m, g in zip(mins, gpus) if g is None)
    if total_gpus > 0 and auto_replicas:
        share = min(1.0, max(total_gpus - explicit_gpu_demand, 0) / auto_replicas)
        # Ray accepts fractions down to 1/10000 of a GPU; round down so the shares fit.
        share = math.floor(share * 10000) / 10000
        if share <= 0:
            raise PlanError(
                f"no GPU is left for the stages without 'gpus' after the explicit ones take "
                f"{explicit_gpu_demand:g} of {total_gpus:g}: set their gpus or lower replicas.min"
            )
        gpus = [share if g is None else g for g in gpus]
    else:
        gpus = [0.0 if g is None else g for g in gpus]
    gpu_demand = sum(m * g for m, g in zip(mins, gpus))
    if gpu_demand > total_gpus + 1e-9:
        raise PlanError(
            f"the stages' minimum replicas need {gpu_demand:g} GPUs and the cluster has {total_gpus:g}: "
            "lower stages.N.gpus or stages.N.replicas.min (every stage runs at the same time)"
        )

    # 2. Maximum replicas: as many as the GPUs allow for GPU stages, a fair share of the
    # CPU budget for CPU stages.
    maxes = []
    for stage, g in zip(stages, gpus):
        if stage.replicas.max is not None:
            maxes.append(stage.replicas.max)
        elif g > 0:
            maxes.append(max(stage.replicas.min, math.floor(total_gpus / g + 1e-9)))
        else:
            maxes.append(stage.replicas.min)

    # 3. CPUs per replica: explicit values kept; auto stages share the rest of the budget.
    cpus = [stage.cpus for stage in stages]
    explicit_cpu_demand = sum(m * c for m, c in zip(mins, cpus) if c is not None)
    auto_actors = sum(m for m, c in zip(mins, cpus) if c is None)
    if auto_actors:
        share = min(1.0, (budget - explicit_cpu_demand) / auto_actors)
        share = math.floor(share * 100) / 100
        if share < _MIN_ACTOR_CPUS:
            raise PlanError(
                f"only {budget:g} of the cluster's {total_cpus:g} CPUs can go to stage actors "
                f"({reserve:g} stay for read and write tasks), too few for "
                f"{auto_actors} actors: lower stages.N.replicas.min or set stages.N.cpus"
            )
        cpus = [share if c is None else c for c in cpus]
    min_demand = sum(m * c for m, c in zip(mins, cpus))
    if min_demand > budget + 1e-9:
        raise PlanError(
            f"the stages' minimum replicas need {min_demand:g} CPUs but only {budget:g} of the cluster's "
            f"{total_cpus:g} can go to actors ({reserve:g} stay for read and write tasks, or the job "
            "would hang): lower stages.N.cpus or stages.N.replicas.min"
        )

    # 4. Trim maximums, largest CPU user first, until every actor fits beside the reserve.
    while sum(mx * c for mx, c in zip(maxes, cpus)) > budget + 1e-9:
        candidates = [i for i in range(len(stages)) if maxes[i] > mins[i]]
        index = max(candidates, key=lambda i: maxes[i] * cpus[i])
        maxes[index] -= 1

    # 5. Torch threads. A GPU actor's CPU threads only feed the GPU: its share of CPUs. A
    # CPU-only actor does the math itself: the node's cores split between the CPU actors
    # that can share it (Ray's num_cpus is accounting; torch's threads are the real use,
    # and the read/write tasks are light next to a denoising loop).
    node = node_cpus or total_cpus
    cpu_actors = sum(mx for mx, g in zip(maxes, gpus) if g == 0)
    threads = [
        max(1, math.floor(c)) if g > 0 else max(1, math.floor(node / max(1, min(cpu_actors, node))))
        for c, g in zip(cpus, gpus)
    ]
    plans = [
        StagePlan(cpus=c, gpus=g, min_replicas=m, max_replicas=mx, torch_threads=t)
        for c, g, m, mx, t in zip(cpus, gpus, mins, maxes, threads)
    ]
    return Plan(stages=plans, task_cpus=min(1.0, reserve), reserved_cpus=reserve)
