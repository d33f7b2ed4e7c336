"""A model's traffic policy (registry/traffic.py): its rules, weights, sticky buckets, and how the
registry resolves it against the versions served (renormalised when one leaves)."""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest
import torch

from modelbay.errors import InvalidInput, ModelLoadError, ModelNotFound
from modelbay.loading.torch_runner import TorchRunner, example_inputs
from modelbay.registry.registry import ModelRegistry, ServedModel
from modelbay.registry.traffic import Route, bucket, policy_json, resolve, traffic_policy
from modelbay.runtime.context import RequestContext
from modelbay.settings import BatchingConfig, TrafficConfig, model_config, model_entry
from modelbay.tasks.tensor import TensorPredictor
from tests.conftest import tiny_module


def served(version: str, traffic: TrafficConfig | None = None, name: str = "tiny") -> ServedModel:
    """A real (not started) served version of the tiny MLP."""
    module = tiny_module()
    runner = TorchRunner(module, "pytorch_eager", example_inputs(torch.zeros(1, 4), ["input"]))
    return ServedModel(name, version, TensorPredictor(runner), BatchingConfig(), traffic=traffic)


def registry_of(*versions: str) -> ModelRegistry:
    registry = ModelRegistry()
    for version in versions:
        registry.add(served(version))
    return registry


def policy(**fields: Any) -> TrafficConfig:
    found = traffic_policy(fields)
    assert found is not None
    return found


