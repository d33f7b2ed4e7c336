"""Container image references and the facts the image and its manifests share: the paths, the
user, the ports and the health routes.

A reference is `[registry[:port]/]path[:tag][@sha256:digest]` (the grammar of the distribution
project's reference package, simplified to what registries accept); `modelbay build` and
`modelbay manifests` want a tag or a digest, never an implicit `latest`.
"""

from __future__ import annotations

import argparse
import re

APP_DIR = "/opt/modelbay"
MODELS_DIR = f"{APP_DIR}/models"  # the model repository `modelbay serve` is started on
CACHE_DIR = f"{APP_DIR}/cache"  # XDG_CACHE_HOME: models' own environments, built in the image
UID = 10001  # the image's non-root user and group; numeric, so Kubernetes can check runAsNonRoot
HTTP_PORT = 8000
GRPC_PORT = 8001
LIVE_PATH = "/v2/health/live"  # OIP health routes: the process is up / every model is ready
READY_PATH = "/v2/health/ready"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?:(?P<registry>[A-Za-z0-9.-]+(?::[0-9]+)?)/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def image_reference(text: str) -> str:
    """`text` if it is an image reference with a tag or a digest (`resnet:1`,
    `registry.example:5000/team/resnet:1`, `resnet@sha256:...`).

    Raises argparse.ArgumentTypeError (usage and exit status 2) otherwise: a malformed reference,
    or one without a tag or a digest, which would mean whatever `latest` is at the time.
    """
    match = _REFERENCE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an image reference: expected NAME:TAG, e.g. resnet:1 or "
            "registry.example.com/team/resnet:1 (lowercase name)"
        )
    if not match["tag"] and not match["digest"]:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no tag: name the image's version (e.g. {text}:1), not an implicit latest"
        )
    return text


def image_name(reference: str) -> str:
    """The last path component of an image reference: `registry:5000/team/resnet:1` -> resnet."""
    match = _REFERENCE.match(reference)
    path = match["path"] if match else reference
    return path.rsplit("/", 1)[-1]


def image_tag(reference: str) -> str | None:
    """The tag of an image reference, or None when it has only a digest."""
    match = _REFERENCE.match(reference)
    return match["tag"] if match else None
