"""A model's own Python environment, built with uv from its requirements.txt and layered over the
server's environment.

Layering. The new environment is a uv virtual environment of the server's interpreter whose
site-packages holds one `.pth` file that calls `site.addsitedir` on each of the server's
site-packages folders, so the server's `.pth` files run too (the editable install of modelbay).
The environment's own packages come first on `sys.path`, the server's after them: its python
imports modelbay, torch and numpy from the server and only the model's extra packages from itself.
(`uv venv --system-site-packages` would layer over the base interpreter, not over the server's venv.)

Resolution. uv resolves the requirements as a dry run of an install into the server's environment,
with every distribution installed there pinned as a constraint. uv then takes the installed torch
(and the rest) with its local metadata: nothing the server has is downloaded or installed again,
and a local build such as `torch==2.13.0+cpu`, which no package index has, still resolves (a
`uv pip compile` would look torch up on the index and fail, or pull CUDA wheels). Only the
packages the server lacks are installed into the new environment, `--no-deps`, at the versions of
that plan. A requirement that names a server package at another version is refused before uv runs
at all; one that needs it through a dependency is refused by uv's resolver. Either is a
ModelLoadError that names the requirement and the server's version.

Requirements files. A model's requirements.txt may hold only requirements by name
(`name[extras] <specifiers> ; <marker>`), comments and blank lines. Every pip option (`-r`, `-c`,
`-e`, `--index-url`, `--extra-index-url`, `--find-links`, `--hash`, ...), every URL or local path
and every direct reference (`name @ url`) is refused: an uploaded model must not point the
installer at other files, hosts or indexes. The server's operator chooses the index with uv's own
settings (`UV_DEFAULT_INDEX`, `UV_INDEX`, a user or system `uv.toml`), which uv reads as usual.

Cache. `<cache_dir>/<key>/`, where the key hashes the normalised requirements, the server's
interpreter and version, its site-packages folders and the pins of every package installed there:
a second model with the same requirements, or a restart, reuses the environment; any change to the
server's environment builds a new one. A build runs in `<cache_dir>/.<key>.tmp-*` and is renamed
into place only once complete, so a crash never leaves a half environment that is later reused.
Builders of one key, in any process, take turns on an fcntl lock (`<cache_dir>/.<key>.lock`);
the second finds the first's environment and reuses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from modelbay.errors import ModelLoadError

log = logging.getLogger("modelbay.environments")

LAYOUT_VERSION = 1  # part of the cache key: raise it when a built environment's layout changes
LAYER_PTH = "_modelbay_server_env.pth"
MANIFEST = "modelbay-environment.json"
_OPTION = re.compile(r"(?:^|\s)(--?[A-Za-z][\w-]*)")
_COMMENT = re.compile(r"(?:^|\s)#.*$")
# A valid PEP 508 name that an installer reads as a file beside the requirements (`pkg.whl`).
_ARCHIVE = re.compile(r"\.(whl|zip|tar|tgz|tbz|txz|gz|bz2|xz|egg)$", re.IGNORECASE)
_ALLOWED = (
    "a model's requirements.txt may hold only requirements by name (name[extras], version "
    "specifiers, environment markers), comments and blank lines; options, other files, URLs and "
    "local paths are refused so that an uploaded model cannot point the installer elsewhere "
    "(the server's operator chooses the package index with uv's UV_DEFAULT_INDEX or uv.toml)"
)


@dataclass(frozen=True)
class ServerEnvironment:
    """The environment a model's environment is layered over: the running server's.

    python:    the server's interpreter (sys.executable); the new environment uses the same one.
    version:   its sys.version.
    site_dirs: its site-packages folders that exist, in sys.path order.
    pins:      canonical distribution name -> installed version, for every distribution there.
    """

    python: str
    version: str
    site_dirs: tuple[str, ...]
    pins: dict[str, str]

    @classmethod
    def current(cls) -> ServerEnvironment:
        """The running interpreter's environment, read now (installed packages may have changed)."""
        candidates = list(site.getsitepackages())
        if site.ENABLE_USER_SITE:
            candidates.append(site.getusersitepackages())
        site_dirs = tuple(dict.fromkeys(d for d in candidates if os.path.isdir(d)))
        pins: dict[str, str] = {}
        for dist in importlib.metadata.distributions(path=list(site_dirs)):
            name = dist.metadata["Name"]
            if not name or canonicalize_name(name) in pins:
                continue  # the first on the path is the one imported
            try:
                Version(dist.version)
            except InvalidVersion:
                log.debug("ignoring %s %r: not a PEP 440 version", name, dist.version)
                continue
            pins[canonicalize_name(name)] = dist.version
        return cls(sys.executable, sys.version, site_dirs, pins)


