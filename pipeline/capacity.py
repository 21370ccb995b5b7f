"""What a job may plan for: the resources a Ray cluster can grow to, not only those present.

An autoscaling cluster's GPU workers usually sit at zero until work asks for them. Planning
from the GPUs present would give every stage CPU actors and never ask for a GPU; planning
for what the cluster can grow to gives the pools GPU actors, which wait as pending demand
that Ray's autoscaler answers by starting GPU workers (Ray Data starts pools without waiting
for them: job_data_context).

Where the autoscaler publishes its configuration (autoscaler v2, as KubeRay and `ray up`
clusters run it), the cluster's configured maximum bounds the plan. Where it does not (the
v1 autoscaler), a cluster that autoscales is trusted to grow to what the spec asks for
explicitly: stages' `gpus` times their `replicas.max` (or `min`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

logger = logging.getLogger("synth.capacity")


@dataclass(frozen=True)
class Capacity:
    cpus: float  # CPUs the plan may use: present, or the configured maximum
    gpus: float  # GPUs the plan may use: present, or what the cluster can grow to
    present_gpus: float
    node_cpus: float | None  # the largest node's CPUs
    grows: bool  # an autoscaler may add nodes


def _configured_maximum() -> dict[str, float] | None:
    """The autoscaler's configured maximum per resource, or None when it publishes none."""
    try:
        from ray._private.state import state

        maximum = state.get_max_resources_from_cluster_config()
    except Exception as error:  # a private API: its absence must never fail a job
        logger.debug("no configured maximum from the autoscaler: %s", error)
        return None
    if not maximum:
        return None
    # "no limit" (max_workers -1) says nothing a plan can use
    return {key: float(value) for key, value in maximum.items() if value < sys.maxsize}


def _autoscales() -> bool:
    """An autoscaler with node types of its own runs for this cluster (v1 writes its report
    to the GCS). A Ray without one (ray.init, a plain `ray start`) reports through a
    read-only provider whose node types are named after each node. The first report comes
    a few seconds after the head starts: a job that arrives sooner plans for what is up."""
    import json

    try:
        from ray._private import ray_constants
        from ray.autoscaler._private.util import format_readonly_node_type
        from ray.experimental.internal_kv import _internal_kv_get

        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        mapping = (json.loads(status or b"{}").get("autoscaler_report") or {}).get("node_type_mapping") or {}
    except Exception as error:  # private APIs: their absence must never fail a job
        logger.debug("no autoscaler status: %s", error)
        return False
    return any(kind != format_readonly_node_type(node) for node, kind in mapping.items())


def cluster_capacity(stages) -> Capacity:
    import ray

    present = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    node_cpus = max((node.get("Resources", {}).get("CPU", 0) for node in nodes), default=None)
    cpus, gpus = present.get("CPU", 0.0), present.get("GPU", 0.0)
    maximum = _configured_maximum()
    grows = maximum is not None or _autoscales()
    planned = planned_gpus(stages, gpus, maximum, grows)
    if planned > gpus:
        logger.info("the cluster has %g GPUs now and can grow to %g: planning for %g", gpus, planned, planned)
    # The nodes that bring those GPUs bring CPUs too (a head with num-cpus 0 has none of its own).
    planned_cpus = planned_cpu_count(stages, cpus, gpus, planned, maximum)
    return Capacity(planned_cpus, planned, gpus, node_cpus, grows)


def planned_gpus(stages, present: float, maximum: dict[str, float] | None, grows: bool) -> float:
    """The GPUs to plan for: the configured maximum when the autoscaler publishes one; on a
    cluster that autoscales without publishing it, what the stages ask for explicitly
    (`gpus` x `replicas.max`, or `min`); otherwise what is present."""
    if maximum is not None:
        return max(present, maximum.get("GPU", 0.0))
    if grows:
        asked = sum((stage.gpus or 0) * (stage.replicas.max or stage.replicas.min) for stage in stages)
        return max(present, asked)
    return present


def planned_cpu_count(stages, present: float, present_gpus: float, planned_gpus_: float,
                      maximum: dict[str, float] | None) -> float:
    """The CPUs to plan for: the configured maximum when published; when the plan counts on
    GPUs that are not up yet, at least the CPUs their actors ask for (`cpus`, default 1),
    which the nodes bringing those GPUs bring; otherwise what is present. Without the second,
    a cluster whose head has few CPUs would trim GPU pools to fit the head."""
    if maximum is not None:
        return max(present, maximum.get("CPU", 0.0))
    if planned_gpus_ <= present_gpus:
        return present
    arriving = sum((stage.cpus or 1.0) * (stage.replicas.max or stage.replicas.min)
                   for stage in stages if (stage.gpus or 0) > 0)
    return present + arriving
