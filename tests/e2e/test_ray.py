"""modelbay on a real two-node Ray cluster on this machine (modelbay.ray).

A Ray head and a second Ray node (ray.cluster_utils.Cluster: their own raylets, object stores and
ports, one CPU each) on loopback, in a temporary Ray folder of their own. On Linux Ray replaces
127.0.0.1 with the host's address when a node or a driver joins; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
(read when ray is imported, hence the late imports) keeps every node and driver on 127.0.0.1.
`modelbay serve --ray` starts Serve with no HTTP proxy: its front answers HTTP itself on a free
loopback port of the head node; `serve deploy` of a config file puts Serve's proxy in front.

The real `modelbay serve REPOSITORY --ray auto --replicas 2` deploys the digits ONNX model with
a quarter of a CPU per replica (room for a second version loaded through the API, and for its
reload beside it), and Serve spreads a deployment's replicas over the nodes: one on each. Real
clients (tritonclient HTTP and gRPC, modelbay's Client) get what onnxruntime gives on held-out
scans; /metrics sums both replicas' batches; versions load, reload and unload through the API
under load; a replica killed under load is replaced, and only requests in flight on it fail.
`serve deploy` of a Serve config file naming `modelbay.ray:app` (through Ray's dashboard, which
the head node runs) deploys the same; so do `serve run modelbay.ray:app repository=...` and
`--ray ray://... --autoscale 1:2`, where Serve adds a replica under load. Everything started is
stopped, even on failure; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from sklearn.datasets import load_digits

from modelbay.client import Client
from modelbay.errors import InferenceFailed, InvalidInput, ModelbayError
from tests.conftest import DIGITS, Served, free_port, sample, serve_process, stop

pytestmark = [
    pytest.mark.e2e,
    # Ray leaves its Ray Client server's log files open when it starts that server (ray/_private/node.py)
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in.*ray_client_server:pytest.PytestUnraisableExceptionWarning"
    ),
]

ONNX = DIGITS / "artifacts" / "digits.onnx"
LOADERS = 6  # client threads of the kill test: at most this many requests are in flight at once


@dataclass
class RayCluster:
    """The two-node cluster: its GCS address, its node ids (head first) and its environment."""

    address: str
    nodes: list[str]
    environ: dict[str, str]
    dashboard: str  # Ray's dashboard (its REST API serves `serve deploy`)
    client: str  # the head's Ray Client server, ray://HOST:PORT


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    folder = tempfile.mkdtemp(prefix="mbray")  # short: Ray's socket paths live under it
    environ = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": folder}
    saved = {key: os.environ.get(key) for key in environ}
    os.environ.update(environ)
    import ray
    from ray.cluster_utils import Cluster

    with warnings.catch_warnings():  # Ray Serve's own pydantic models use deprecated Field keywords
        warnings.simplefilter("ignore", DeprecationWarning)
        import ray.serve
    started = None
    try:
        loopback = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
        dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port()}
        client_port = free_port()
        head = {**loopback, **dashboard, "ray_client_server_port": client_port}
        started = Cluster(initialize_head=True, head_node_args=head)
        started.add_node(**loopback)
        started.wait_for_nodes(timeout=60)
        ray.init(address=started.address, logging_level="ERROR", log_to_driver=False)
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        heads = [node["NodeID"] for node in ray.nodes() if "node:__internal_head__" in node["Resources"]]
        yield RayCluster(
            started.address,
            sorted(nodes, key=lambda n: n not in heads),
            dict(environ),
            f"http://127.0.0.1:{dashboard['dashboard_port']}",
            f"ray://127.0.0.1:{client_port}",
        )
    finally:
        ray.shutdown()
        if started is not None:
            started.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "digits" / "1").mkdir(parents=True)
    shutil.copy(ONNX, root / "digits" / "1" / "digits.onnx")
    return root


@dataclass
class OnRay:
    """The running `modelbay serve --ray`: its process, HTTP URL and gRPC address."""

    served: Served
    grpc: str

    @property
    def url(self) -> str:
        return self.served.url


@pytest.fixture(scope="module")
def on_ray(cluster: RayCluster, repository: Path) -> Iterator[OnRay]:
    grpc_port = free_port()
    # `auto`: the cluster `ray start` (here ray.cluster_utils) recorded in the Ray folder, RAY_TMPDIR
    args = ["--ray", "auto", "--replicas", "2", "--num-cpus", "0.25", "--grpc-port", str(grpc_port)]
    with serve_process(str(repository), *args, timeout_s=180) as served:
        yield OnRay(served, f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """96 scans of scikit-learn's digits as the model takes them ([96, 1, 8, 8] FP32 in 0..1) and
    what onnxruntime answers for them ([96, 10] logits)."""
    images = (load_digits().images[-96:] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    session = onnxruntime.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    return images, session.run(None, {"image": images})[0]


def replicas(version: str = "1", app: str = "modelbay") -> dict[str, str]:
    """The live replicas of a digits version: Ray actor name -> the id of the node it runs on.
    Serve names them SERVE_REPLICA::APP#DEPLOYMENT#ID: APP is "modelbay:digits:1" for a version the
    front deployed, "modelbay" for one a config file declared (`app` is a prefix of it: "default"
    for `serve run IMPORT_PATH`); the deployment is "digits:1"."""
    import ray

    actors = ray._private.state.actors().values()  # the GCS' actor table (no dashboard needed)
    return {
        actor["Name"]: actor["Address"]["NodeID"]
        for actor in actors
        if actor["Name"].startswith(f"SERVE_REPLICA::{app}") and f"#digits:{version}#" in actor["Name"]
        if actor["State"] == "ALIVE"
    }


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    """Poll `check()` every 0.2 s until it returns something truthy (returned); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout_s} s")


