"""registry/upload.py: a model sent with a load, written as new version folders, or refused whole."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelbay.errors import InvalidInput, ModelLoadError
from modelbay.registry import upload
from modelbay.registry.repository import scan_repository
from modelbay.registry.upload import STAGING_PREFIX, write_versions

MODEL = b"\x08\x07 an ONNX file"


def tree(root: Path) -> list[str]:
    """Every path under `root`, relative, sorted (symlinks not followed)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    (tmp_path / "repository").mkdir()
    return tmp_path / "repository"


def test_writes_new_version_folders_whole(repository: Path) -> None:
    files = {
        "3/predict.py": b"print('v3')",
        "3/weights/part.bin": b"\x00\x01",
        "3/weights/deep/er.bin": b"x",
        "1/model.onnx": MODEL,
    }
    assert write_versions(repository / "m", files, None) == ["1", "3"]
    assert tree(repository) == [
        "m",
        "m/1",
        "m/1/model.onnx",
        "m/3",
        "m/3/predict.py",
        "m/3/weights",
        "m/3/weights/deep",
        "m/3/weights/deep/er.bin",
        "m/3/weights/part.bin",
    ]
    assert (repository / "m/3/weights/part.bin").read_bytes() == b"\x00\x01"
    assert (repository / "m/1/model.onnx").read_bytes() == MODEL
    assert write_versions(repository / "m", {"4/model.onnx": b""}, None) == ["4"]
    assert [e["version"] for e in scan_repository(repository, strict=False)] == ["1", "3", "4"]


def test_config_becomes_each_new_versions_manifest_merged_over_an_uploaded_one(repository: Path) -> None:
    config = {"task": "tensor", "batching": {"max_batch_size": 8}}
    uploaded = b"name: m\nbatching: {max_batch_size: 2, max_queue_delay_ms: 5}\ntop_k: 3\n"
    files = {"1/model.onnx": MODEL, "2/model.onnx": MODEL, "2/modelbay.yaml": uploaded}
    write_versions(repository / "m", files, config)
    assert yaml.safe_load((repository / "m/1/modelbay.yaml").read_text()) == config
    assert yaml.safe_load((repository / "m/2/modelbay.yaml").read_text()) == {
        "name": "m",
        "batching": {"max_batch_size": 8, "max_queue_delay_ms": 5},
        "top_k": 3,
        "task": "tensor",
    }
    # Without config an uploaded manifest is written as it came.
    write_versions(repository / "m", {"3/model.onnx": MODEL, "3/modelbay.yaml": uploaded}, None)
    assert (repository / "m/3/modelbay.yaml").read_bytes() == uploaded


def test_a_model_folder_reached_as_the_layout_says(repository: Path) -> None:
    write_versions(repository / "m", {"1/model.onnx": MODEL}, {"batching": {"max_batch_size": 4}})
    (entry,) = scan_repository(repository)
    assert entry["name"] == "m" and entry["version"] == "1" and entry["path"] == str(repository / "m/1")
    assert entry["batching"] == {"max_batch_size": 4}


BAD_PATHS = [
    ("/1/model.onnx", "must be relative"),
    ("1\\model.onnx", "must be relative"),
    ("1/../model.onnx", "is not allowed"),
    ("../1/model.onnx", "must be <version>/<file>"),
    ("1/./model.onnx", "is not allowed"),
    ("1//model.onnx", "is not allowed"),
    ("1/", "is not allowed"),
    ("1", "must be <version>/<file>"),
    ("1/.hidden", "is not allowed"),
    ("1/.modelbay-upload-x/a", "is not allowed"),
    ("1/a\x00b", "is not allowed"),
    ("1/a\nb", "is not allowed"),
    ("01/model.onnx", "without a leading zero"),
    ("0/model.onnx", "without a leading zero"),
    ("v1/model.onnx", "must be <version>/<file>"),
    ("\u0661/model.onnx", "must be <version>/<file>"),  # an Arabic-Indic digit: isdigit() but no number
    ("1234567890123456789/model.onnx", "must be <version>/<file>"),
    ("1/\ud800", "not valid UTF-8"),
    ("1/" + "a" * 256, "at most 255 are allowed"),
    ("1/" + "/".join("d" * 16) + "/f", "deeper than 16 folders"),
    ("1/" + "/".join(["d" * 200] * 6), "over 1024 characters"),
]


