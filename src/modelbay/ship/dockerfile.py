"""The Dockerfile of a `modelbay build` context.

What it does, in layer order (what changes least comes first, so a new model version rebuilds
only the last layers): a slim Python base pinned by an exact tag (or a digest); the pinned
packages and modelbay's wheel from the context, installed once, without pip's cache; a system
user and group of UID/GID 10001 with no login and no home of its own; the model repository
copied in, owned by root (the server cannot change its models); as that user, the models' own
environments built (runtime/environments.py, nothing new to download: their packages are in
the image); ports 8000 (HTTP) and 8001 (gRPC); a HEALTHCHECK on /v2/health/ready; and
`modelbay serve` on the repository as the entrypoint, in model control mode `none` (the
models baked in are the models served; a new model is a new image).

Every instruction follows hadolint's rules (tests lint it with zero findings): exec forms,
`--no-cache-dir`, versions pinned through the requirements and constraints files, a non-root
USER last.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from modelbay.ship.images import APP_DIR, CACHE_DIR, GRPC_PORT, HTTP_PORT, MODELS_DIR, READY_PATH, UID

# The Docker Official Image's Debian 12 "slim" variant of this interpreter's exact version: the
# packages pinned here were installed by this interpreter, and its wheels fit that one.
DEFAULT_BASE = "python:{major}.{minor}.{micro}-slim-bookworm"
MARKER = "# Written by `modelbay build`"  # a Dockerfile's first line: a context it may replace
HEALTH_START_PERIOD_S = 300  # models load before the server listens; a large one takes minutes


def default_base() -> str:
    """`python:3.11.7-slim-bookworm` for a Python 3.11.7 interpreter."""
    version = sys.version_info
    return DEFAULT_BASE.format(major=version.major, minor=version.minor, micro=version.micro)


@dataclass(frozen=True)
class ImagePlan:
    """What the Dockerfile says.

    base:         the FROM image (exact tag, or a digest).
    image:        the reference the image will be tagged with (its OCI title and version labels).
    models:       "name (formats)" per model, for the header comment and the description label.
    prebuild:     requirements.txt paths, relative to the repository, whose environments are
                  built in the image.
    version:      modelbay's version.
    """

    base: str
    image: str
    models: Sequence[str]
    prebuild: Sequence[str]
    version: str


def render(plan: ImagePlan) -> str:
    """The Dockerfile's text for `plan`: the same plan gives the same bytes."""
    from modelbay.ship.images import image_name, image_tag

    served = ", ".join(plan.models)
    lines = [
        f"{MARKER} {plan.version}: the model repository models/ ({served}),",
        f"# served by `modelbay serve` on {HTTP_PORT} (HTTP) and {GRPC_PORT} (gRPC). Build: see README.md.",
        f"FROM {plan.base}",
        "",
        *_continued(
            "LABEL",
            [
                f"org.opencontainers.image.title={json.dumps(image_name(plan.image))}",
                f"org.opencontainers.image.version={json.dumps(image_tag(plan.image) or 'digest')}",
                f"org.opencontainers.image.description={json.dumps(f'modelbay serving {served}')}",
            ],
        ),
        "",
        *_continued(
            "ENV",
            [
                "PYTHONDONTWRITEBYTECODE=1",
                "PYTHONUNBUFFERED=1",
                "PIP_DISABLE_PIP_VERSION_CHECK=1",
                "HOME=/tmp",
                "MODELBAY_HOST=0.0.0.0",
                f"XDG_CACHE_HOME={CACHE_DIR}",
            ],
        ),
        f"WORKDIR {APP_DIR}",
        "",
        "COPY requirements.txt constraints.txt ./",
        "COPY wheels/ wheels/",
        *_continued(
            "RUN",
            [
                "pip install --no-cache-dir --requirement requirements.txt --constraint constraints.txt",
                f"groupadd --system --gid {UID} modelbay",
                f"useradd --system --uid {UID} --gid {UID} --no-create-home --home-dir /tmp "
                "--shell /usr/sbin/nologin modelbay",
                f"mkdir -p {CACHE_DIR}",
                f"chown {UID}:{UID} {CACHE_DIR}",
            ],
            joiner="&&",
        ),
        "",
        "COPY models/ models/",
        f"USER {UID}:{UID}",
        *_prebuild(plan.prebuild),
        "",
        f"EXPOSE {HTTP_PORT} {GRPC_PORT}",
        f"HEALTHCHECK --interval=30s --timeout=5s --start-period={HEALTH_START_PERIOD_S}s --retries=3 "
        f"CMD {json.dumps(['python', '-m', 'modelbay.ship.healthcheck'])}",
        f"ENTRYPOINT {json.dumps(entrypoint())}",
    ]
    return "\n".join(lines) + "\n"


def entrypoint() -> list[str]:
    """The container's command: `modelbay serve` on the image's model repository, the models as
    they are (model control mode `none`); the host and ports come from the environment."""
    return ["modelbay", "serve", MODELS_DIR, "--model-control-mode", "none"]


def health_url(port: int = HTTP_PORT) -> str:
    """What the HEALTHCHECK asks: the server's readiness on loopback."""
    return f"http://127.0.0.1:{port}{READY_PATH}"


def _prebuild(requirements: Sequence[str]) -> list[str]:
    if not requirements:
        return []
    paths = " ".join(f"models/{path}" for path in requirements)
    return [
        "# The models' own environments (their packages are installed above: nothing to download).",
        f"RUN UV_NO_CACHE=1 python -m modelbay.ship.prebuild {paths}",
    ]


def _continued(instruction: str, parts: list[str], joiner: str = "") -> list[str]:
    """One instruction over several lines: `ENV A=1 \\` / `    B=2` (or `    && b` with joiner)."""
    lead = f"{joiner} " if joiner else ""
    lines = [f"{instruction} {parts[0]}"] + [f"    {lead}{part}" for part in parts[1:]]
    return [f"{line} \\" for line in lines[:-1]] + [lines[-1]]
