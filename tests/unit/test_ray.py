"""modelbay.ray without a cluster: the options, the versions to deploy, the metrics sum, the CLI's refusals.

tests/e2e/test_ray.py runs all of it on a real two-node Ray cluster.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import msgspec
import pytest

from modelbay.cli.main import main
from modelbay.errors import ModelLoadError
from modelbay.metrics import Metrics
from modelbay.ray.metrics import merge
from modelbay.ray.options import SERVE_ENV, RayOptions, model_configs, model_deployment_options
from modelbay.settings import BatchingConfig, ModelConfig, Settings
from tests.conftest import DIGITS, sample

ONNX = DIGITS / "artifacts" / "digits.onnx"


def test_options_from_serve_run_strings() -> None:
    options = RayOptions.parse({"autoscale": "1:8", "target_ongoing_requests": "16", "num_cpus": "0.5"})
    assert (options.autoscale, options.target_ongoing_requests, options.num_cpus) == ("1:8", 16.0, 0.5)
    assert RayOptions.parse({"replicas": "3"}).replicas == 3


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"replicas": "0"}, "replicas must be >= 1"),
        ({"autoscale": "8"}, "autoscale must be MIN:MAX replicas, e.g. 1:8, got '8'"),
        ({"autoscale": "3:1"}, "autoscale needs 0 <= MIN <= MAX"),
        ({"target_ongoing_requests": "4"}, "target_ongoing_requests needs autoscale MIN:MAX"),
        ({"autoscale": "1:2", "target_ongoing_requests": "0"}, "target_ongoing_requests must be > 0"),
        ({"num_gpus": "-1"}, "num_cpus and num_gpus must be >= 0"),
        ({"replica": "2"}, "Object contains unknown field `replica`"),
    ],
)
def test_bad_options_are_refused_naming_the_field(fields: dict[str, str], said: str) -> None:
    with pytest.raises(ModelLoadError, match="Ray options") as raised:
        RayOptions.parse(fields)
    assert said in raised.value.message


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ({"port": "not-a-port"}, "Expected `int`, got `str` - at `$.port`"),
        ({"port": "70000"}, "port and grpc_port must be 0-65535"),
    ],
)
def test_builder_refuses_a_bad_port_naming_it(args: dict[str, str], said: str) -> None:
    """`serve run modelbay.ray:app port=...`: the front's port, checked before anything deploys."""
    with warnings.catch_warnings():  # Ray Serve's own pydantic models use deprecated Field keywords
        warnings.simplefilter("ignore", DeprecationWarning)
        from modelbay.ray.app import app

    with pytest.raises(ModelLoadError) as raised:
        app(args)
    assert said in raised.value.message


def test_the_serve_settings_are_ones_this_ray_reads() -> None:
    """SERVE_ENV names variables Ray Serve reads as a process starts: a Ray that renamed one would
    silently put the application back on the slow path."""
    import ray.serve._private.constants as constants

    source = Path(constants.__file__).read_text()
    for name in SERVE_ENV:
        assert f'"{name}"' in source, name


def test_the_environment_overrides_a_serve_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster whose replicas' gRPC ports the head cannot reach: Ray actor calls instead."""
    monkeypatch.setenv("RAY_SERVE_USE_GRPC_BY_DEFAULT", "0")
    config = ModelConfig(name="digits", version="1")
    env_vars = model_deployment_options(config, RayOptions())["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env_vars == {**SERVE_ENV, "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0"}


def test_deployment_options_of_a_version() -> None:
    config = ModelConfig(
        name="digits", version="2", batching=BatchingConfig(max_batch_size=16, max_queue_size=100)
    )
    fixed = model_deployment_options(config, RayOptions(replicas=3, num_cpus=2, num_gpus=0.5))
    assert fixed["name"] == "digits:2"
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {
        "num_cpus": 2,
        "num_gpus": 0.5,
        "runtime_env": {"env_vars": SERVE_ENV},
    }
    # Serve's default of 5 requests per replica would starve the batcher; past the queue, 503.
    assert fixed["max_ongoing_requests"] == fixed["max_queued_requests"] == 100
    scaled = model_deployment_options(config, RayOptions(autoscale="0:4"))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 16.0,  # a full batch per replica
        "policy": {"policy_function": "modelbay.ray.autoscaling:requests_held_policy"},
    }
    targeted = model_deployment_options(config, RayOptions(autoscale="1:8", target_ongoing_requests=32))
    assert targeted["autoscaling_config"]["target_ongoing_requests"] == 32


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for name, version in (("digits", "1"), ("digits", "2"), ("other", "1")):
        (tmp_path / "models" / name / version).mkdir(parents=True)
        shutil.copy(ONNX, tmp_path / "models" / name / version / "digits.onnx")
    return tmp_path / "models"


