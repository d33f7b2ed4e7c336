"""`modelbay build` (a container build context) and `modelbay manifests` (Kubernetes, KServe and
edge-fleet objects) for a model file, model folder or model repository (modelbay.ship)."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from modelbay.errors import ModelbayError
from modelbay.ship.build import write_context
from modelbay.ship.images import image_name, image_reference, image_tag
from modelbay.ship.inventory import take_inventory
from modelbay.ship.manifests import (
    EDGE_TOLERATIONS,
    Autoscaling,
    Rollout,
    app_name,
    dump,
    label_value,
    manifests,
)
from modelbay.ship.pods import PodPlan, estimated_memory

# Kubernetes' quantity grammar (apimachinery resource.Quantity), as its OpenAPI schemas state it.
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
SOURCE_HELP = (
    "a model file, a model folder (modelbay.yaml / predict.py), a model with numbered versions, "
    "or a model repository"
)


def add_parsers(commands: Any) -> None:
    """Add `build` and `manifests` to the `modelbay` subparsers `commands`."""
    build = commands.add_parser(
        "build",
        help="write a reproducible container build context and Dockerfile for models",
        description="Write a build context: the models copied into a model repository, modelbay's wheel, "
        "requirements pinned at the versions installed here, only the extras the models need, and a "
        "Dockerfile (slim pinned base, non-root user, HEALTHCHECK, ports 8000/8001, `modelbay serve`). "
        "Prints the docker / podman command that builds it.",
    )
    build.add_argument("source", metavar="MODELS", help=SOURCE_HELP)
    build.add_argument(
        "-t", "--tag", required=True, type=image_reference, metavar="NAME:TAG", help="the image"
    )
    build.add_argument(
        "--out", help="the context folder (default: build/NAME); replaced if modelbay wrote it"
    )
    build.add_argument(
        "--base",
        type=image_reference,
        help="the FROM image (default: python:X.Y.Z-slim-bookworm, this Python's)",
    )
    build.add_argument(
        "--wheel", help="a modelbay wheel to ship (default: built from this modelbay's source)"
    )
    _manifest_parser(commands)


def _manifest_parser(commands: Any) -> None:
    manifest = commands.add_parser(
        "manifests",
        help="write Kubernetes manifests (Deployment, KServe InferenceService, edge-fleet DaemonSet)",
        description="Write the Kubernetes objects that run an image of `modelbay build` as multi-document "
        "YAML: a Deployment and a Service (+ an HPA with --hpa), a KServe InferenceService (--kserve), or a "
        "DaemonSet on the nodes of a label (--fleet KEY=VALUE). Apply with `kubectl apply -f FILE`.",
    )
    manifest.add_argument("source", metavar="MODELS", help=SOURCE_HELP)
    manifest.add_argument("--image", required=True, type=image_reference, metavar="NAME:TAG")
    manifest.add_argument(
        "--name", help="the objects' name (default: the model's, or the repository folder's)"
    )
    manifest.add_argument("--namespace", help="metadata.namespace (default: kubectl's current one)")
    manifest.add_argument("--replicas", type=_positive, help="pods (default 1); with --hpa, the minimum")
    manifest.add_argument("--cpu", type=_quantity, default="1", help="CPU request per pod (default 1)")
    manifest.add_argument(
        "--memory", type=_quantity, help="memory request and limit (default: from the models)"
    )
    manifest.add_argument(
        "--max-startup-s", type=_positive, default=300, help="seconds loading may take before a restart (300)"
    )
    manifest.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    scaling = manifest.add_argument_group("autoscaling (HorizontalPodAutoscaler on CPU, or KServe's)")
    scaling.add_argument("--hpa", action="store_true", help="scale on average CPU utilisation")
    scaling.add_argument(
        "--min", type=_positive, dest="min_replicas", help="fewest replicas (--replicas, else 1)"
    )
    scaling.add_argument("--max", type=_positive, dest="max_replicas", help="most replicas (3 x the minimum)")
    scaling.add_argument("--cpu-target", type=_percent, help="average CPU utilisation to aim at, in %% (70)")
    kinds = manifest.add_argument_group("where it runs")
    kinds.add_argument(
        "--kserve", action="store_true", help="a KServe InferenceService (custom v2 predictor)"
    )
    kinds.add_argument(
        "--fleet", type=_label, metavar="KEY=VALUE", help="a DaemonSet on every node so labelled"
    )
    kinds.add_argument(
        "--toleration",
        dest="tolerations",
        action="append",
        type=_taint,
        metavar="KEY[=VALUE]:EFFECT",
        help="--fleet: also tolerate this taint (node-role.kubernetes.io/edge:NoSchedule always); repeat",
    )
    kinds.add_argument(
        "--max-unavailable", type=_count_or_percent, help="--fleet: nodes updated at once, N or N%% (10%%)"
    )


def run(args: argparse.Namespace) -> int:
    """Run `build` or `manifests`; exit status 2 with one line when the input cannot be shipped."""
    try:
        return build(args) if args.command == "build" else write_manifests(args)
    except ModelbayError as exc:
        print(f"modelbay {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"modelbay {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a --wheel or --out that is not there, an --output folder not writable
        print(f"modelbay {args.command}: {exc}", file=sys.stderr)
        return 2


def build(args: argparse.Namespace) -> int:
    """Write the context, then print the commands that build the image."""
    out = Path(args.out or Path("build") / image_name(args.tag))
    wheel = Path(args.wheel) if args.wheel else None
    context = write_context(Path(args.source), out, args.tag, base=args.base, wheel=wheel)
    models = ", ".join(
        f"{m.name} [{', '.join(sorted(f.value for f in m.formats))}]" for m in context.inventory.models
    )
    extras = ", ".join(context.extras) or "none"
    torch = f"torch {context.pins['torch']}" if "torch" in context.pins else "no torch"
    print(
        f"modelbay: wrote the build context {out}: {models}; extras {extras}; "
        f"{len(context.pins)} packages pinned ({torch})",
        file=sys.stderr,
    )
    for module in context.missing:
        print(
            f"modelbay: warning: the models import {module!r}, which no package installed here provides "
            "(not in the image unless a requirements.txt names it)",
            file=sys.stderr,
        )
    where = shlex.quote(str(out))
    print(f"docker build -t {shlex.quote(args.tag)} {where}")
    print(f"podman build --format docker -t {shlex.quote(args.tag)} {where}")  # OCI drops HEALTHCHECK
    return 0


def write_manifests(args: argparse.Namespace) -> int:
    """Print (or write to --output) the objects of the rollout the flags describe."""
    rollout = rollout_of(args)
    comment = f"modelbay manifests for {args.image}: kubectl apply -f FILE"
    text = dump(manifests(rollout), comment)
    if args.output:
        Path(args.output).write_text(text)
        print(f"modelbay: wrote {args.output}: kubectl apply -f {shlex.quote(args.output)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def rollout_of(args: argparse.Namespace) -> Rollout:
    """The Rollout the `manifests` flags describe. Raises ValueError for flags that do not go
    together; ModelLoadError for a source that holds no models."""
    _check_combination(args)
    inventory = take_inventory(Path(args.source))
    default = inventory.names[0] if len(inventory.names) == 1 else Path(args.source).resolve().name
    pod = PodPlan(
        name=app_name(args.name or default, kserve=args.kserve, exact=bool(args.name)),
        image=args.image,
        cpu=args.cpu,
        memory=args.memory or estimated_memory(inventory.size_bytes, inventory.needs_torch),
        max_startup_s=args.max_startup_s,
        version=label_value(image_tag(args.image)),
    )
    scaling = None
    if args.hpa:
        low = args.min_replicas or args.replicas or 1
        high = args.max_replicas or 3 * low
        if high < low:
            raise ValueError(f"--max {high} is below the minimum of {low} replicas")
        scaling = Autoscaling(low, high, args.cpu_target or 70)
    extra_taints = tuple(args.tolerations or ())
    return Rollout(
        pod=pod,
        namespace=args.namespace,
        replicas=args.replicas or 1,
        autoscaling=scaling,
        kserve=args.kserve,
        fleet=args.fleet,
        tolerations=tuple(dict.fromkeys((*EDGE_TOLERATIONS, *extra_taints))),
        max_unavailable=args.max_unavailable or "10%",
    )


def _check_combination(args: argparse.Namespace) -> None:
    if not args.hpa and (args.min_replicas or args.max_replicas or args.cpu_target):
        raise ValueError("--min, --max and --cpu-target go with --hpa")
    if args.fleet and (args.kserve or args.hpa or args.replicas):
        raise ValueError(
            "--fleet runs one pod on each labelled node: it takes no --kserve, --hpa or --replicas"
        )
    if not args.fleet and (args.tolerations or args.max_unavailable):
        raise ValueError("--toleration and --max-unavailable go with --fleet")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def _percent(text: str) -> int:
    value = _positive(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a percentage, 1 to 100")
    return value


def _count_or_percent(text: str) -> int | str:
    if text.endswith("%"):
        return f"{_percent(text[:-1])}%"
    return _positive(text)


def _quantity(text: str) -> str:
    """A resource quantity for a request or limit: Kubernetes' grammar, and not negative (the API
    server refuses a negative request). Raises argparse.ArgumentTypeError (exit 2) otherwise."""
    if not _QUANTITY.match(text) or text.startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 768Mi, 2Gi)")
    return text


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not _LABEL_KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63 or label_value(value) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a node label KEY=VALUE, e.g. type=controller or example.com/site=lab-1"
        )
    return key, value


def _taint(text: str) -> tuple[str, str | None, str]:
    spec, sep, effect = text.rpartition(":")
    if not sep or effect not in _EFFECTS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KEY[=VALUE]:EFFECT, EFFECT one of {', '.join(_EFFECTS)}"
        )
    if "=" in spec:
        key, value = _label(spec)
        return key, value, effect
    if not _LABEL_KEY.match(spec):
        raise argparse.ArgumentTypeError(f"{text!r}: {spec!r} is not a taint key")
    return spec, None, effect
