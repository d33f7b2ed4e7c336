"""The pod that runs a `modelbay build` image: its container, probes, resources and security
context, shared by the Deployment, the InferenceService and the edge-fleet DaemonSet
(manifests.py).

Probes: the server listens only once every model has loaded, so a startupProbe on the liveness
route gives a slow load `max_startup_s` before liveness (restart when the process hangs) and
readiness (traffic only while every model is ready, /v2/health/ready) take over. Resources: a
CPU request (what the HPA's utilisation is measured against) and a memory request and limit,
estimated from the models unless given; no CPU limit, whose CFS quota throttles a busy server
into tail latency (the request already reserves the cores). Security: a numeric non-root user
(the image's), no privilege escalation, every capability dropped, the runtime's seccomp profile,
a read-only root filesystem with an emptyDir on /tmp (the image's HOME), and no service account
token (the server never calls the Kubernetes API).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from modelbay.ship.images import GRPC_PORT, HTTP_PORT, LIVE_PATH, READY_PATH, UID

MIB = 1 << 20
# A server's memory before its models' weights, with room for batches: measured RSS of `modelbay
# serve` on the digits CNN after a request, 365 MiB as a .pt2 (torch loaded), 107 MiB as ONNX.
BASE_MIB = {True: 512, False: 256}
GRACEFUL_TIMEOUT_S = 30  # `modelbay serve`'s default graceful_timeout_s
PRESTOP_SLEEP_S = 5  # endpoints drop the pod while it still answers (kube-proxy catches up)
STARTUP_PERIOD_S = 5


@dataclass(frozen=True)
class PodPlan:
    """The pod's settings.

    name:          the app's name (DNS-1035 label): labels, container and object names.
    image:         the image reference (tag or digest).
    cpu:           CPU request, in Kubernetes quantity form ("1", "500m").
    memory:        memory request and limit, in Kubernetes quantity form ("768Mi").
    max_startup_s: seconds a start (loading every model) may take before the pod is restarted.
    host_ports:    also bind the ports on the node (edge fleets: clients on the box or its LAN).
    container:     the container's name (KServe wants kserve-container).
    env:           extra environment variables, name -> value.
    version:       the app.kubernetes.io/version label (the image's tag), or None.
    """

    name: str
    image: str
    cpu: str
    memory: str
    max_startup_s: int = 300
    host_ports: bool = False
    container: str = "modelbay"
    env: dict[str, str] = field(default_factory=dict)
    version: str | None = None


def estimated_memory(model_bytes: int, torch: bool) -> str:
    """A memory request for a server of these models: the base (BASE_MIB) plus twice their
    files' size (the weights loaded, and a file's pages while it is read), rounded up to 64 MiB.
    """
    mib = BASE_MIB[torch] + 2 * model_bytes / MIB
    return f"{math.ceil(mib / 64) * 64}Mi"


def labels(plan: PodPlan) -> dict[str, str]:
    """The recommended app.kubernetes.io labels (kubernetes.io/docs: common labels)."""
    found = {
        "app.kubernetes.io/name": plan.name,
        "app.kubernetes.io/instance": plan.name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": "modelbay",
    }
    if plan.version is not None:
        found["app.kubernetes.io/version"] = plan.version
    return found


def selector(plan: PodPlan) -> dict[str, str]:
    """The labels a controller selects its pods by (immutable once applied: no version)."""
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/instance": plan.name}


def pod_spec(plan: PodPlan) -> dict[str, Any]:
    """The pod's spec: one container, the /tmp volume, the security context."""
    return {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": GRACEFUL_TIMEOUT_S + PRESTOP_SLEEP_S + 5,
        "containers": [container(plan)],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }


def container(plan: PodPlan, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The server's container (ports: default HTTP and gRPC, named http and grpc)."""
    spec: dict[str, Any] = {
        "name": plan.container,
        "image": plan.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": ports if ports is not None else container_ports(plan),
    }
    if plan.env:
        spec["env"] = [{"name": key, "value": value} for key, value in sorted(plan.env.items())]
    spec.update(
        {
            "startupProbe": _probe(
                LIVE_PATH, STARTUP_PERIOD_S, math.ceil(plan.max_startup_s / STARTUP_PERIOD_S)
            ),
            "livenessProbe": _probe(LIVE_PATH, 10, 3),
            "readinessProbe": _probe(READY_PATH, 5, 2),
            "resources": {
                "requests": {"cpu": plan.cpu, "memory": plan.memory},
                "limits": {"memory": plan.memory},
            },
            "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
    )
    return spec


def container_ports(plan: PodPlan) -> list[dict[str, Any]]:
    """HTTP 8000 and gRPC 8001, on the node too with `host_ports`."""
    ports = []
    for name, number in (("http", HTTP_PORT), ("grpc", GRPC_PORT)):
        port: dict[str, Any] = {"name": name, "containerPort": number, "protocol": "TCP"}
        if plan.host_ports:
            port["hostPort"] = number
        ports.append(port)
    return ports


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT},
        "periodSeconds": period_s,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }
