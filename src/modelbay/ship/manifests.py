"""`modelbay manifests`: Kubernetes objects that run a `modelbay build` image.

    default     Deployment + Service (+ HorizontalPodAutoscaler autoscaling/v2 with --hpa, and a
                PodDisruptionBudget when more than one replica may run)
    --kserve    a KServe InferenceService (serving.kserve.io/v1beta1) whose predictor is the
                image as a custom container speaking the Open Inference Protocol v2
    --fleet K=V an edge fleet: a DaemonSet on every node labelled K=V (nodeSelector), tolerating
                the edge nodes' taints, the ports bound on the node (hostPort), rolled out a
                share of the nodes at a time; and a Service that keeps in-cluster callers on
                their own node (internalTrafficPolicy: Local)

KServe details (kserve/kserve, pkg/apis/serving/v1beta1/predictor_custom.go and
pkg/constants/constants.go): a custom predictor declares its protocol with the environment
variable PROTOCOL (v2), the field `protocolVersion` belonging to the model-format predictors;
its container is named kserve-container and exposes one port (Knative's rule), the HTTP one.
The RawDeployment mode (KServe's "Standard") gives it a plain Deployment and, with --hpa,
an HPA on CPU (autoscalerClass hpa).

The output is multi-document YAML (PyYAML), keys in Kubernetes' usual order; the same inputs
give the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import yaml

from modelbay.ship.images import GRPC_PORT, HTTP_PORT
from modelbay.ship.pods import PodPlan, container, labels, pod_spec, selector

# An edge node's usual taint: KubeEdge's role label, kept off ordinary workloads.
EDGE_TOLERATIONS = (("node-role.kubernetes.io/edge", None, "NoSchedule"),)
KSERVE_PROTOCOL = "v2"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
NAME_MAX = 63  # a DNS-1035 label; an InferenceService's also prefixes "-predictor" names
KSERVE_NAME_MAX = 45


@dataclass(frozen=True)
class Autoscaling:
    """HPA bounds: replicas between min_replicas and max_replicas, aiming at `cpu_target_percent`
    average CPU utilisation (of the CPU request)."""

    min_replicas: int
    max_replicas: int
    cpu_target_percent: int = 70


@dataclass(frozen=True)
class Rollout:
    """What to emit.

    pod:          the pod (pods.PodPlan).
    namespace:    metadata.namespace of every object, or None (kubectl's current namespace).
    replicas:     Deployment replicas, or the InferenceService's fixed count without autoscaling.
    autoscaling:  an HPA (or KServe's autoscaling), or None.
    kserve:       emit an InferenceService instead of a Deployment and a Service.
    fleet:        (label key, value): emit an edge-fleet DaemonSet instead.
    tolerations:  (key, value or None, effect) of the taints the fleet's pods tolerate.
    max_unavailable: the fleet's rollout: nodes (or a percentage) updated at once.
    """

    pod: PodPlan
    namespace: str | None = None
    replicas: int = 1
    autoscaling: Autoscaling | None = None
    kserve: bool = False
    fleet: tuple[str, str] | None = None
    tolerations: tuple[tuple[str, str | None, str], ...] = EDGE_TOLERATIONS
    max_unavailable: int | str = "10%"


def app_name(text: str, *, kserve: bool = False, exact: bool = False) -> str:
    """`text` as an object name (DNS-1035 label: lowercase letters, digits and '-', starting with
    a letter, at most 63 characters; 45 for an InferenceService, whose name KServe extends).
    A folder's name is lowercased and its other characters made '-'; an `exact` name (--name)
    must be one already.

    Raises ValueError saying why when `text` cannot be made into one.
    """
    name = text if exact else re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    limit = KSERVE_NAME_MAX if kserve else NAME_MAX
    if not _DNS_1035.match(name) or len(name) > limit:
        raise ValueError(
            f"{text!r} cannot name the Kubernetes objects: pass --name with lowercase letters, digits "
            f"and '-', starting with a letter, at most {limit} characters"
        )
    return name


def label_value(text: str | None) -> str | None:
    """`text` if it is a valid label value (63 characters, alphanumeric at both ends), else None."""
    if text is None or len(text) > 63 or not _LABEL_VALUE.match(text):
        return None
    return text


def manifests(rollout: Rollout) -> list[dict[str, Any]]:
    """The objects for `rollout`, in the order `kubectl apply` should create them."""
    if rollout.kserve:
        return [inference_service(rollout)]
    if rollout.fleet is not None:
        return [daemon_set(rollout), service(rollout, node_local=True)]
    objects = [deployment(rollout), service(rollout)]
    if rollout.autoscaling is not None:
        objects.append(autoscaler(rollout, rollout.autoscaling))
    most = rollout.autoscaling.max_replicas if rollout.autoscaling else rollout.replicas
    if most > 1:
        objects.append(disruption_budget(rollout))
    return objects


def dump(objects: list[dict[str, Any]], comment: str) -> str:
    """Multi-document YAML of `objects`, after a `#` comment line."""
    body = yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True, default_flow_style=False)
    return f"# {comment}\n{body}"


def deployment(rollout: Rollout) -> dict[str, Any]:
    """apps/v1 Deployment: a rolling update that never drops below the wanted replicas."""
    spec: dict[str, Any] = {}
    if rollout.autoscaling is None:  # with an HPA, the HPA owns the count (apply would reset it)
        spec["replicas"] = rollout.replicas
    spec.update(
        {
            "selector": {"matchLabels": selector(rollout.pod)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": _template(rollout.pod),
        }
    )
    return _object("apps/v1", "Deployment", rollout, spec)


def service(rollout: Rollout, *, node_local: bool = False) -> dict[str, Any]:
    """v1 Service on HTTP 8000 and gRPC 8001 (appProtocol grpc); `node_local`: callers in the
    cluster reach the pod on their own node (a fleet's)."""
    spec: dict[str, Any] = {"type": "ClusterIP", "selector": selector(rollout.pod)}
    if node_local:
        spec["internalTrafficPolicy"] = "Local"
    spec["ports"] = [
        {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
        {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
    ]
    return _object("v1", "Service", rollout, spec)


def autoscaler(rollout: Rollout, scaling: Autoscaling) -> dict[str, Any]:
    """autoscaling/v2 HorizontalPodAutoscaler of the Deployment on average CPU utilisation."""
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": rollout.pod.name}
    metric = {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": scaling.cpu_target_percent},
    }
    spec = {
        "scaleTargetRef": target,
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": [{"type": "Resource", "resource": metric}],
    }
    return _object("autoscaling/v2", "HorizontalPodAutoscaler", rollout, spec)


def disruption_budget(rollout: Rollout) -> dict[str, Any]:
    """policy/v1 PodDisruptionBudget: a node drain takes one replica at a time."""
    spec = {"maxUnavailable": 1, "selector": {"matchLabels": selector(rollout.pod)}}
    return _object("policy/v1", "PodDisruptionBudget", rollout, spec)


def inference_service(rollout: Rollout) -> dict[str, Any]:
    """serving.kserve.io/v1beta1 InferenceService with the image as a custom v2 predictor."""
    pod = replace(
        rollout.pod, container="kserve-container", env={**rollout.pod.env, "PROTOCOL": KSERVE_PROTOCOL}
    )
    scaling = rollout.autoscaling
    predictor: dict[str, Any] = {
        "minReplicas": scaling.min_replicas if scaling else rollout.replicas,
        "maxReplicas": scaling.max_replicas if scaling else rollout.replicas,
    }
    if scaling is not None:
        predictor.update({"scaleMetric": "cpu", "scaleTarget": scaling.cpu_target_percent})
    spec = pod_spec(pod)
    http = [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    spec["containers"] = [container(pod, ports=http)]
    predictor.update(spec)
    annotations = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    if scaling is not None:
        annotations["serving.kserve.io/autoscalerClass"] = "hpa"
    isvc = _object("serving.kserve.io/v1beta1", "InferenceService", rollout, {"predictor": predictor})
    isvc["metadata"]["annotations"] = annotations
    return isvc


def daemon_set(rollout: Rollout) -> dict[str, Any]:
    """apps/v1 DaemonSet on every node carrying the fleet's label; the pod's ports on the node."""
    assert rollout.fleet is not None
    key, value = rollout.fleet
    template = _template(replace(rollout.pod, host_ports=True))
    template["spec"] = {
        "nodeSelector": {key: value},
        "tolerations": [_toleration(*taint) for taint in rollout.tolerations],
        **template["spec"],
    }
    spec = {
        "selector": {"matchLabels": selector(rollout.pod)},
        # maxSurge stays 0: a second pod on a node could not bind the same host ports.
        "updateStrategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": rollout.max_unavailable, "maxSurge": 0},
        },
        "minReadySeconds": 10,
        "template": template,
    }
    return _object("apps/v1", "DaemonSet", rollout, spec)


def _template(pod: PodPlan) -> dict[str, Any]:
    return {"metadata": {"labels": labels(pod)}, "spec": pod_spec(pod)}


def _toleration(key: str, value: str | None, effect: str) -> dict[str, Any]:
    if value is None:
        return {"key": key, "operator": "Exists", "effect": effect}
    return {"key": key, "operator": "Equal", "value": value, "effect": effect}


def _object(api_version: str, kind: str, rollout: Rollout, spec: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": rollout.pod.name}
    if rollout.namespace is not None:
        metadata["namespace"] = rollout.namespace
    metadata["labels"] = labels(rollout.pod)
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}
