"""`modelbay serve ... --ray ADDRESS`: deploy the models to a Ray cluster and serve until stopped.

Like `serve run`: the command deploys the application (modelbay.ray.app), prints where it
answers, and stays in the foreground; Ctrl-C or SIGTERM deletes the application from the cluster.
Ray is imported only when --ray is given.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from modelbay.errors import ModelLoadError
from modelbay.ray.options import RayOptions
from modelbay.settings import Settings

RAY_FLAGS = ("replicas", "autoscale", "target_ongoing_requests", "num_cpus", "num_gpus")


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """The `--ray` group of `modelbay serve`."""
    group = serve.add_argument_group("Ray cluster (each model version a Ray Serve deployment)")
    group.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="serve on this Ray cluster: auto (the one `ray start` made here), HOST:PORT or ray://HOST:10001",
    )
    group.add_argument("--replicas", type=int, help="replicas per model version (default 1)")
    group.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale each model version's replicas")
    group.add_argument(
        "--target-ongoing-requests",
        type=float,
        metavar="N",
        help="with --autoscale: requests in flight per replica to scale towards (default: max_batch_size)",
    )
    group.add_argument("--num-cpus", type=float, help="CPUs each replica holds (default 1)")
    group.add_argument("--num-gpus", type=float, help="GPUs each replica holds (default 0)")


def options(args: argparse.Namespace) -> RayOptions | None:
    """The Ray options of the command line; None without --ray. Raises ModelLoadError for a bad
    value, or a Ray flag without --ray."""
    given = {key: getattr(args, key) for key in RAY_FLAGS if getattr(args, key) is not None}
    if args.ray is None:
        if given:
            flags = ", ".join(f"--{key.replace('_', '-')}" for key in given)
            raise ModelLoadError(f"{flags}: only with --ray ADDRESS (serving on a Ray cluster)")
        return None
    if args.workers is not None:
        raise ModelLoadError("--workers does not apply with --ray: use --replicas or --autoscale")
    return RayOptions.parse(given)


def serve(settings: Settings, options: RayOptions, address: str) -> int:
    """Deploy `settings`' models to the cluster at `address` and serve until SIGINT / SIGTERM.

    Returns the exit status: 2 (with one line) when Ray is missing, the models or the port are
    wrong, no cluster answers at `address` or the application fails to deploy.
    """
    if not settings.port:
        return _refuse("with --ray, --port must name a port: the front listens there, on the head node")
    try:
        import ray
        from ray import serve as ray_serve

        from modelbay.ray.app import build_app
    except ImportError as exc:
        return _refuse(f"--ray needs Ray Serve: pip install 'modelbay[ray]' ({exc})")
    try:
        application = build_app(settings, options, managed=True)
    except ModelLoadError as exc:
        return _refuse(exc.message)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        return _refuse(f"no Ray cluster answers at {address}: {exc}")
    started_serve = _serve_absent(ray_serve)
    stop = _ExitSignals()  # after ray.init, which installs a SIGTERM handler of its own
    try:
        # The front answers HTTP itself (modelbay.ray.front.HttpFront): no Serve proxy is needed.
        # A Serve already running on the cluster keeps its own proxies.
        ray_serve.start(proxy_location="Disabled")
        ray_serve.run(application, name=options.name, route_prefix=None)
        stop.interrupting = False
        print(f"modelbay: {_serving(settings, options)}", file=sys.stderr, flush=True)
        stop.wait()
    except _Stopped:  # a signal while deploying: undo what was deployed so far
        print("modelbay: stopped while deploying", file=sys.stderr, flush=True)
    except Exception as exc:  # Serve's deploy failures are RuntimeErrors and its own classes
        return _refuse(f"the application did not deploy: {first_line(exc)}")
    finally:
        stop.interrupting = False  # a second signal must not cut the clean-up short
        _end(ray_serve, options.name, started_serve)
        ray.shutdown()
    return 0


def _serving(settings: Settings, options: RayOptions) -> str:
    count = f"autoscaled {options.autoscale}" if options.autoscale else f"{options.replicas}"
    where = f"http://{settings.host}:{settings.port}"
    if settings.grpc_port:
        where += f" and grpc://{settings.host}:{settings.grpc_port}"
    where += " (the front, on the head node)"
    return f"serving on {where}: Ray Serve application {options.name!r}, {count} replica(s) per model version"


class _Stopped(Exception):
    """SIGINT or SIGTERM came while the application was deploying."""


class _ExitSignals:
    """SIGINT and SIGTERM end `serve`: while `interrupting` (deploying) they raise _Stopped, so
    what was deployed is deleted (Ray's own SIGTERM handler would exit at once and leave the
    application on the cluster); then they end `wait`."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.interrupting = True
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self._stop.set()
        if self.interrupting:
            raise _Stopped

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass


def _serve_absent(ray_serve: Any) -> bool:
    """Whether Serve is not running on the cluster (no application, no proxy): then this command
    starts it, and shuts it down when it ends, so a later `serve run` starts one with its proxy."""
    status = ray_serve.status()
    return not status.applications and not status.proxies


def _end(ray_serve: Any, name: str, started_serve: bool) -> None:
    """Delete the application and wait until its replicas are gone (their models closed); shut
    Serve down too when this command started it and no other application runs in it."""
    try:
        ray_serve.delete(name)  # the front first: it stops taking requests
        for version in [app for app in ray_serve.status().applications if app.startswith(f"{name}:")]:
            ray_serve.delete(version)  # the versions the front deployed (modelbay.ray.front)
        if started_serve and not ray_serve.status().applications:
            ray_serve.shutdown()
    except Exception as exc:  # the cluster went away: nothing left to delete
        print(f"modelbay: could not delete the application {name!r}: {first_line(exc)}", file=sys.stderr)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (Ray's and Serve's run to tracebacks), else its type."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _refuse(reason: str) -> int:
    print(f"modelbay: cannot serve: {reason}", file=sys.stderr)
    return 2
