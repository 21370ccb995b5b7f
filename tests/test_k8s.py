"""The KubeRay manifests under jobs/k8s/, checked against KubeRay's own CRD schemas (vendored from
a named release in jobs/k8s/crds/) as `kubectl apply` checks them: types and required fields,
and no field the CRD does not know (kubectl's strict field validation, the default)."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from jobs.schedule import load_schedule
from pipeline.spec import parse_spec

ROOT = Path(__file__).parent.parent
K8S = ROOT / "jobs" / "k8s"


def crd(kind: str) -> dict:
    files = sorted((K8S / "crds").glob(f"{kind.lower()}-v*.json"))
    assert len(files) == 1, f"one vendored {kind} schema, named by its KubeRay release: {files}"
    return json.loads(files[0].read_text())


def unknown_fields(document, schema: dict, where: str = "") -> list[str]:
    """Paths of fields that the schema neither declares nor lets through."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(document, dict) and "properties" in schema:
        for key, value in document.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{where}.{key}")
            elif "additionalProperties" not in schema:
                found.append(f"{where}.{key}")
    elif isinstance(document, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in document.items():
            found += unknown_fields(value, schema["additionalProperties"], f"{where}.{key}")
    elif isinstance(document, list) and "items" in schema:
        for index, item in enumerate(document):
            found += unknown_fields(item, schema["items"], f"{where}[{index}]")
    return found


def check(document: dict) -> None:
    schema = crd(document["kind"])
    assert document["apiVersion"] == schema["apiVersion"]
    jsonschema.validate(document, schema["openAPIV3Schema"])
    assert unknown_fields(document, schema["openAPIV3Schema"]) == []


def manifests(name: str) -> list[dict]:
    return [document for document in yaml.safe_load_all((K8S / name).read_text()) if document]


def test_the_vendored_schemas_name_their_kuberay_release():
    for kind in ("RayJob", "RayCronJob"):
        schema = crd(kind)
        assert schema["kuberay_release"].startswith("v1.") and schema["kuberay_release"] in schema["source"]
        assert int(schema["kuberay_release"].split(".")[1]) >= 6  # RayCronJob arrived in KubeRay 1.6


def test_the_rayjob_manifest_is_valid_and_runs_a_valid_job():
    documents = manifests("rayjob.yaml")
    rayjob = next(document for document in documents if document["kind"] == "RayJob")
    check(rayjob)
    config = next(document for document in documents if document["kind"] == "ConfigMap")
    parse_spec(yaml.safe_load(config["data"]["job.yaml"]))
    assert rayjob["spec"]["entrypoint"] == "synth run /synth/job.yaml"


def test_the_raycronjob_manifest_is_valid_and_fires_as_the_schedule_says():
    (cronjob,) = manifests("raycronjob.yaml")
    check(cronjob)
    entrypoint = cronjob["spec"]["jobTemplate"]["entrypoint"].split()
    assert entrypoint[:3] == ["synth", "schedule", "run"]
    schedule = load_schedule(ROOT / entrypoint[3].removeprefix("/home/ray/synth/"))
    assert (cronjob["spec"]["schedule"], cronjob["spec"]["timeZone"]) == (schedule.cron, schedule.timezone)
    workers = cronjob["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"]
    assert all(group["minReplicas"] == 0 for group in workers)  # GPUs only while a run needs them


def test_the_vm_crontab_fires_as_the_schedule_says():
    lines = [line for line in (ROOT / "jobs" / "crontab").read_text().splitlines() if line and line[0] != "#"]
    schedule = load_schedule(ROOT / "jobs" / "schedules" / "nightly.yaml")
    (line,) = lines
    assert line.startswith(schedule.cron + " ") and "synth schedule run jobs/schedules/nightly.yaml" in line
    # run in the Ray container that cluster.yaml starts; the host's zone set to the schedule's
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert f"docker exec {cluster['docker']['container_name']} " in line
    assert f"set-timezone {schedule.timezone}" in (ROOT / "jobs" / "crontab").read_text()


@pytest.mark.parametrize("break_it", [
    lambda m: m["spec"].update(schedule=5),
    lambda m: m["spec"].pop("jobTemplate"),
    lambda m: m["spec"]["jobTemplate"].update(entrypont="synth run job.yaml"),
    lambda m: m["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplicas="eight"),
])
def test_a_broken_manifest_is_caught(break_it):
    (cronjob,) = manifests("raycronjob.yaml")
    break_it(cronjob)
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        check(cronjob)
