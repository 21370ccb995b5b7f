import pytest

from pipeline.resources import PlanError, plan_resources
from pipeline.stages import parse_stage


def stages(*kinds, **fields):
    return [parse_stage({"kind": kind, "model": "m", **fields}) for kind in kinds]


@pytest.mark.parametrize("cpus, gpus", [(2, 0), (2, 2), (3, 1), (16, 8), (96, 8)])
@pytest.mark.parametrize("kinds", [("txt2img",), ("txt2img", "upscale"), ("txt2img", "img2img", "upscale")])
def test_actors_never_take_the_cpus_tasks_need(cpus, gpus, kinds):
    plan = plan_resources(stages(*kinds), cpus, gpus)
    actor_cpus = sum(s.max_replicas * s.cpus for s in plan.stages)
    # At least one whole CPU stays free: Ray Data's ListFiles task asks for exactly 1.
    assert cpus - actor_cpus >= 1
    assert plan.task_cpus <= plan.reserved_cpus
    assert sum(s.min_replicas * s.gpus for s in plan.stages) <= gpus


def test_two_gpu_stages_share_one_gpu():
    plan = plan_resources(stages("txt2img", "upscale"), 16, 1)
    assert [s.gpus for s in plan.stages] == [0.5, 0.5]


def test_gpu_stage_scales_to_every_gpu():
    plan = plan_resources(stages("txt2img"), 96, 8)
    assert (plan.stages[0].gpus, plan.stages[0].max_replicas) == (1.0, 8)


def test_explicit_cpus_that_would_deadlock_are_refused():
    with pytest.raises(PlanError, match="cpus"):
        plan_resources(stages("txt2img", "upscale", cpus=1), 2, 0)


def test_too_many_gpus_requested_is_refused():
    with pytest.raises(PlanError, match="GPUs"):
        plan_resources(stages("txt2img", gpus=1, replicas={"min": 3}), 8, 2)


def test_one_cpu_machine_is_refused_clearly():
    with pytest.raises(PlanError, match="at least 2 CPUs"):
        plan_resources(stages("txt2img"), 1, 0)


def test_an_autoscaling_cluster_is_planned_for_what_it_can_grow_to():
    from pipeline.capacity import planned_gpus

    auto = stages("txt2img")
    explicit = stages("txt2img", gpus=1, replicas={"min": 1, "max": 4})
    # The autoscaler publishes its maximum (v2, KubeRay): GPU workers at zero still plan for it.
    assert planned_gpus(auto, 0, {"GPU": 8.0, "CPU": 64.0}, True) == 8
    plan = plan_resources(auto, 64, planned_gpus(auto, 0, {"GPU": 8.0}, True))
    assert (plan.stages[0].gpus, plan.stages[0].max_replicas) == (1.0, 8)
    assert planned_gpus(auto, 2, {"CPU": 64.0}, True) == 2  # a maximum without GPUs: what is present
    # An autoscaler that publishes none (v1): the spec's explicit GPUs, never less than present.
    assert planned_gpus(explicit, 0, None, True) == 4
    assert planned_gpus(auto, 0, None, True) == 0
    assert planned_gpus(explicit, 6, None, True) == 6
    # No autoscaler: only what is present, so a spec asking for more is refused as before.
    assert planned_gpus(explicit, 0, None, False) == 0
    with pytest.raises(PlanError, match="GPUs"):
        plan_resources(explicit, 8, planned_gpus(explicit, 0, None, False))


def test_gpu_workers_not_up_yet_bring_the_cpus_their_actors_ask_for():
    from pipeline.capacity import planned_cpu_count, planned_gpus

    nightly = stages("txt2img", gpus=1, replicas={"min": 1, "max": 8})
    for head_cpus in (2, 4, 8):
        gpus = planned_gpus(nightly, 0, None, True)
        cpus = planned_cpu_count(nightly, head_cpus, 0, gpus, None)
        assert plan_resources(nightly, cpus, gpus, node_cpus=head_cpus).stages[0].max_replicas == 8
    # a published maximum, or nothing asked beyond what is up: as before
    assert planned_cpu_count(nightly, 4, 0, 8, {"CPU": 64.0}) == 64
    assert planned_cpu_count(nightly, 4, 8, 8, None) == 4