def ensure_environment(requirements: Path, *, cache_dir: Path | None = None) -> Path:
    """The Python environment for a model's requirements.txt, built with uv or reused from the cache.

    requirements: a requirements.txt of requirements by name only (module docstring: what is allowed).
    cache_dir:    where environments are kept; default `default_cache_dir()`, read at each call.
    Returns the path of the environment's python executable. Run as `python -m ...`, it imports the
    server's packages (modelbay, torch, numpy, ...) from the server's environment and the packages
    the requirements add from its own.
    Raises ModelLoadError if the file cannot be read, holds an option, URL or local path, names a
    package the server has at a version the server does not have, cannot be resolved together with
    the server's packages, or if uv fails or is missing. A failed build leaves nothing in the cache.
    """
    requirements = Path(requirements)
    wanted = read_requirements(requirements)
    server = ServerEnvironment.current()
    check_against_server(wanted, server, requirements)
    lines = sorted(str(req) for req in wanted)
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).absolute()
    root.mkdir(parents=True, exist_ok=True)
    key = environment_key(lines, server)
    env = root / key
    if _is_built(env):
        log.info("environment %s for %s reused from cache (%s)", key, requirements, env)
        return _python(env)
    with _locked(root / f".{key}.lock", key):
        if _is_built(env):  # another process built it while this one waited
            log.info("environment %s for %s reused from cache (%s)", key, requirements, env)
            return _python(env)
        for stale in [*root.glob(f".{key}.tmp-*"), env]:  # left by a crash or by hand; ours now
            shutil.rmtree(stale, ignore_errors=True)
        _build(lines, server, root, key, requirements)
    return _python(env)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/modelbay/envs`, else `~/.cache/modelbay/envs` (XDG Base Directory spec)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelbay" / "envs"


def read_requirements(path: Path) -> list[Requirement]:
    """The requirements of a model's requirements.txt, in file order.

    Allowed: PEP 508 requirements by name, `#` comments, blank lines, `\\` line continuations.
    Raises ModelLoadError naming the file, the line and what is wrong for anything else: a pip
    option, a URL, a local path or a direct reference (`name @ url`).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read the requirements file {path}: {exc}") from None
    wanted: list[Requirement] = []
    for number, line in _logical_lines(text):
        option = _OPTION.search(line)
        if option:
            raise ModelLoadError(f"{path}, line {number}: {line!r} uses the option {option[1]}; {_ALLOWED}")
        try:
            req = Requirement(line)
        except InvalidRequirement:
            raise ModelLoadError(
                f"{path}, line {number}: {line!r} is not a requirement by name; {_ALLOWED}"
            ) from None
        if req.url:
            raise ModelLoadError(
                f"{path}, line {number}: {line!r} is a direct reference to {req.url!r}; {_ALLOWED}"
            )
        if _ARCHIVE.search(req.name):
            raise ModelLoadError(f"{path}, line {number}: {line!r} names a local archive; {_ALLOWED}")
        wanted.append(req)
    return wanted


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each non-empty line, comments dropped, continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw).rstrip()
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            yield start, line
        start = 0
    if pending.strip():
        yield start, pending.strip()


def check_against_server(wanted: list[Requirement], server: ServerEnvironment, path: Path) -> None:
    """Refuse a requirement on a package the server has, at a version it does not have.

    Only direct requirements are checked here, without running uv; a conflict through a
    dependency is found by uv's resolver. Requirements whose marker is false here are skipped.
    Raises ModelLoadError naming the requirement and the server's installed version.
    """
    for req in wanted:
        installed = server.pins.get(canonicalize_name(req.name))
        if installed is None or (req.marker is not None and not req.marker.evaluate()):
            continue
        if not req.specifier.contains(installed, prereleases=True):
            raise ModelLoadError(
                f"{path}: the requirement {str(req)!r} conflicts with the server's own "
                f"{req.name} {installed}; a model's environment is layered over the server's and "
                f"cannot replace its packages: drop the requirement or allow {req.name}=={installed}"
            )


