"""cluster.yaml: valid for Ray's cluster launcher (its own schema and checks, as `ray up` runs
them), with GPU worker types that scale from zero, S3 through instance profiles and synth on
every node."""

import json
import os
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_own_schema_and_checks(config):
    schema = json.loads((Path(os.path.dirname(ray.autoscaler.__file__)) / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # what `ray up` runs: defaults merged, the schema, cross-field checks


def test_gpu_workers_are_a10g_and_h100_types_that_start_at_zero(config):
    types = config["available_node_types"]
    gpu_types = {name: kind for name, kind in types.items() if kind.get("resources", {}).get("GPU")}
    accelerators = {key for kind in gpu_types.values() for key in kind["resources"] if key.startswith("accelerator_type:")}
    assert accelerators == {"accelerator_type:A10G", "accelerator_type:H100"}
    assert all(kind["min_workers"] == 0 and kind["max_workers"] >= 1 for kind in gpu_types.values())
    assert {types[name]["node_config"]["InstanceType"] for name in gpu_types} == {"g5.2xlarge", "p5.48xlarge"}
    assert config["idle_timeout_minutes"] > 0
    # The launcher's max_workers must leave room for every GPU type at its maximum.
    assert config["max_workers"] >= sum(kind["max_workers"] for kind in gpu_types.values())


def test_s3_through_instance_profiles_and_synth_on_every_node(config):
    for name, kind in config["available_node_types"].items():
        assert kind["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    text = CLUSTER.read_text()
    for secret in ("aws_access_key_id", "aws_secret_access_key", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert secret not in text
    # setup_commands run on the head and every worker: this checkout, mounted and installed.
    assert config["file_mounts"]["/home/ray/synth"] == "."
    assert "pip install -e /home/ray/synth" in config["setup_commands"]
    assert not config.get("head_setup_commands") and not config.get("worker_setup_commands")
    assert any("--dashboard-port=8265" in command for command in config["head_start_ray_commands"])


def test_a_broken_cluster_yaml_is_caught(config):
    broken = yaml.safe_load(CLUSTER.read_text())
    broken["available_node_types"]["a10g"]["min_wokers"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        validate_config(prepare_config(broken))
