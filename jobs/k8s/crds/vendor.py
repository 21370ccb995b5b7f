"""Regenerate the vendored KubeRay CRD schemas from a KubeRay checkout at a release tag:

    git -C kuberay checkout v1.7.0
    python jobs/k8s/crds/vendor.py kuberay v1.7.0

Each file keeps the CRD's openAPIV3Schema of its served version, without the `description`
texts (most of the size: they document Kubernetes' own pod fields), and names the release.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

KINDS = {"RayJob": "ray.io_rayjobs.yaml", "RayCronJob": "ray.io_raycronjobs.yaml",
         # serve/rayservice.yaml
         "RayService": "ray.io_rayservices.yaml"}


def _strip(node):
    if isinstance(node, dict):
        # `description` is a documentation key, except where it is the name of a property.
        return {key: _strip(value) for key, value in node.items()
                if key != "description" or isinstance(value, dict)}
    if isinstance(node, list):
        return [_strip(item) for item in node]
    return node


def main(checkout: str, release: str) -> None:
    for kind, name in KINDS.items():
        crd = yaml.safe_load((Path(checkout) / "ray-operator/config/crd/bases" / name).read_text())
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        out = {
            "kuberay_release": release,
            "source": f"https://github.com/ray-project/kuberay/blob/{release}/ray-operator/config/crd/bases/{name}",
            "apiVersion": f"{crd['spec']['group']}/{version['name']}",
            "kind": kind,
            "openAPIV3Schema": _strip(version["schema"]["openAPIV3Schema"]),
        }
        target = Path(__file__).parent / f"{kind.lower()}-{release}.json"
        target.write_text(json.dumps(out, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"{target}: {target.stat().st_size} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:3])