def environment_key(lines: list[str], server: ServerEnvironment) -> str:
    """The cache key: a hash of the requirements and of everything about the server they resolve
    against (interpreter, version, site-packages folders, installed versions)."""
    payload = json.dumps(
        {
            "layout": LAYOUT_VERSION,
            "requirements": lines,
            "python": server.python,
            "version": server.version,
            "site_dirs": server.site_dirs,
            "pins": sorted(server.pins.items()),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _build(lines: list[str], server: ServerEnvironment, root: Path, key: str, source: Path) -> None:
    """Resolve, create and install into `<root>/.<key>.tmp-*`, then rename it to `<root>/<key>`."""
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    try:
        (work / "requirements.txt").write_text("".join(f"{line}\n" for line in lines))
        pins = sorted(server.pins.items())
        (work / "constraints.txt").write_text("".join(f"{name}=={version}\n" for name, version in pins))
        log.info(
            "environment %s for %s: resolving %d requirements against the server's %d packages",
            key,
            source,
            len(lines),
            len(pins),
        )
        plan = _resolve(work, server, source)
        env = work / "env"
        venv = ["venv", "--quiet", "--python", server.python, "--relocatable", "--no-project", str(env)]
        _uv(venv, work, f"{source}: uv could not create the environment")
        _layer(env, server)
        _install(plan, env, work, key, source)
        elapsed_s = time.monotonic() - started
        manifest = {"requirements": lines, "installed": dict(plan), "build_s": round(elapsed_s, 3)}
        (env / MANIFEST).write_text(json.dumps({**manifest, "server": server.python}, indent=2))
        env.rename(root / key)  # atomic: the environment appears whole or not at all
        log.info("environment %s ready in %.1f s (%s)", key, elapsed_s, root / key)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _resolve(work: Path, server: ServerEnvironment, source: Path) -> list[tuple[str, str]]:
    """(name, version) of each package the requirements need that the server does not have.

    A dry run of an install into the server's environment, every installed distribution pinned by
    constraints.txt (nothing is installed there; uv only takes its `.lock` file). Raises
    ModelLoadError with uv's reason if there is no solution, or if the plan would change a package
    of the server's.
    """
    args = ["pip", "install", "--dry-run", "--output-format", "json", "--python", server.python]
    args += ["-r", str(work / "requirements.txt"), "-c", str(work / "constraints.txt")]
    # A dry run writes nothing; the flag only lifts uv's refusal of a distribution's own Python
    # (PEP 668, EXTERNALLY-MANAGED), for a server installed into one.
    args += ["--break-system-packages"]
    failure = (
        f"{source}: the requirements cannot be resolved together with the server's own packages, "
        "which stay at their installed versions"
    )
    result = _uv(args, work, failure, capture=True)
    try:
        changes = json.loads(result.stdout)["changes"]
        plan = [(str(c["name"]), str(c["version"]), str(c["action"])) for c in changes]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{source}: uv's plan could not be read ({exc}): {result.stdout[:500]!r}"
        ) from None
    clashes = [
        f"{n} {v} ({a})" for n, v, a in plan if a != "installed" or canonicalize_name(n) in server.pins
    ]
    if clashes:
        raise ModelLoadError(f"{failure}: uv's plan would change {', '.join(clashes)}")
    return [(name, version) for name, version, _ in plan]


def _install(plan: list[tuple[str, str]], env: Path, work: Path, key: str, source: Path) -> None:
    """Install exactly the packages of `plan` into `env`, without their dependencies (the plan
    already holds every one the server lacks)."""
    if not plan:
        log.info("environment %s: the server's packages satisfy every requirement", key)
        return
    pinned = [f"{name}=={version}" for name, version in plan]
    log.info("environment %s: installing %d packages: %s", key, len(plan), ", ".join(pinned))
    (work / "plan.txt").write_text("".join(f"{line}\n" for line in pinned))
    install = ["pip", "install", "--no-deps", "--python", str(_python(env)), "-r", str(work / "plan.txt")]
    _uv(install, work, f"{source}: uv could not install {', '.join(pinned)}")


def _layer(env: Path, server: ServerEnvironment) -> None:
    """Put the server's site-packages after the environment's own, with their `.pth` files run."""
    site_packages = Path(sysconfig.get_path("purelib", "venv", {"base": str(env), "platbase": str(env)}))
    calls = "; ".join(f"site.addsitedir({folder!r})" for folder in server.site_dirs)
    # site runs a .pth line that starts with `import`; a plain path line would skip the server's
    # own .pth files, and with them an editable install of modelbay.
    (site_packages / LAYER_PTH).write_text(f"import site; {calls}\n")


def _uv(
    args: list[str], cwd: Path, failure: str, *, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run uv in `cwd` (so that no project's uv.toml applies); raise ModelLoadError(failure + uv's
    reason) if it fails.

    uv's progress goes straight to stderr when that is a terminal and `capture` is False; otherwise
    it is captured, logged at DEBUG and quoted in the error.
    """
    passthrough = not capture and os.isatty(2)
    command = [_uv_binary(), *args] if passthrough else [_uv_binary(), "--color", "never", *args]
    log.debug("running %s", " ".join(command))
    stderr = None if passthrough else subprocess.PIPE
    result = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if result.stderr:
        log.debug("uv: %s", result.stderr.strip())
    if result.returncode != 0:
        said = _one_paragraph(result.stderr) if result.stderr else "uv's output is above"
        raise ModelLoadError(f"{failure}: {said}")
    return result


def _one_paragraph(text: str) -> str:
    """uv's message on one line: its `error:` label, `cause:` label and environment line dropped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Using Python")]
    joined = re.sub(r"\s+cause:\s*", ": ", " ".join(lines))
    return re.sub(r"^error:\s*", "", joined)


def _uv_binary() -> str:
    """The uv executable: the one the `uv` package installed beside this interpreter, else PATH's."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    if found is None:
        raise ModelLoadError(
            "a model's requirements.txt needs uv to build its environment: `pip install uv` into the "
            "server's environment"
        )
    return found


@contextmanager
def _locked(lock_path: Path, key: str) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `lock_path`; released when the process dies, too."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("environment %s: waiting for another process that is building it", key)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_built(env: Path) -> bool:
    return (env / MANIFEST).is_file() and _python(env).exists()


def _python(env: Path) -> Path:
    return env / "bin" / "python"
