"""`modelbay build`: a reproducible container build context for a model file, folder or repository.

    OUT/
      Dockerfile          dockerfile.py
      requirements.txt    modelbay's wheel with the extras the models need, the packages their
                          code imports and their requirements.txt lines
      constraints.txt     every package the image installs, `name==version`, as installed here
      wheels/modelbay-<version>-py3-none-any.whl
      models/             the model repository, the models' files copied (never downloaded)

The same models and environment give byte-identical files: sorted listings, no timestamps in
any file (the wheel's entries carry SOURCE_DATE_EPOCH), modes 0644 / 0755 and every mtime set to
that same instant. OUT is written beside itself and swapped in whole, so a failed build leaves
the previous context as it was; OUT must be new, empty, or a context `modelbay build` wrote.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modelbay.errors import ShipError
from modelbay.ship import dockerfile, pins
from modelbay.ship.images import APP_DIR
from modelbay.ship.inventory import Inventory, take_inventory
from modelbay.ship.wheel import SOURCE_DATE_EPOCH, build_wheel, source_tree, wheel_metadata


@dataclass(frozen=True)
class BuildContext:
    """What `write_context` wrote.

    out:       the context folder.
    inventory: the models in it.
    extras:    the modelbay extras installed (sorted).
    pins:      name -> exact version of every package the image installs (modelbay excepted).
    missing:   modules the models import that no installed distribution provides (not pinned).
    """

    out: Path
    inventory: Inventory
    extras: list[str]
    pins: dict[str, str]
    missing: list[str]


def write_context(
    source: Path, out: Path, image: str, *, base: str | None = None, wheel: Path | None = None
) -> BuildContext:
    """Write the build context of the models at `source` into `out` (module docstring).

    image: the reference the image will be tagged with (images.image_reference checked it).
    base:  the FROM image (default: dockerfile.default_base(), this interpreter's version).
    wheel: a modelbay wheel to ship (default: built from the running modelbay's source tree).
    Raises ModelLoadError when `source` holds no servable models, ShipError when a package
    cannot be pinned, the wheel cannot be built, or `out` is something else than a context.
    """
    inventory = take_inventory(source)
    out = Path(out).absolute()
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        context = _fill(staging, inventory, image, base, wheel)
        for path in sorted(staging.rglob("*")):
            _normalise(path)
        _swap(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildContext(out, context.inventory, context.extras, context.pins, context.missing)


def _fill(
    staging: Path, inventory: Inventory, image: str, base: str | None, wheel: Path | None
) -> BuildContext:
    """Write every file of the context into `staging`."""
    wheels = staging / "wheels"
    if wheel is not None:
        wheels.mkdir()
        shipped = Path(shutil.copyfile(wheel, wheels / Path(wheel).name))
    else:
        tree = source_tree()
        if tree is None:
            raise ShipError(
                "this modelbay was installed from a wheel, not a source tree: pass that wheel "
                "with --wheel (it is copied into the context)"
            )
        shipped = build_wheel(tree, wheels)
    name, version, requires, provides = wheel_metadata(shipped)
    if canonicalize_name(name) != "modelbay":
        raise ShipError(f"{shipped.name} is a wheel of {name}, not of modelbay")
    extras = sorted(inventory.extras & set(provides))
    own, imported, pinned, missing = _packages(inventory, pins.applying(requires, extras))
    _copy_models(staging / "models", inventory)
    requirement = f"modelbay{'[' + ','.join(extras) + ']' if extras else ''}"
    lines = [
        "# What the image installs: pip install -r requirements.txt -c constraints.txt",
        *(f"--extra-index-url {url}" for url in pins.extra_indexes(pinned)),
        f"{requirement} @ file://{APP_DIR}/wheels/{shipped.name}",
        *(f"{dist}  # imported by the models' code" for dist in imported),
        *(f"{req}  # from a model's requirements.txt" for req in sorted(set(map(str, own)))),
    ]
    _write(staging / "requirements.txt", lines)
    header = "# Exact versions of every package the image installs, as installed where this was written."
    _write(staging / "constraints.txt", [header, *pins.pinned_requirements(pinned)])
    described = [f"{m.name} [{', '.join(sorted(f.value for f in m.formats))}]" for m in inventory.models]
    plan = dockerfile.ImagePlan(
        base or dockerfile.default_base(), image, described, inventory.requirements, version
    )
    (staging / "Dockerfile").write_text(dockerfile.render(plan))
    return BuildContext(staging, inventory, extras, pinned, missing)


def _packages(
    inventory: Inventory, modelbay_requires: list[Requirement]
) -> tuple[list[Requirement], list[str], dict[str, str], list[str]]:
    """(the models' requirements.txt lines, distributions their code imports that nothing else
    names, the pins of everything, modules no installed distribution provides).

    Raises ModelLoadError for a requirements.txt that breaks its rules (runtime/environments.py),
    ShipError for a package that cannot be pinned (pins.pin_closure).
    """
    from modelbay.runtime.environments import read_requirements

    sources = {target: path for model in inventory.models for target, path in model.files}
    own: list[Requirement] = []
    elsewhere: dict[str, str] = {}
    for target in inventory.requirements:
        own.extend(read_requirements(sources[target]))
        elsewhere.update(pins.model_environment_pins(sources[target]))
    found, missing = pins.import_distributions(inventory.imports)
    named = {canonicalize_name(req.name) for req in (*modelbay_requires, *own)} | {"modelbay"}
    imported = [dist for dist in found if canonicalize_name(dist) not in named]
    # A module named like a requirement is that requirement's (installed in a model's environment).
    missing = [module for module in missing if canonicalize_name(module) not in named]
    wanted = [*modelbay_requires, *own, *(Requirement(dist) for dist in imported)]
    pinned = {str(k): v for k, v in pins.pin_closure(wanted, elsewhere).items() if k != "modelbay"}
    return own, imported, pinned, missing


def _copy_models(root: Path, inventory: Inventory) -> None:
    for model in inventory.models:
        for target, path in model.files:
            destination = root / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def _normalise(path: Path) -> None:
    """Modes 0644 / 0755 and the fixed mtime: the context's bytes and metadata depend on nothing
    but its content (a COPY keeps modes; tar and some caches see mtimes)."""
    os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)


def _check_replaceable(out: Path) -> None:
    """Raise ShipError unless `out` is missing, an empty folder, or a context we wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ShipError(f"{out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    dockerfile_path = out / "Dockerfile"
    try:
        ours = dockerfile_path.read_text().startswith(dockerfile.MARKER)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise ShipError(
            f"{out} is not empty and holds no Dockerfile written by modelbay build; it is left "
            "alone: choose another --out, or empty it"
        )


def _swap(staging: Path, out: Path) -> None:
    """Put `staging` in `out`'s place; the previous context, if any, is removed after."""
    _normalise(staging)
    if not out.exists():
        staging.rename(out)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(previous / "context")
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