def test_versions_to_deploy_from_a_repository_and_paths(
    repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(ONNX, tmp_path / "solo.v3.onnx")
    settings = Settings.load(overrides={"model_repository": "models", "models": [{"path": "solo.v3.onnx"}]})
    configs = model_configs(settings)
    assert [(c.name, c.version) for c in configs] == [
        ("solo", "1"),
        ("digits", "1"),
        ("digits", "2"),
        ("other", "1"),
    ]
    assert all(c.path is not None and Path(c.path).is_absolute() and Path(c.path).exists() for c in configs)
    only = msgspec.structs.replace(settings, models=[], load_models=["other"])
    assert [(c.name, c.version) for c in model_configs(only)] == [("other", "1")]


def test_versions_to_deploy_refused(repository: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no model to serve"):
        model_configs(Settings())
    with pytest.raises(ModelLoadError, match="is not a folder"):
        model_configs(Settings(model_repository=str(tmp_path / "absent")))
    twice = Settings.load(overrides={"models": [{"path": str(ONNX)}, {"path": str(ONNX)}]})
    with pytest.raises(ModelLoadError, match="model 'digits' version 1 is given twice"):
        model_configs(twice)


def test_metrics_of_the_front_and_replicas_add_up() -> None:
    front, first, second = Metrics(), Metrics(), Metrics()
    depths = {"front": 0.0, "first": 3.0, "second": 4.0}
    bound = {
        key: metrics.for_model("digits", "1", lambda key=key: depths[key])
        for key, metrics in (("front", front), ("first", first), ("second", second))
    }
    for _ in range(5):
        bound["front"].on_request("infer", 0.004, None)
    bound["first"].on_batch(3, [0.001, 0.001, 0.003], 0.002)
    bound["second"].on_batch(2, [0.001, 0.02], 0.004)
    text = merge([front.render(), first.render(), second.render()]).decode()
    labels = {"model": "digits", "version": "1"}
    assert sample(text, "modelbay_requests_total", door="infer", status="success", **labels) == 5
    assert sample(text, "modelbay_batch_size_count", **labels) == 2
    assert sample(text, "modelbay_batch_size_sum", **labels) == 5
    assert sample(text, "modelbay_batch_size_bucket", le="2.0", **labels) == 1
    assert sample(text, "modelbay_batch_size_bucket", le="4.0", **labels) == 2
    assert sample(text, "modelbay_queue_wait_seconds_bucket", le="0.005", **labels) == 4
    assert sample(text, "modelbay_queue_wait_seconds_count", **labels) == 5
    assert sample(text, "modelbay_queue_depth", **labels) == 7
    created = [
        sample(m.render().decode(), "modelbay_batch_size_created", **labels) for m in (front, first, second)
    ]
    assert sample(text, "modelbay_batch_size_created", **labels) == min(created)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--replicas", "2"], "modelbay: cannot serve: --replicas: only with --ray ADDRESS"),
        (["--ray", "auto", "--autoscale", "3:1"], "autoscale needs 0 <= MIN <= MAX and MAX >= 1, got '3:1'"),
        (
            ["--ray", "auto", "--workers", "2"],
            "--workers does not apply with --ray: use --replicas or --autoscale",
        ),
        (["--ray", "auto", "--port", "0"], "with --ray, --port must name a port"),
    ],
)
def test_serve_refuses_bad_ray_flags_in_one_line(
    flags: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(ONNX), *flags]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err


def test_autoscaling_counts_the_requests_replicas_hold_not_calls() -> None:
    """Serve's own policy wrapper (bounds, delays) around modelbay's, on a real Serve config."""
    with warnings.catch_warnings():  # Ray Serve's own pydantic models use deprecated Field keywords
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.serve._private.autoscaling_state import (
            _apply_autoscaling_config,
            _resolve_policy_callable,
        )
        from ray.serve._private.common import DeploymentID, ReplicaID
        from ray.serve.config import AutoscalingConfig, AutoscalingContext

        from modelbay.ray.autoscaling import HELD

    config = ModelConfig(name="digits", version="1", batching=BatchingConfig(max_batch_size=16))
    options = model_deployment_options(config, RayOptions(autoscale="1:8"))["autoscaling_config"]
    serve_config = AutoscalingConfig(**options, upscale_delay_s=0, downscale_delay_s=0)
    policy = _apply_autoscaling_config(_resolve_policy_callable(serve_config.policy))
    deployment = DeploymentID(name="digits:1", app_name="modelbay")
    ids = [ReplicaID(f"r{i}", deployment) for i in range(2)]

    def decide(held: dict[ReplicaID, float] | None, calls: float) -> int:
        context = AutoscalingContext(
            deployment_id=deployment,
            deployment_name="digits:1",
            app_name="modelbay",
            current_num_replicas=2,
            target_num_replicas=2,
            running_replicas=ids,
            total_num_requests=calls,  # Serve's count: calls from the front
            total_queued_requests=0.0,
            aggregated_metrics=None if held is None else {HELD: held},
            raw_metrics=None,
            capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=8,
            policy_state={},
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=1000.0,
            config=serve_config,
        )
        return policy(context)[0]

    # Four calls carrying 96 requests: 96 / 16 = 6 replicas (Serve's count alone would say 1).
    assert decide({ids[0]: 50.0, ids[1]: 46.0}, calls=4) == 6
    assert decide({ids[0]: 4.0, ids[1]: 0.0}, calls=1) == 1  # a quarter of one replica's target
    assert decide(None, calls=64) == 4  # before the replicas report: Serve's own count