def test_replicas_run_one_on_each_node(cluster: RayCluster, on_ray: OnRay) -> None:
    placed = replicas()
    assert len(placed) == 2
    assert sorted(placed.values()) == sorted(cluster.nodes)


def test_real_clients_get_what_onnxruntime_gives(
    on_ray: OnRay, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    images, expected = held_out
    http = httpclient.InferenceServerClient(on_ray.url.removeprefix("http://"), concurrency=8)
    grpc = grpcclient.InferenceServerClient(on_ray.grpc)
    assert http.is_server_ready() and grpc.is_model_ready("digits")
    assert http.get_model_metadata("digits")["platform"] == "onnxruntime_onnx"

    def triton(index: int) -> Any:
        binary = index % 2 == 0  # the binary tensor extension and plain JSON, in turn
        tensor = httpclient.InferInput("image", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(images[index : index + 1], binary_data=binary)
        wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        return http.async_infer("digits", [tensor], outputs=wanted)

    pending = [triton(index) for index in range(len(images))]  # 8 at a time: both replicas batch
    answers = [call.get_result(timeout=60).as_numpy("logits") for call in pending]
    np.testing.assert_allclose(np.concatenate(answers), expected, rtol=1e-5, atol=1e-5)
    tensor = grpcclient.InferInput("image", [32, 1, 8, 8], "FP32")  # max_batch_size rows at once
    tensor.set_data_from_numpy(images[:32])
    np.testing.assert_allclose(grpc.infer("digits", [tensor]).as_numpy("logits"), expected[:32], atol=1e-5)
    with Client(on_ray.url) as client, Client(f"grpc://{on_ray.grpc}") as over_grpc:
        np.testing.assert_allclose(client.infer("digits", images[:8])["logits"], expected[:8], atol=1e-5)
        np.testing.assert_allclose(
            over_grpc.infer("digits", images[8:16])["logits"], expected[8:16], atol=1e-5
        )
        predictions = client.predict("digits", images[16].tolist())  # the simple door, JSON in
        np.testing.assert_allclose(np.asarray(predictions), expected[16], atol=1e-5)
        with pytest.raises(InvalidInput, match=r"expected shape \[-1, 1, 8, 8\]"):
            client.infer("digits", np.zeros((1, 3), np.float32))
    http.close()
    grpc.close()


def test_metrics_add_up_both_replicas(on_ray: OnRay, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = held_out
    labels = {"model": "digits", "version": "1"}

    def scrape() -> str:
        return httpx.get(f"{on_ray.url}/metrics", timeout=5).text

    def settled() -> str:  # the earlier tests' batches all pushed: two scrapes 2.5 s apart agree
        first = scrape()
        time.sleep(2.5)
        return (
            first
            if sample(scrape(), "modelbay_batch_size_sum", **labels)
            == sample(first, "modelbay_batch_size_sum", **labels)
            else ""
        )

    before = wait_for(settled, 20, "the replicas' metrics settled")
    rows_before = sample(before, "modelbay_batch_size_sum", **labels)
    calls_before = sample(before, "modelbay_requests_total", door="infer", status="success", **labels)
    with Client(on_ray.url) as client, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.infer("digits", images[i : i + 1]), range(40)))

    # The replicas push their batches every second: wait until all 40 rows are in the sum.
    def summed() -> str:
        text = scrape()
        return text if sample(text, "modelbay_batch_size_sum", **labels) >= rows_before + 40 else ""

    text = wait_for(summed, 15, "both replicas' batches in /metrics")
    assert sample(text, "modelbay_batch_size_sum", **labels) == rows_before + 40
    assert (
        sample(text, "modelbay_requests_total", door="infer", status="success", **labels) == calls_before + 40
    )
    assert sample(text, "modelbay_queue_depth", **labels) == 0


def test_management_on_the_cluster(
    on_ray: OnRay, repository: Path, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """A version dropped into the repository and loaded through the API runs as a Serve
    application of its own, on both nodes, and answers; removed from the repository while it is
    the version answering unversioned calls and loaded again, it drains and its application is
    deleted. Closed-loop clients calling the model by name throughout never get an error."""
    images, expected = held_out
    load = Load(images, expected, on_ray.url)
    threads = [threading.Thread(target=load.run, args=(seed,), daemon=True) for seed in range(3)]
    for thread in threads:
        thread.start()
    try:
        with Client(on_ray.url, timeout_s=300) as client:
            assert client.repository_index() == [
                {"name": "digits", "version": "1", "state": "READY", "reason": ""}
            ]
            shutil.copytree(repository / "digits" / "1", repository / "digits" / "2")
            client.load_model("digits")
            assert [(row["version"], row["state"]) for row in client.repository_index()] == [
                ("1", "READY"),
                ("2", "READY"),
            ]
            assert len(replicas("2")) == 2 and len(replicas("1")) == 2
            for version in ("1", "2"):
                logits = client.infer("digits", images[:8], version=version)["logits"]
                np.testing.assert_allclose(logits, expected[:8], atol=1e-5)
            # Its file changed: reloaded as a second application beside it, which then replaces it.
            (repository / "digits" / "2" / "digits.onnx").touch()
            client.load_model("digits")

            def reloaded() -> bool:
                apps = {name.split("#")[0] for name in replicas("2")}
                return apps == {"SERVE_REPLICA::modelbay:digits:2:2"} and len(replicas("2")) == 2

            wait_for(reloaded, 60, "version 2 reloaded as application modelbay:digits:2:2, the first gone")
            shutil.rmtree(repository / "digits" / "2")
            client.load_model("digits")  # version 2 gone from disk: unloaded
            ready = client.repository_index(ready=True)
            assert [(row["version"], row["state"]) for row in ready] == [("1", "READY")]
            wait_for(lambda: not replicas("2"), 60, "version 2's replicas gone")
            unloaded = time.monotonic()
            wait_for(lambda: load.answered_since(unloaded) >= 20, 30, "answers after the unload")
            assert client.set_default_version("digits", "1") == "1"
            # A version that cannot load: Serve reports its deploy failed, the load says why, the
            # version is FAILED in the index and nothing of it is left running.
            (repository / "digits" / "3").mkdir()
            (repository / "digits" / "3" / "digits.onnx").write_bytes(b"not an ONNX graph")
            with pytest.raises(ModelbayError, match="version 3: Serve could not deploy it"):
                client.load_model("digits")
            row = {row["version"]: row for row in client.repository_index()}["3"]
            assert row["state"] == "FAILED" and "onnxruntime cannot load it" in row["reason"], row
            wait_for(lambda: not replicas("3"), 60, "version 3's replicas gone")
            shutil.rmtree(repository / "digits" / "3")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=40)
    assert not load.failed, load.failed[:3]
    assert len(load.answered) >= 50


@dataclass
class Load:
    """Closed-loop clients sending single scans until stopped; each answer checked."""

    images: np.ndarray
    expected: np.ndarray
    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    answered: list[float] = field(default_factory=list)  # when each correct answer came
    failed: list[BaseException] = field(default_factory=list)

    def answered_since(self, moment: float) -> int:
        return sum(when > moment for when in self.answered)

    def run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with Client(self.url, timeout_s=30) as client:
            while not self.stop.is_set():
                index = int(rng.integers(len(self.images)))
                try:
                    logits = client.infer("digits", self.images[index : index + 1])["logits"]
                except Exception as exc:
                    self.failed.append(exc)
                    continue
                np.testing.assert_allclose(logits, self.expected[index : index + 1], atol=1e-5)
                self.answered.append(time.monotonic())


def test_a_replica_killed_under_load_is_replaced(
    on_ray: OnRay, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    import ray
    from ray import serve

    from modelbay.ray.autoscaling import HELD

    load = Load(*held_out, on_ray.url)
    threads = [threading.Thread(target=load.run, args=(seed,), daemon=True) for seed in range(LOADERS)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(load.answered) >= 50, 30, "50 answers before the kill")
        # What Serve's autoscaling reads (modelbay.ray.autoscaling): the requests a replica holds.
        handle = serve.get_deployment_handle("digits:1", app_name="modelbay:digits:1")
        wait_for(
            lambda: handle.record_autoscaling_stats.remote().result(timeout_s=10)[HELD] > 0,
            30,
            "a replica reporting the requests it holds",
        )
        victim = sorted(replicas())[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()

        def replaced() -> dict[str, str]:
            now = replicas()
            return now if len(now) == 2 and victim not in now else {}

        placed = wait_for(replaced, 120, "a new replica in place of the killed one")
        wait_for(lambda: load.answered_since(time.monotonic() - 1) >= 20, 30, "answers after")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=40)
    assert not any(thread.is_alive() for thread in threads)
    # Only the requests in flight on the killed replica may fail (each thread has one at a time),
    # and they fail as a model server's crash does: 500, saying the replica died.
    assert len(load.failed) <= LOADERS, load.failed
    for failure in load.failed:
        assert isinstance(failure, InferenceFailed) and "died" in failure.message, failure
    assert load.answered_since(killed_at) >= 20
    assert len(placed) == 2


def test_stopping_deletes_the_application(on_ray: OnRay) -> None:
    import ray

    on_ray.served.process.send_signal(signal.SIGTERM)
    assert on_ray.served.process.wait(timeout=90) == 0, on_ray.served.log()
    wait_for(lambda: not replicas(), 30, "the replicas gone")

    # modelbay started Serve on this cluster, so it shut Serve down too: no controller is left.
    def serve_gone() -> bool:
        actors = ray._private.state.actors().values()
        return not any(a["Name"] == "SERVE_CONTROLLER_ACTOR" and a["State"] == "ALIVE" for a in actors)

    wait_for(serve_gone, 30, "Serve's controller gone")


def test_serve_deploy_of_a_config_file_builds_the_same_application(
    cluster: RayCluster,
    repository: Path,
    held_out: tuple[np.ndarray, np.ndarray],
    on_ray: OnRay,
    tmp_path: Path,
) -> None:
    """Ray's own way: `serve deploy` of a Serve config file naming `import_path: modelbay.ray:app`
    (through Ray's dashboard), with no `port` argument, so the front is the ingress behind Serve's
    HTTP proxy (on the port of the file's http_options). After `modelbay serve --ray` stopped: it
    shut down the Serve it started, so this one starts with the file's options."""
    images, expected = held_out
    port = free_port()
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "modelbay",
                "route_prefix": "/",
                "import_path": "modelbay.ray:app",
                "args": {"repository": str(repository), "grpc_port": 0, "num_cpus": 0.5},
            }
        ],
    }
    (tmp_path / "modelbay-serve.yaml").write_text(yaml.safe_dump(config))
    serve_cli = [str(Path(sys.executable).parent / "serve")]
    dashboard = ["--address", cluster.dashboard]
    url = f"http://127.0.0.1:{port}"
    try:
        deployed = subprocess.run(
            [*serve_cli, "deploy", *dashboard, str(tmp_path / "modelbay-serve.yaml")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        wait_for(lambda: _ready(url), 180, "the deployed application ready")
        with Client(url) as client:
            np.testing.assert_allclose(client.infer("digits", images[:4])["logits"], expected[:4], atol=1e-5)
            predictions = client.predict("digits", images[4].tolist())  # the simple door
            np.testing.assert_allclose(np.asarray(predictions), expected[4], atol=1e-5)
    finally:
        subprocess.run([*serve_cli, "shutdown", "--yes", *dashboard], capture_output=True, timeout=120)
    wait_for(lambda: not replicas(), 60, "the replicas gone")


def test_serve_run_of_the_builder(
    cluster: RayCluster, repository: Path, held_out: tuple[np.ndarray, np.ndarray], on_ray: OnRay
) -> None:
    """Ray's own way by import path: `serve run modelbay.ray:app repository=... replicas=2`, the
    front the ingress behind Serve's HTTP proxy. This test starts Serve first, its proxy on a free
    port (`serve run` would start one on port 8000, which it cannot be told otherwise); Ctrl-C
    stops `serve run`, which shuts Serve down."""
    from ray import serve

    images, expected = held_out
    port = free_port()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    command = [str(Path(sys.executable).parent / "serve"), "run", "--address", cluster.address]
    command += ["modelbay.ray:app", f"repository={repository}", "replicas=2", "num_cpus=0.25", "grpc_port=0"]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _ready(url) or process.poll() is not None, 180, "serve run's application ready")
            assert process.poll() is None, _read(output)
            # one on each node (`serve run` names the application "default")
            assert sorted(set(replicas(app="default").values())) == sorted(cluster.nodes)
            with Client(url) as client:
                logits = client.infer("digits", images[:8])["logits"]
            np.testing.assert_allclose(logits, expected[:8], atol=1e-5)
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=90) == 0, _read(output)
        finally:
            stop(process)
    wait_for(lambda: not replicas(app="default"), 60, "the replicas gone")


