"""The exact versions of everything the image installs, read from this Python environment.

`modelbay build` pins what works here: every requirement (modelbay's own, with the extras the
models need, and the models' requirements.txt files and imports) and every dependency of those,
transitively, at the version installed in this environment; a package a model's own environment
holds (built here by runtime/environments.py) at the version installed there. What is not
installed anywhere here cannot be pinned, and is refused rather than left to float.

Markers (`; sys_platform != "win32"`, `; extra == "onnx"`) are evaluated for the image, a Linux
CPython of this interpreter's version (PEP 508 environment markers).
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from modelbay.errors import ShipError

# The image is Linux, whatever machine writes its build context (PEP 508 marker variables).
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
# PyTorch's own package index, one folder per build variant; a local version label such as
# 2.13.0+cpu names the folder (https://download.pytorch.org/whl/cpu) and is found nowhere else.
PYTORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
PYTORCH_PACKAGES = {"torch", "torchvision", "torchaudio"}


def pin_closure(
    wanted: Iterable[Requirement], elsewhere: Mapping[str, str] | None = None
) -> dict[NormalizedName, str]:
    """Canonical name -> exact version of every requirement in `wanted` and of its dependencies.

    Versions are those installed in this environment (importlib.metadata); `elsewhere` gives
    name -> version for packages installed in a model's own environment instead (taken as they
    are, with no dependencies: such an environment holds every dependency the server lacks).
    Raises ShipError naming the requirement and who asked for it when a package is installed
    nowhere here, or its installed version does not satisfy a requirement on it.
    """
    others = {canonicalize_name(name): version for name, version in (elsewhere or {}).items()}
    marker_env = image_environment()
    pins: dict[NormalizedName, str] = {}
    extras_seen: dict[NormalizedName, set[str]] = {}
    queue = [(req, "the models") for req in wanted]
    while queue:
        req, asker = queue.pop()
        name = canonicalize_name(req.name)
        version = _installed(name) or others.get(name)
        if version is None:
            raise ShipError(
                f"{req} (needed by {asker}) is installed neither in this environment nor in a model's "
                "own environment here, so its version cannot be pinned: install it here (or serve the "
                "model here once, which builds its environment), then build again"
            )
        if not req.specifier.contains(version, prereleases=True):
            raise ShipError(
                f"{asker} needs {req}, but this environment has {req.name} {version}: install a "
                "version that satisfies it here, then build again"
            )
        new_extras = set(req.extras) - extras_seen.get(name, set())
        if name in pins and not new_extras:
            continue
        pins[name] = version
        extras_seen.setdefault(name, set()).update(req.extras)
        if _installed(name) is not None:
            lines = importlib.metadata.requires(name) or []
            queue.extend((dep, f"{req.name} {version}") for dep in applying(lines, req.extras, marker_env))
    return dict(sorted(pins.items()))


def pinned_requirements(pins: Mapping[str, str]) -> list[str]:
    """`name==version` lines, sorted by name: a constraints file."""
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def extra_indexes(pins: Mapping[str, str]) -> list[str]:
    """The package indexes beyond PyPI that the pinned versions come from: PyTorch's index for
    a local build label (torch 2.13.0+cpu -> https://download.pytorch.org/whl/cpu)."""
    variants = {Version(version).local for name, version in pins.items() if name in PYTORCH_PACKAGES} - {None}
    return [PYTORCH_INDEX.format(variant=variant) for variant in sorted(str(v) for v in variants)]


def import_distributions(modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """(distribution names that provide `modules` in this environment, modules none provides).

    Top-level import names are mapped by importlib.metadata.packages_distributions (`sklearn`
    -> scikit-learn); a module several distributions provide gives the first name, sorted.
    """
    provided = importlib.metadata.packages_distributions()
    found, missing = set(), []
    for module in sorted(set(modules)):
        names = provided.get(module)
        if names:
            found.add(sorted(names)[0])
        else:
            missing.append(module)
    return sorted(found, key=canonicalize_name), missing


def model_environment_pins(requirements_file: Path) -> dict[str, str]:
    """name -> version of the packages the model's own environment installed, when that
    environment was built here (runtime/environments.py, same requirements and server packages);
    {} when it was not."""
    from modelbay.runtime.environments import (
        MANIFEST,
        ServerEnvironment,
        default_cache_dir,
        environment_key,
        read_requirements,
    )

    lines = sorted(str(req) for req in read_requirements(requirements_file))
    manifest = default_cache_dir() / environment_key(lines, ServerEnvironment.current()) / MANIFEST
    try:
        installed = json.loads(manifest.read_text())["installed"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(name): str(version) for name, version in dict(installed).items()}


def image_environment() -> dict[str, str]:
    """PEP 508 marker variables of the image: this interpreter's, on Linux."""
    return {**{key: str(value) for key, value in default_environment().items()}, **LINUX}


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def applying(
    lines: Iterable[str], extras: Iterable[str], marker_env: Mapping[str, str] | None = None
) -> list[Requirement]:
    """The requirements among `lines` (a distribution's Requires-Dist) that apply when it is
    installed with `extras`, for `marker_env` (default: the image's, Linux and this Python)."""
    marker_env = marker_env if marker_env is not None else image_environment()
    wanted = ["", *sorted(extras)]
    found = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**marker_env, "extra": e}) for e in wanted):
            found.append(req)
    return found