@pytest.mark.parametrize(("path", "message"), BAD_PATHS)
def test_bad_paths_are_refused_and_nothing_is_written(repository: Path, path: str, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        write_versions(repository / "m", {"2/model.onnx": MODEL, path: b"x"}, None)
    assert message in err.value.message
    assert tree(repository) == []


def test_the_deepest_and_longest_paths_allowed_are_written(repository: Path) -> None:
    deep = "1/" + "/".join("d" * 14) + "/f"
    long = "2/" + "a" * 255
    write_versions(repository / "m", {deep: b"x", long: b"y", "1/predict.py": b""}, None)
    assert (repository / "m" / deep).read_bytes() == b"x"
    assert (repository / "m" / long).read_bytes() == b"y"


@pytest.mark.parametrize("name", [".hidden", ".modelbay-upload-x", "a\\b", "a\x00", "a\n"])
def test_a_bad_model_name_is_refused(repository: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="model name"):
        write_versions(repository / name, {"1/model.onnx": MODEL}, None)
    assert tree(repository.parent) == ["repository"]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", ".x", "a\x00", "\ud800", "x" * 256])
def test_check_name(name: str) -> None:
    with pytest.raises(InvalidInput, match="model name"):
        upload.check_name(name)


def test_a_model_folder_path_through_dotdot_is_refused(repository: Path) -> None:
    with pytest.raises(InvalidInput, match=r"must not hold '\.\.'"):
        write_versions(repository / ".." / "escaped", {"1/model.onnx": MODEL}, None)
    assert not (repository.parent / "escaped").exists()


def test_a_file_that_is_also_a_folder_is_refused(repository: Path) -> None:
    with pytest.raises(InvalidInput, match="'1/a' is both a file and a folder"):
        write_versions(repository / "m", {"1/a": b"", "1/a/b": b"", "1/modelbay.yaml": b""}, None)
    assert tree(repository) == []


@pytest.mark.parametrize("existing", ["3", "03"])
def test_an_existing_version_is_immutable(repository: Path, existing: str) -> None:
    (repository / "m" / existing).mkdir(parents=True)
    (repository / "m" / existing / "model.onnx").write_bytes(b"old")
    files = {"4/model.onnx": MODEL, "3/model.onnx": MODEL}
    with pytest.raises(InvalidInput) as err:
        write_versions(repository / "m", files, None)
    spelled = "" if existing == "3" else " (as '03')"
    assert err.value.message == (
        f"version 3 of 'm' exists{spelled}; versions are immutable: deploy a new version"
    )
    assert tree(repository) == ["m", f"m/{existing}", f"m/{existing}/model.onnx"]
    assert (repository / "m" / existing / "model.onnx").read_bytes() == b"old"


def test_versions_cannot_be_added_to_an_unversioned_model_folder(repository: Path) -> None:
    (repository / "words").mkdir()
    (repository / "words" / "predict.py").write_text("")
    with pytest.raises(InvalidInput, match="'words' is an unversioned model folder"):
        write_versions(repository / "words", {"2/model.onnx": MODEL}, None)
    assert tree(repository) == ["words", "words/predict.py"]


def test_a_symlinked_model_folder_is_never_followed(repository: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (repository / "m").symlink_to(outside, target_is_directory=True)
    (repository / "dangling").symlink_to(tmp_path / "nowhere")
    (repository / "file").write_bytes(b"")
    for name in ("m", "dangling", "file"):
        with pytest.raises(InvalidInput, match="is a symlink or not a folder"):
            write_versions(repository / name, {"1/model.onnx": MODEL}, None)
    assert list(outside.iterdir()) == [] and not (tmp_path / "nowhere").exists()
    assert tree(repository) == ["dangling", "file", "m"]


def test_a_version_symlinked_out_of_the_repository_counts_as_existing(
    repository: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (repository / "m").mkdir()
    (repository / "m" / "5").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidInput, match="version 5 of 'm' exists"):
        write_versions(repository / "m", {"5/model.onnx": MODEL}, None)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    ("files", "config", "message"),
    [
        ({}, None, "needs at least one file"),
        ({"1/model.onnx": MODEL}, ["task"], "config must be a mapping of modelbay.yaml fields, got list"),
        ({"1/model.onnx": MODEL}, {1: "x"}, "text keys"),
        ({"1/model.onnx": MODEL}, {"taks": "tensor"}, "unknown field `taks`"),
        ({"1/model.onnx": MODEL}, {"batching": {"max_batch_size": 0}}, "max_batch_size"),
        ({"1/model.onnx": MODEL}, {"top_k": object()}, "top_k"),
        ({"1/a.onnx": MODEL, "1/b.onnx": MODEL}, None, "version 1 needs one model file at its top"),
        ({"1/weights/a.bin": MODEL}, None, "it has none"),
        ({"1/modelbay.yaml": b"- a list"}, None, "must hold a YAML mapping, found list"),
        ({"1/modelbay.yaml": b"a: [unclosed"}, None, "is not readable YAML"),
        ({"1/modelbay.yaml": b"\xff\xfe"}, None, "is not readable YAML"),
        ({"1/model.onnx": "text"}, None, "expected a str path and bytes"),
    ],
)
def test_what_cannot_load_is_refused_before_writing(
    repository: Path, files: dict[str, Any], config: Any, message: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        write_versions(repository / "m", files, config)
    assert message in err.value.message
    assert tree(repository) == []


def test_a_config_makes_a_folder_of_several_files_a_model_folder(repository: Path) -> None:
    files = {"1/a.onnx": MODEL, "1/labels.txt": b"cat\ndog\n"}
    write_versions(repository / "m", files, {"weights": "a.onnx"})
    assert tree(repository / "m") == ["1", "1/a.onnx", "1/labels.txt", "1/modelbay.yaml"]


def test_the_limits(repository: Path) -> None:
    files = {f"1/{i}.bin": b"x" for i in range(5)} | {"1/modelbay.yaml": b""}
    with pytest.raises(InvalidInput, match="the upload holds 6 files; at most 5 are accepted"):
        write_versions(repository / "m", files, None, max_files=5)
    with pytest.raises(InvalidInput, match="the upload holds 5 bytes; at most 4 are accepted"):
        write_versions(repository / "m", files, None, max_bytes=4)
    assert tree(repository) == []
    assert write_versions(repository / "m", files, None, max_files=6, max_bytes=5) == ["1"]


def leftovers(repository: Path) -> list[str]:
    return [p.name for p in repository.iterdir()]


def test_a_failure_while_renaming_leaves_no_version_and_no_staging_folder(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rename = os.rename
    calls = []

    def failing(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise OSError(errno.EIO, "disk went away")
        rename(*args, **kwargs)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(ModelLoadError, match=r"cannot write the upload of model 'm': .*disk went away"):
        write_versions(repository / "m", {"1/model.onnx": MODEL, "2/model.onnx": MODEL}, None)
    assert len(calls) == 2  # version 1 was in place when version 2 failed, and was taken back
    assert leftovers(repository) == []  # no staging folder, and the model folder created is gone


def test_a_failure_while_writing_leaves_the_existing_versions_alone(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repository / "m" / "1").mkdir(parents=True)
    (repository / "m" / "1" / "model.onnx").write_bytes(b"old")
    fsync = os.fsync
    calls = []

    def full(descriptor: int) -> None:
        calls.append(descriptor)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", full)
    files = {"2/model.onnx": MODEL, "3/model.onnx": MODEL, "3/x/y": b"", "4/model.onnx": MODEL}
    with pytest.raises(ModelLoadError, match="No space left on device"):
        write_versions(repository / "m", files, None)
    assert tree(repository) == ["m", "m/1", "m/1/model.onnx"]


def test_a_version_written_by_someone_else_meanwhile_is_not_replaced(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = upload._stage

    def racing(staged: int, versions: Any) -> None:
        stage(staged, versions)
        assert any(p.name.startswith(STAGING_PREFIX) for p in repository.iterdir())
        (repository / "m" / "2").mkdir()
        (repository / "m" / "2" / "model.onnx").write_bytes(b"theirs")

    monkeypatch.setattr(upload, "_stage", racing)
    with pytest.raises(InvalidInput, match="version 2 of 'm' exists"):
        write_versions(repository / "m", {"1/model.onnx": MODEL, "2/model.onnx": MODEL}, None)
    assert tree(repository) == ["m", "m/2", "m/2/model.onnx"]
    assert (repository / "m" / "2" / "model.onnx").read_bytes() == b"theirs"


def test_split_path() -> None:
    assert upload.split_path("3/weights/part.bin") == ("3", ("weights", "part.bin"))
    assert upload.split_path("12/model.onnx") == ("12", ("model.onnx",))