def test_through_ray_client_replicas_follow_the_load(
    cluster: RayCluster, repository: Path, held_out: tuple[np.ndarray, np.ndarray], on_ray: OnRay
) -> None:
    """`--ray ray://HOST:PORT --autoscale 1:2 --target-ongoing-requests 0.25`: deployed through
    the head's Ray Client server, as from a laptop outside the cluster, each version with Serve's
    autoscaling on modelbay's policy; the front still answers on the head node. Under six
    closed-loop clients the replica holds about one request on average (the model takes
    microseconds: most of a request's time is HTTP and the front), four times the target, and
    Serve adds the second replica (after its look-back and upscale delay, about a minute), every
    answer still right."""
    images, expected = held_out
    args = ["--ray", cluster.client, "--autoscale", "1:2", "--target-ongoing-requests", "0.25"]
    with serve_process(str(repository), *args, "--num-cpus", "0.5", timeout_s=180) as served:
        with Client(served.url) as client:
            logits = client.infer("digits", images[:8])["logits"]
        np.testing.assert_allclose(logits, expected[:8], atol=1e-5)
        # What Serve runs the version with, as its dashboard's REST API reports it.
        applications = httpx.get(f"{cluster.dashboard}/api/serve/applications/", timeout=30).json()
        deployment = applications["applications"]["modelbay:digits:1"]["deployments"]["digits:1"]
        scaling = deployment["deployment_config"]["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 2)
        assert scaling["target_ongoing_requests"] == 0.25
        assert scaling["policy"]["policy_function"] == "modelbay.ray.autoscaling:requests_held_policy"
        assert len(replicas()) == 1
        load = Load(images, expected, served.url)
        threads = [threading.Thread(target=load.run, args=(seed,), daemon=True) for seed in range(LOADERS)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(replicas()) == 2, 150, "a second replica under load")
            wait_for(lambda: load.answered_since(time.monotonic() - 1) >= 20, 30, "answers after")
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=40)
        assert not load.failed, load.failed[:3]
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=90) == 0, served.log()
    wait_for(lambda: not replicas(), 60, "the replicas gone")


def test_a_signal_while_deploying_deletes_what_was_deployed(cluster: RayCluster, repository: Path) -> None:
    """Three replicas of one CPU each on a cluster of two CPUs: the third is never placed, so the
    deploy waits; Ctrl-C or SIGTERM then deletes what was deployed rather than leave it running."""
    command = [str(Path(sys.executable).parent / "modelbay"), "serve", str(repository)]
    command += ["--port", str(free_port()), "--ray", cluster.address, "--replicas", "3", "--num-cpus", "1"]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(replicas()) == 2 or process.poll() is not None, 120, "two replicas placed")
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=90) == 0
            log = _read(output)
            assert "stopped while deploying" in log and "serving on" not in log, log
        finally:
            stop(process)
    wait_for(lambda: not replicas(), 60, "the replicas gone")


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    return False


def _read(output: Any) -> str:
    output.seek(0)
    return output.read().decode(errors="replace")
