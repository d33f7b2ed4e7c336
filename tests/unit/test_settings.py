"""Settings precedence: CLI flags > YAML file > MODELBAY_* environment > defaults; for a model's
settings: flags > its --config entry > its folder's modelbay.yaml > defaults (no variables)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from modelbay.cli.main import parser, serve_settings
from modelbay.errors import ModelLoadError
from modelbay.registry.repository import ModelRepository
from modelbay.server import Server
from modelbay.settings import BatchingConfig, CacheConfig, ImageConfig, ModelConfig, Settings


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "modelbay.yaml"
    config.write_text("port: 9000\nhost: 0.0.0.0\nmodels: [{path: a.pt2, batching: {max_batch_size: 4}}]\n")
    env = {"MODELBAY_PORT": "7000", "MODELBAY_MAX_BODY_BYTES": "1024", "MODELBAY_HOST": "10.0.0.1"}
    settings = Settings.load(config, {"host": "127.0.0.2"}, env)
    assert settings.port == 9000  # YAML beats the environment
    assert settings.host == "127.0.0.2"  # a flag beats both
    assert settings.max_body_bytes == 1024  # the environment beats the default
    assert settings.models[0].batching.max_batch_size == 4
    assert settings.models[0].batching.max_queue_delay_ms == 0.0


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"Expected `int`, got `str` - at `\$.port`"):
        Settings.load(None, {}, {"MODELBAY_PORT": "eighty"})
    with pytest.raises(ModelLoadError, match="unknown field `prot`"):
        Settings.load(None, {"prot": 1})
    with pytest.raises(ModelLoadError, match="max_batch_size and max_queue_size must be >= 1"):
        Settings.load(None, {"models": [{"path": "x", "batching": {"max_batch_size": 0}}]})
    with pytest.raises(ModelLoadError, match="default_output needs slo_ms"):
        Settings.load(None, {"models": [{"path": "x", "batching": {"default_output": [0.0]}}]})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"graceful_timeout_s": -1}, "graceful_timeout_s must be >= 0"),
        ({"read_timeout_s": 0}, "read_timeout_s > 0"),
        ({"max_connections": 0}, "max_connections >= 1"),
        ({"port": 70000}, "port and grpc_port must be 0-65535, got 70000 and 8001"),
        ({"grpc_port": -1}, "port and grpc_port must be 0-65535, got 8000 and -1"),
        ({"models": [{"path": "x", "timeout_s": 0}]}, "timeout_s must be > 0"),
        ({"models": [{"path": "x", "preprocess_threads": 0}]}, "preprocess_threads must be >= 1"),
    ],
)
def test_the_hardening_limits_refuse_values_that_would_disable_them(overrides: dict, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        Settings.load(None, overrides)


# Every server setting: (MODELBAY_* variable, --config file, flag) values, all unlike the default.
SERVER = {
    "host": ("10.0.0.1", "10.0.0.2", "10.0.0.3"),
    "port": (7001, 7002, 7003),
    "grpc_port": (7101, 7102, 7103),
    "workers": (2, 3, 4),
    "max_body_bytes": (1000, 2000, 3000),
    "graceful_timeout_s": (1.0, 2.0, 3.0),
    "read_timeout_s": (4.0, 5.0, 6.0),
    "max_connections": (10, 20, 30),
    "log_level": ("debug", "warning", "error"),
    "log_format": ("json", "text", "json"),
    "access_log": (True, False, True),
    "tracing": (True, False, True),
    "model_repository": ("/r1", "/r2", "/r3"),
    "model_control_mode": ("poll", "none", "poll"),
    "load_models": (["a", "b"], ["c"], ["d", "e"]),
    "repository_poll_s": (1.0, 2.0, 3.0),
    "max_upload_bytes": (100, 200, 300),
    "auth": ("/k1.yaml", "/k2.yaml", "/k3.yaml"),
    "auth_health": (True, True, True),
}
# Every model setting with a flag: (the folder's modelbay.yaml, its --config entry, flag) values.
TENSORS = [
    [{"name": name, "datatype": kind, "shape": [-1, n]}]
    for name, kind, n in (("a", "FP32", 4), ("b", "INT64", 2), ("c", "FP16", 3))
]
MODEL_FLAGGED = {
    "name": ("m1", "m2", "m3"),
    "version": ("2", "3", "4"),
    "format": ("onnx", "torchscript", "exported"),
    "task": ("image-classification", "custom", "other"),
    "arch": ("a:A", "b:B", "c:C"),
    "arch_kwargs": ({"h": 1}, {"h": 2}, {"h": 3}),
    "trust_pickle": (True, False, True),
    "timeout_s": (5.0, 6.0, 7.0),
    "preprocess_threads": (3, 4, 5),
    "worker_process": (True, False, True),
    "inputs": tuple(TENSORS),
    "outputs": tuple(TENSORS),
    "batching.max_batch_size": (4, 5, 6),
    "batching.max_queue_delay_ms": (1.0, 2.0, 3.0),
    "batching.max_queue_size": (8, 9, 10),
}
# Every model setting without a flag: (the folder's modelbay.yaml, its --config entry) values.
MODEL_UNFLAGGED = {
    "weights": ("a.pt", "b.pt"),
    "labels": (["x"], "labels.txt"),
    "top_k": (2, 3),
    "softmax": (True, False),
    "torch_compile": (True, False),
    "offer_onnx": (True, False),
    "image.mode": ("L", "RGB"),
    "image.resize": (8, 16),
    "image.crop": (4, 6),
    "image.mean": ([0.5], [0.4]),
    "image.std": ([0.2], [0.3]),
    "image.max_pixels": (100, 200),
    "batching.slo_ms": (50.0, 60.0),
    "batching.default_output": ([0.0], [1.0]),
    "cache.max_entries": (5, 6),
    "cache.ttl_s": (1.5, 2.5),
    "traffic": (
        {"split": {"1": 50, "2": 50}, "sticky": None, "shadow": None},
        {
            "split": {"2": 90, "3": 10},
            "sticky": {"header": "x-user-id"},
            "shadow": {"version": "4", "percent": 20.0, "tolerance": 0.001},
        },
    ),
    "url_inputs": (
        {
            "allow_hosts": ["images.a.test"],
            "max_bytes": 1000,
            "timeout_s": 1.0,
            "max_redirects": 0,
            "max_urls": 1,
            "allow_http": True,
        },
        {
            "allow_hosts": ["*.b.test", "203.0.113.7"],
            "max_bytes": 2000,
            "timeout_s": 2.0,
            "max_redirects": 5,
            "max_urls": 2,
            "allow_http": False,
        },
    ),
}
NESTED = {"image": ImageConfig, "batching": BatchingConfig, "cache": CacheConfig}


def leaf_fields() -> set[str]:
    """Every ModelConfig setting, nested ones as "batching.max_queue_size"."""
    names = set()
    for name in ModelConfig.__struct_fields__:
        inner = NESTED.get(name)
        names |= {f"{name}.{sub}" for sub in inner.__struct_fields__} if inner else {name}
    return names


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """{"batching.max_batch_size": 4} -> {"batching": {"max_batch_size": 4}}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        head, _, tail = key.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


