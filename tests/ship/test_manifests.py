"""`modelbay manifests`: every emitted object validated (kubernetes-validate, strict, against the
Kubernetes versions it carries; the InferenceService against KServe's published CRD schema,
vendored in inferenceservice.schema.json), their content, determinism, and the refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from modelbay.cli.main import main

# The oldest and newest Kubernetes schemas kubernetes-validate carries, and one between.
VERSIONS = ("1.25.0", "1.30.0", "1.37.0")
KSERVE_SCHEMA = json.loads(Path(__file__).with_name("inferenceservice.schema.json").read_text())
FLAG_SETS = [
    [],
    ["--replicas", "3"],
    ["--hpa"],
    ["--replicas", "2", "--hpa", "--max", "6", "--cpu-target", "60", "--namespace", "models"],
    ["--cpu", "500m", "--memory", "2Gi", "--max-startup-s", "900", "--name", "digits-cnn"],
    ["--kserve"],
    ["--kserve", "--replicas", "3", "--hpa"],
    ["--fleet", "type=controller"],
    [
        "--fleet",
        "example.com/site=lab-1",
        "--toleration",
        "dedicated=edge:NoExecute",
        "--toleration",
        "example.com/flaky:PreferNoSchedule",
        "--max-unavailable",
        "2",
        "--namespace",
        "edge",
    ],
]


def emit(capsys: pytest.CaptureFixture[str], source: Path, *flags: str) -> list[dict[str, Any]]:
    assert main(["manifests", str(source), "--image", "registry.example.com/ml/digits:1", *flags]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def validate(document: dict[str, Any]) -> None:
    """Raise unless `document` is valid: Kubernetes' own schemas (strict: no unknown field) for
    built-in kinds, KServe's CRD schema for the InferenceService."""
    if document["kind"] == "InferenceService":
        jsonschema.Draft7Validator(KSERVE_SCHEMA).validate(document)
        return
    for version in VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in documents}


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda flags: " ".join(flags) or "default")
def test_every_emitted_manifest_validates(
    onnx_repository: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    documents = emit(capsys, onnx_repository, *flags)
    assert documents
    for document in documents:
        validate(document)


def test_the_validators_reject_what_kubernetes_and_kserve_would(
    onnx_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checks above can fail: an unknown field, a wrong type, protocolVersion where a custom
    predictor has none."""
    deployment = by_kind(emit(capsys, onnx_repository))["Deployment"]
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(unknown)
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong)
    (isvc,) = emit(capsys, onnx_repository, "--kserve")
    misplaced = copy.deepcopy(isvc)
    misplaced["spec"]["predictor"]["protocolVersion"] = "v2"
    with pytest.raises(jsonschema.ValidationError, match="protocolVersion"):
        validate(misplaced)
    bad_metric = copy.deepcopy(isvc)
    bad_metric["spec"]["predictor"]["scaleMetric"] = "gpu"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad_metric)


def test_the_deployment_probes_the_oip_health_routes_on_http_and_grpc_ports(
    onnx_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kinds = by_kind(emit(capsys, onnx_repository))
    assert list(kinds) == ["Deployment", "Service"]
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/ml/digits:1"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] == 300  # --max-startup-s
    # 256 MiB of server + twice the 163 KiB ONNX file, rounded up to 64 MiB
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "320Mi"},
        "limits": {"memory": "320Mi"},
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    service = kinds["Service"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [(p["name"], p["port"], p["appProtocol"]) for p in service["spec"]["ports"]] == [
        ("http", 8000, "http"),
        ("grpc", 8001, "grpc"),
    ]
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "1"


def test_a_torch_model_gets_more_memory(torch_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployment = by_kind(emit(capsys, torch_folder))["Deployment"]
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] == "576Mi"  # 512 MiB with torch + twice the 175 KiB .pt2


def test_hpa_scales_the_deployment_on_cpu_and_owns_its_replica_count(
    onnx_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kinds = by_kind(emit(capsys, onnx_repository, "--replicas", "3", "--hpa"))
    assert list(kinds) == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    assert "replicas" not in kinds["Deployment"]["spec"]
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_kserve_gets_a_custom_v2_predictor_container(
    onnx_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (isvc,) = emit(capsys, onnx_repository, "--kserve", "--replicas", "2", "--hpa", "--max", "5")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["annotations"] == {
        "serving.kserve.io/deploymentMode": "RawDeployment",
        "serving.kserve.io/autoscalerClass": "hpa",
    }
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 5)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 70)
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["env"] == [{"name": "PROTOCOL", "value": "v2"}]
    assert container["ports"] == [{"name": "http1", "containerPort": 8000, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    (fixed,) = emit(capsys, onnx_repository, "--kserve", "--replicas", "3")
    assert (fixed["spec"]["predictor"]["minReplicas"], fixed["spec"]["predictor"]["maxReplicas"]) == (3, 3)
    assert "scaleMetric" not in fixed["spec"]["predictor"]


def test_a_fleet_runs_on_every_labelled_node_with_host_ports_and_a_rolling_update(
    onnx_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--fleet", "type=controller", "--toleration", "dedicated=edge:NoExecute", "--namespace", "edge"]
    kinds = by_kind(emit(capsys, onnx_repository, *flags))
    assert list(kinds) == ["DaemonSet", "Service"]
    daemon = kinds["DaemonSet"]
    assert daemon["metadata"]["namespace"] == "edge"
    assert daemon["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0},
    }
    pod = daemon["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"type": "controller"}
    assert pod["tolerations"] == [
        {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoExecute"},
    ]
    ports = pod["containers"][0]["ports"]
    assert [(p["containerPort"], p["hostPort"]) for p in ports] == [(8000, 8000), (8001, 8001)]
    assert kinds["Service"]["spec"]["internalTrafficPolicy"] == "Local"


def test_the_output_is_deterministic_and_o_writes_it(
    onnx_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["manifests", str(onnx_repository), "--image", "digits:1", "--hpa"]
    assert main(flags) == 0
    first = capsys.readouterr().out
    assert main(flags) == 0
    assert capsys.readouterr().out == first
    assert main([*flags, "-o", str(tmp_path / "digits.yaml")]) == 0
    assert (tmp_path / "digits.yaml").read_text() == first
    assert first.startswith("# modelbay manifests for digits:1: kubectl apply -f FILE\n---\n")


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--fleet", "type=controller", "--hpa"], "--fleet runs one pod on each labelled node"),
        (["--fleet", "type=controller", "--kserve"], "--fleet runs one pod on each labelled node"),
        (["--min", "2"], "--min, --max and --cpu-target go with --hpa"),
        (["--hpa", "--min", "4", "--max", "2"], "--max 2 is below the minimum of 4 replicas"),
        (["--toleration", "a:NoSchedule"], "--toleration and --max-unavailable go with --fleet"),
        (["--name", "Not_A_Name!"], "cannot name the Kubernetes objects"),
        (["--kserve", "--name", "a" * 50], "at most 45 characters"),
    ],
)
def test_flags_that_do_not_go_together_are_refused_with_one_line(
    onnx_repository: Path, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    assert main(["manifests", str(onnx_repository), "--image", "digits:1", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("modelbay manifests: ") and said in captured.err
    assert captured.err.count("\n") == 1


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--fleet", "type"], "expected a node label KEY=VALUE"),
        (["--fleet", "type=not ok"], "expected a node label KEY=VALUE"),
        (["--cpu", "lots"], "is not a Kubernetes quantity"),
        (["--cpu=-1"], "is not a Kubernetes quantity"),
        (["--memory=-512Mi"], "is not a Kubernetes quantity"),
        (["--toleration", "a:Sometimes"], "EFFECT one of NoSchedule"),
        (["--replicas", "0"], "expected a whole number >= 1"),
    ],
)
def test_malformed_flags_get_argparse_usage_and_exit_2(
    onnx_repository: Path, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["manifests", str(onnx_repository), "--image", "digits:1", *flags])
    assert exit_info.value.code == 2
    assert said in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(
    onnx_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain-file").write_text("")
    output = tmp_path / "plain-file" / "digits.yaml"
    assert main(["manifests", str(onnx_repository), "--image", "digits:1", "-o", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("modelbay manifests: ") and "plain-file" in captured.err
    assert captured.err.count("\n") == 1


def test_a_repository_of_several_models_is_named_after_its_folder(
    onnx_repository: Path, torch_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    shutil.copytree(torch_folder, onnx_repository / "digits-pt2")
    deployment = by_kind(emit(capsys, onnx_repository))["Deployment"]
    assert deployment["metadata"]["name"] == "repository"
    memory = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
    assert memory == "576Mi"  # torch is in it: 512 MiB + twice both models' files
