"""Cut the vendored InferenceService schema (inferenceservice.schema.json, beside this file) out of
KServe's published CRD: the v1beta1 openAPIV3Schema, pruned to the fields `modelbay manifests
--kserve` emits, each kept field with its complete published subtree, and
`additionalProperties: false` on every pruned object, so a field KServe does not define (or one
modelbay emits without vendoring it) fails the test.

    curl -LO https://raw.githubusercontent.com/kserve/kserve/v0.20.0/config/crd/full/serving.kserve.io_inferenceservices.yaml
    python tests/ship/vendor_kserve_schema.py serving.kserve.io_inferenceservices.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

SOURCE = (
    "https://github.com/kserve/kserve/blob/v0.20.0/config/crd/full/serving.kserve.io_inferenceservices.yaml"
    " (commit 1fb781055dd1567164358233e1125142ca6ef1fe), versions[v1beta1].schema.openAPIV3Schema"
)
# The fields kept, as a tree: None keeps the field's whole published subtree.
KEPT: dict[str, Any] = {
    "apiVersion": None,
    "kind": None,
    "metadata": None,
    "spec": {
        "predictor": {
            "minReplicas": None,
            "maxReplicas": None,
            "scaleMetric": None,
            "scaleTarget": None,
            "automountServiceAccountToken": None,
            "securityContext": None,
            "terminationGracePeriodSeconds": None,
            "containers": {
                "name": None,
                "image": None,
                "imagePullPolicy": None,
                "ports": None,
                "env": None,
                "startupProbe": None,
                "livenessProbe": None,
                "readinessProbe": None,
                "resources": None,
                "lifecycle": None,
                "securityContext": None,
                "volumeMounts": None,
            },
            "volumes": {"name": None, "emptyDir": None},
        }
    },
}


def prune(schema: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    """`schema` (an object, or an array of objects) with only the `kept` properties."""
    if schema.get("type") == "array":
        return {**schema, "items": prune(schema["items"], kept)}
    properties = {
        name: schema["properties"][name] if sub is None else prune(schema["properties"][name], sub)
        for name, sub in kept.items()
    }
    pruned = {**schema, "properties": properties, "additionalProperties": False}
    if "required" in schema:
        pruned["required"] = [name for name in schema["required"] if name in kept]
    return pruned


def main(crd_path: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = prune(version["schema"]["openAPIV3Schema"], KEPT)
    schema = {"$comment": f"Pruned from {SOURCE} by tests/ship/vendor_kserve_schema.py", **schema}
    out = Path(__file__).with_name("inferenceservice.schema.json")
    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