def grid(count: int) -> Any:
    """Draws spread evenly over [0, 1): (i + 0.5) / count, i = 0 .. count-1, then again."""
    values = iter([(i + 0.5) / count for i in range(count)] * 2)
    return lambda: next(values)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"split": {"2": -1, "3": 10}}, "split weights must be >= 0 and sum to > 0"),
        ({"split": {"2": 0, "3": 0}}, "split weights must be >= 0 and sum to > 0"),
        ({"split": {}}, "split weights must be >= 0 and sum to > 0"),
        ({"split": {"2": float("nan")}}, "split weights must be >= 0"),
        ({"split": {"2": float("inf")}}, "split weights must be >= 0"),
        ({"split": {"": 1}}, "split names an empty version"),
        ({"split": {"2": "ninety"}}, "Expected `float`, got `str`"),
        ({"shadow": {"version": "4", "percent": 101}}, "shadow.percent must be in [0, 100]"),
        ({"shadow": {"version": "4", "percent": -0.5}}, "shadow.percent must be in [0, 100]"),
        ({"shadow": {"version": "4", "tolerance": -1}}, "shadow.tolerance >= 0"),
        ({"shadow": {"version": ""}}, "shadow.version must name a model version"),
        ({"shadow": {"percent": 20}}, "Object missing required field `version`"),
        ({"sticky": {"header": "x-user-id"}}, "sticky needs a split"),
        ({"split": {"2": 1}, "sticky": {"header": " "}}, "sticky.header must name a request header"),
        ({"split": {"2": 1}, "canary": True}, "unknown field `canary`"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_rule(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match="^traffic: .*" + message.replace("[", r"\[").replace("$", r"\$")):
        traffic_policy(fields)
    with pytest.raises(ModelLoadError, match=message.replace("[", r"\[").replace("$", r"\$")):
        model_config({"path": "x", "traffic": fields})


def test_a_policy_from_json_or_yaml() -> None:
    assert traffic_policy(None) is None
    with pytest.raises(InvalidInput, match="must be a JSON object or null, got list"):
        traffic_policy([["2", 90]])
    given = {"split": {"2": 90, "3": 10}, "sticky": {"header": "X-User-Id"}, "shadow": {"version": "4"}}
    found = policy(**given)
    assert policy_json(found) == {
        "split": {"2": 90.0, "3": 10.0},
        "sticky": {"header": "X-User-Id"},
        "shadow": {"version": "4", "percent": 100.0, "tolerance": 1e-4},
    }
    # YAML reads `split: {2: 90}` and `version: 4` as numbers; versions are strings.
    yaml_like = {"path": "x", "traffic": {"split": {2: 90, 3: 10}, "shadow": {"version": 4, "percent": 20}}}
    config = model_config(model_entry(yaml_like))
    assert config.traffic == policy(split={"2": 90, "3": 10}, shadow={"version": "4", "percent": 20})


def test_the_split_follows_the_weights() -> None:
    route = resolve(policy(split={"2": 90, "3": 10}), {"2": served("2"), "3": served("3")})
    assert route is not None
    draw = grid(1000)
    picked = collections.Counter(route.pick(None, draw) for _ in range(1000))
    assert picked == {"2": 900, "3": 100}  # evenly spread draws land exactly by weight
    seeded = random.Random(7).random
    shares = collections.Counter(route.pick(RequestContext(), seeded) for _ in range(20_000))
    assert shares["3"] / 20_000 == pytest.approx(0.10, abs=0.01)
    assert route.shares() == {"2": 90.0, "3": 10.0}


def test_a_version_of_weight_zero_is_never_picked() -> None:
    route = resolve(policy(split={"1": 0, "2": 3, "3": 1}), {v: served(v) for v in "123"})
    assert route is not None and route.split == ("2", "3") and route.shares() == {"2": 75.0, "3": 25.0}
    draw = grid(400)
    picked = collections.Counter(route.pick(None, draw) for _ in range(400))
    assert picked == {"2": 300, "3": 100}


def test_sticky_callers_keep_their_version_and_spread_by_weight() -> None:
    versions = {"2": served("2"), "3": served("3")}
    route = resolve(policy(split={"2": 70, "3": 30}, sticky={"header": "X-User-Id"}), versions)
    rebuilt = resolve(policy(split={"2": 70, "3": 30}, sticky={"header": "x-user-id"}), versions)
    assert route is not None and rebuilt is not None
    seeded = random.Random(3).random
    first = {}
    for user in range(2000):
        context = RequestContext(headers={"x-user-id": f"user-{user}"})  # doors give lower-case names
        first[user] = route.pick(context, seeded)
        assert all(route.pick(context, seeded) == first[user] for _ in range(5))
        assert rebuilt.pick(context, seeded) == first[user]  # the bucket is a stable hash
        threshold = 70.0
        assert first[user] == ("2" if bucket(f"user-{user}") < threshold else "3")
    assert collections.Counter(first.values())["3"] / 2000 == pytest.approx(0.30, abs=0.03)
    # The hash is BLAKE2b: the same in every process and release (unlike hash()).
    assert bucket("alice") == pytest.approx(30.43658763184171, abs=1e-9)


def test_without_the_sticky_header_the_routing_key_then_chance_decide() -> None:
    route = resolve(
        policy(split={"2": 50, "3": 50}, sticky={"header": "x-user-id"}), {v: served(v) for v in "23"}
    )
    assert route is not None
    keyed = RequestContext(routing_key="session-9")
    always = route.pick(keyed, random.Random(1).random)
    assert {route.pick(keyed, random.Random(seed).random) for seed in range(50)} == {always}
    assert {route.pick(RequestContext(), random.Random(seed).random) for seed in range(50)} == {"2", "3"}


def test_the_registry_renormalises_when_a_version_leaves_and_falls_back_to_the_default() -> None:
    registry = registry_of("2", "3", "4")
    registry.set_traffic("tiny", policy(split={"2": 50, "3": 30, "4": 20}, shadow={"version": "4"}))
    route = registry.routes["tiny"]
    assert route.shares() == {"2": 50.0, "3": 30.0, "4": 20.0} and route.shadow is registry.get("tiny", "4")
    registry.remove(registry.get("tiny", "4"))
    route = registry.routes["tiny"]
    assert route.shares() == {"2": 62.5, "3": 37.5} and route.shadow is None  # the shadow stops
    registry.remove(registry.get("tiny", "2"))
    registry.remove(registry.get("tiny", "3"))
    registry.add(served("5"))
    assert "tiny" not in registry.routes  # none of the split left: the default version answers
    assert registry.get("tiny").version == "5"
    registry.add(served("3"))
    assert registry.routes["tiny"].shares() == {"3": 100.0}  # a version of the policy comes back
    assert registry.traffic("tiny") == policy(split={"2": 50, "3": 30, "4": 20}, shadow={"version": "4"})


def test_a_runtime_change_is_refused_for_versions_not_loaded_and_is_one_swap() -> None:
    registry = registry_of("1", "2")
    with pytest.raises(
        InvalidInput, match=r"names version\(s\) \['3', '4'\] of model 'tiny'.*loaded versions"
    ):
        registry.set_traffic("tiny", policy(split={"1": 1, "3": 1}, shadow={"version": "4"}))
    with pytest.raises(ModelNotFound, match="no model named 'other'"):
        registry.set_traffic("other", None)
    assert registry.traffic("tiny") is None and "tiny" not in registry.routes
    registry.set_traffic("tiny", policy(split={"1": 1}))
    before = registry.routes["tiny"]
    registry.set_traffic("tiny", policy(split={"2": 1}))
    after = registry.routes["tiny"]
    assert before is not after and before.split == ("1",) and after.split == ("2",)  # the old one unchanged
    with pytest.raises(AttributeError):
        after.split = ("1",)  # type: ignore[misc]
    registry.set_traffic("tiny", None)
    assert registry.traffic("tiny") is None and "tiny" not in registry.routes


def test_the_settings_policy_applies_when_loaded_and_wins_only_when_it_changes() -> None:
    configured = policy(split={"1": 80, "2": 20})
    registry = ModelRegistry()
    registry.add(served("1", configured))
    registry.add(served("2", configured))
    assert registry.traffic("tiny") == configured and registry.routes["tiny"].shares() == {
        "1": 80.0,
        "2": 20.0,
    }
    runtime = policy(split={"1": 10, "2": 90})
    registry.set_traffic("tiny", runtime)
    registry.replace(served("2", configured))  # version 2 reloaded, the same settings' policy
    assert registry.traffic("tiny") == runtime
    changed = policy(split={"2": 100})
    registry.replace(served("1", changed))  # its modelbay.yaml's traffic changed: it wins
    assert registry.traffic("tiny") == changed and registry.routes["tiny"].split == ("2",)


def test_a_shadow_never_shadows_the_version_that_served() -> None:
    two, three = served("2"), served("3")
    route = resolve(
        policy(split={"2": 50, "3": 50}, shadow={"version": "3", "percent": 20}), {"2": two, "3": three}
    )
    assert isinstance(route, Route)
    draws = grid(100)
    shadowed = sum(route.shadows(two, draws) is three for _ in range(100))
    assert shadowed == 20
    assert all(route.shadows(three, grid(100)) is None for _ in range(100))
    off = resolve(policy(shadow={"version": "3", "percent": 0}), {"2": two, "3": three})
    assert off is None  # a shadow at 0% and no split change nothing


def test_shadow_answers_agree_within_the_tolerance_whatever_their_structure() -> None:
    """A model answers floats a last bit apart in batches of other sizes: predictions (the simple
    door's lists, dicts and arrays) and OIP outputs agree within the tolerance, not bit for bit."""
    import numpy as np

    from modelbay.runtime.shadow import agrees

    row = np.array([0.2267327, -0.6146605, -0.19738773], dtype=np.float32)
    near = np.nextafter(row, np.float32(1))  # one float32 step apart
    assert agrees([row, row], [near, near], 1e-5)
    assert agrees({"output": row[None]}, {"output": near[None]}, 1e-5)
    assert agrees([{"label": "7", "score": 0.999}], [{"label": "7", "score": 0.9990001}], 1e-5)
    assert agrees([1.0, 2.0], np.array([1.0, 2.0]), 1e-5)  # a list against an array of its values
    assert not agrees([{"label": "7", "score": 0.99}], [{"label": "1", "score": 0.99}], 1e-5)
    assert not agrees([row], [row, row], 1e-5)
    assert not agrees({"output": row}, {"other": row}, 1e-5)
    assert not agrees([row], [row + 0.1], 1e-5)
    assert not agrees("7", b"7", 1e-5)
