"""Settings precedence: CLI flags > YAML file > MODELBAY_* environment > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelbay.errors import ModelLoadError
from modelbay.settings import Settings


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