def value_of(config: object, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def plain(value: Any) -> Any:
    """Settings values as the tables write them (a TensorConfig as a dict with every field)."""
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, msgspec.Struct):
        return {name: plain(field) for name, field in msgspec.structs.asdict(value).items()}
    return value


def server_flag(name: str, value: Any) -> list[str]:
    if name == "load_models":
        return [arg for model in value for arg in ("--load-model", model)]
    if isinstance(value, bool):
        flag = name.replace("_", "-")
        return [f"--{flag}" if value else f"--no-{flag}"]
    return [f"--{name.replace('_', '-')}", str(value)]


def model_flag(key: str, value: Any) -> list[str]:
    name = key.rpartition(".")[2]
    if name in ("trust_pickle", "worker_process"):
        flag = name.replace("_", "-")
        return [f"--{flag}" if value else f"--no-{flag}"]
    if name in ("inputs", "outputs"):
        return [
            arg
            for t in value
            for arg in (f"--{name[:-1]}", f"{t['name']}:{t['datatype']}:-1,{t['shape'][1]}")
        ]
    if name == "arch_kwargs":
        return ["--arch-kwargs", json.dumps(value)]
    return ["--model-version" if name == "version" else f"--{name.replace('_', '-')}", str(value)]


def cli_settings(
    tmp_path: Path,
    env: dict[str, Any],
    server_file: dict[str, Any],
    flags: list[str],
    manifest: dict[str, Any] | None = None,
    model_file: dict[str, Any] | None = None,
) -> Settings:
    """The settings `modelbay serve --config FILE FLAGS` would run with: FILE holds `server_file` and
    one model, a folder whose modelbay.yaml holds `manifest`, with `model_file` in its entry."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "modelbay.yaml").write_text(yaml.safe_dump(nested(manifest or {})))
    config = tmp_path / "config.yaml"
    entry = {"path": str(folder), **nested(model_file or {})}
    config.write_text(yaml.safe_dump({**server_file, "models": [entry]}))
    environ = {
        f"MODELBAY_{name.upper()}": ",".join(value) if isinstance(value, list) else str(value)
        for name, value in env.items()
    }
    return serve_settings(parser().parse_args(["serve", "--config", str(config), *flags]), environ)


def test_the_tables_cover_every_setting() -> None:
    """A new setting must be added here, so its precedence is tested."""
    # model_overrides is what the model flags (MODEL_FLAGGED) set for the repository's models.
    assert set(SERVER) == set(Settings.__struct_fields__) - {"models", "model_overrides"}
    assert set(MODEL_FLAGGED) | set(MODEL_UNFLAGGED) | {"path"} == leaf_fields()


def test_server_settings_flag_beats_file_beats_environment_beats_default(tmp_path: Path) -> None:
    env = {name: values[0] for name, values in SERVER.items()}
    file = {name: values[1] for name, values in SERVER.items()}
    flags = [arg for name, values in SERVER.items() for arg in server_flag(name, values[2])]
    defaults = Settings()
    for layers, want in (((), None), ((env,), 0), ((env, file), 1), ((env, file, flags), 2)):
        settings = cli_settings(tmp_path, *(list(layers) + [{}, {}, []][len(layers) :]))
        for name, values in SERVER.items():
            expected = getattr(defaults, name) if want is None else values[want]
            assert getattr(settings, name) == expected, (name, len(layers))


def test_server_flags_equal_to_the_default_still_win(tmp_path: Path) -> None:
    env = {name: values[0] for name, values in SERVER.items()}
    file = {name: values[1] for name, values in SERVER.items()}
    defaults = Settings()
    # No flag says "none" (model_repository) or "no models" (load_models): those have no such flag.
    sayable = [name for name in SERVER if getattr(defaults, name) not in (None, [])]
    flags = [arg for name in sayable for arg in server_flag(name, getattr(defaults, name))]
    settings = cli_settings(tmp_path, env, file, flags)
    for name in sayable:
        assert getattr(settings, name) == getattr(defaults, name), name


def test_model_settings_flag_beats_config_entry_beats_manifest_beats_default(tmp_path: Path) -> None:
    table = {**MODEL_FLAGGED, **MODEL_UNFLAGGED}
    manifest = {key: values[0] for key, values in table.items()}
    entry = {key: values[1] for key, values in table.items()}
    flags = [arg for key, values in MODEL_FLAGGED.items() for arg in model_flag(key, values[2])]
    defaults = ModelConfig(cache=CacheConfig())
    layers: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = [
        ({}, {}, []),
        (manifest, {}, []),
        (manifest, entry, []),
        (manifest, entry, flags),
    ]
    for want, (in_manifest, in_entry, in_flags) in enumerate(layers, start=-1):
        (model,) = cli_settings(tmp_path, {}, {}, in_flags, in_manifest, in_entry).models
        for key, values in table.items():
            if want == -1:
                expected = None if key.startswith("cache.") else value_of(defaults, key)
                found = None if key.startswith("cache.") and model.cache is None else value_of(model, key)
            else:
                expected, found = values[min(want, len(values) - 1)], value_of(model, key)
            assert plain(found) == expected, (key, want)


def test_model_flags_equal_to_the_default_still_win(tmp_path: Path) -> None:
    """Issue 9 item 11: `--max-queue-size 256` (the default) over `max_queue_size: 8` gave 8."""
    defaults = ModelConfig()
    keys = [key for key in MODEL_FLAGGED if value_of(defaults, key) is not None]
    manifest = {key: MODEL_FLAGGED[key][0] for key in keys}
    entry = {key: MODEL_FLAGGED[key][1] for key in keys}
    flags = [arg for key in keys for arg in model_flag(key, value_of(defaults, key))]
    (model,) = cli_settings(tmp_path, {}, {}, flags, manifest, entry).models
    for key in keys:
        assert value_of(model, key) == value_of(defaults, key), key


def test_a_flag_equal_to_its_default_beats_the_manifest_of_a_served_model(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    """Issue 9 item 11: `modelbay serve folder --max-queue-size 256` served 8 from its modelbay.yaml."""
    folder = tmp_path / "mlp"
    folder.mkdir()
    shutil.copy(tiny_files["exported"], folder / "mlp.pt2")
    (folder / "modelbay.yaml").write_text("batching: {max_queue_size: 8, max_batch_size: 4}\ntimeout_s: 5\n")
    args = parser().parse_args(["serve", str(folder), "--max-queue-size", "256", "--timeout-s", "60"])
    settings = serve_settings(args, {})
    workers = msgspec.json.decode(msgspec.json.encode(settings), type=Settings)  # as run_workers passes them
    for served in (settings, workers):
        server = Server(served)
        server.load()
        (model,) = server.registry
        assert (model.batching.max_queue_size, model.batching.max_batch_size) == (256, 4)
    assert settings.models[0].timeout_s == 60.0


def test_a_manifest_alone_enabling_unpickling_is_logged(
    tiny_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_files["pickled"], folder / "model.pt")
    (folder / "modelbay.yaml").write_text("trust_pickle: true\n")
    for flags, trusted, warned in (
        ([], True, True),
        (["--trust-pickle"], True, False),
        (["--no-trust-pickle"], False, False),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="modelbay.settings"):
            settings = serve_settings(parser().parse_args(["serve", str(folder), *flags]), {})
        assert settings.models[0].trust_pickle is trusted
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        expected = f"the manifest at {folder / 'modelbay.yaml'} enabled unpickling (trust_pickle: true)"
        assert any(expected in m and "code from the model file will run" in m for m in messages) is warned, (
            flags
        )
    Server(serve_settings(parser().parse_args(["serve", str(folder)]), {})).load()  # it is still allowed


def test_in_a_repository_a_version_manifest_beats_the_shared_one(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    (repository / "mlp" / "1").mkdir(parents=True)
    (repository / "mlp" / "2").mkdir()
    shutil.copy(tiny_files["exported"], repository / "mlp" / "1" / "model.pt2")
    shutil.copy(tiny_files["exported"], repository / "mlp" / "2" / "model.pt2")
    (repository / "mlp" / "modelbay.yaml").write_text("batching: {max_batch_size: 4, max_queue_size: 8}\n")
    (repository / "mlp" / "2" / "modelbay.yaml").write_text("batching: {max_batch_size: 2}\n")
    settings = serve_settings(parser().parse_args(["serve", str(repository), "--max-queue-size", "256"]), {})
    assert settings.model_repository == str(repository) and settings.models == []  # served live
    versions = ModelRepository(repository, settings.model_overrides).versions("mlp")
    batching = {version: found.config.batching for version, found in versions.items()}
    found = {version: (b.max_batch_size, b.max_queue_size) for version, b in batching.items()}
    assert found == {"1": (4, 256), "2": (2, 256)}


def test_model_flags_apply_to_the_models_of_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("models: [{path: a.pt2, version: 2}, {path: b.pt2, batching: {max_batch_size: 4}}]\n")
    args = parser().parse_args(["serve", "--config", str(config), "--max-queue-delay-ms", "3"])
    a, b = serve_settings(args, {}).models
    assert (a.version, a.batching.max_queue_delay_ms) == ("2", 3.0)
    assert (b.batching.max_batch_size, b.batching.max_queue_delay_ms) == (4, 3.0)
    with pytest.raises(ModelLoadError, match="--name needs exactly one model, not 2"):
        serve_settings(parser().parse_args(["serve", "--config", str(config), "--name", "x"]), {})
