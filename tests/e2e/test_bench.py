"""`modelbay bench`: its load generator against a real server, the choice of the best setting, and
the command end to end: a model folder swept with real `modelbay serve` processes, the winner
written into its modelbay.yaml (the user's lines kept), the curve drawn; a running server's batching
changed through its model repository API; mistakes refused with exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from modelbay.bench.load import Measured, Target, measure
from modelbay.bench.sweep import Point, Setting, best, example_body, grid
from tests.conftest import modelbay_serve

pytestmark = pytest.mark.e2e


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelbay.cli.main", "bench", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def point(setting: Setting, rps: float, p99_ms: float, errors: int = 0) -> Point:
    return Point(setting, Measured(8, int(rps), errors, 1.0, rps, p99_ms / 2, p99_ms))


def test_the_best_setting_is_the_fastest_that_meets_the_slo_without_errors() -> None:
    small, large, adaptive = Setting(8, 0.0), Setting(64, 5.0), Setting(64, 0.0, 1, 50.0)
    points = [
        point(small, 900, 12),
        point(large, 1500, 80),
        point(adaptive, 1200, 40),
        point(small, 1300, 9, 1),
    ]
    assert best(points, 50.0) is points[2]  # the fastest within 50 ms without errors
    assert best(points, None) is points[1]
    assert best(points, 5.0) is None
    assert grid([8, 64], [0.0, 5.0], [1, 2], 50.0) == [
        Setting(8, 0.0, 1),
        Setting(8, 5.0, 1),
        Setting(64, 0.0, 1),
        Setting(64, 5.0, 1),
        Setting(8, 0.0, 2),
        Setting(8, 5.0, 2),
        Setting(64, 0.0, 2),
        Setting(64, 5.0, 2),
        Setting(64, 0.0, 1, 50.0),
        Setting(64, 0.0, 2, 50.0),
    ]
    assert adaptive.batching() == {"max_batch_size": 64, "max_queue_delay_ms": 0.0, "slo_ms": 50.0}


def test_the_load_generator_drives_a_real_server(tiny_files: dict[str, Path]) -> None:
    with modelbay_serve(str(tiny_files["onnx"]), "--name", "tiny") as url:
        body = example_body(url, "tiny", {})
        assert json.loads(body)["inputs"][0]["shape"] == [1, 4]
        target = Target.of(f"{url}/v2/models/tiny/infer", body, {"Content-Type": "application/json"})
        measured = measure(target, concurrency=4, duration_s=1.0, warmup_s=0.2, processes=2)
        assert measured.requests > 10 and measured.errors == 0
        assert 0 < measured.p50_ms <= measured.p99_ms
        served = httpx.get(f"{url}/metrics").text
        assert "modelbay_requests_total" in served
        missing = Target.of(f"{url}/v2/models/nope/infer", body, {"Content-Type": "application/json"})
        refused = measure(missing, concurrency=2, duration_s=0.5, warmup_s=0.0)
        assert refused.requests == 0 and refused.errors > 0  # every answer a 404


def test_bench_sweeps_a_model_folder_and_writes_the_winner(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copy(tiny_files["onnx"], folder / "model.onnx")
    (folder / "modelbay.yaml").write_text("# my notes\nbatching:\n  max_queue_size: 77\ntimeout_s: 9\n")
    plot, points = tmp_path / "curve.png", tmp_path / "points.json"
    done = bench(
        str(folder),
        *("--slo-ms", "1000", "--concurrency", "1,4", "--max-batch-size", "4,16"),
        *("--max-queue-delay-ms", "0", "--duration-s", "0.5", "--processes", "1"),
        *("--plot", str(plot), "--json", str(points), "--write"),
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(points.read_text())
    assert len(rows) == 6 and sum(row["best"] for row in rows) == 1  # 2 fixed + adaptive, 2 concurrencies
    chosen = next(row for row in rows if row["best"])
    assert chosen["rps"] == max(row["rps"] for row in rows if row["errors"] == 0 and row["p99_ms"] <= 1000)
    assert "<- best" in done.stdout and "best within the 1000 ms SLO" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = (folder / "modelbay.yaml").read_text()
    assert manifest.startswith("# my notes\n") and "# >>> modelbay bench" in manifest
    written = yaml.safe_load(manifest)
    assert written["timeout_s"] == 9
    assert written["batching"] == {"max_queue_size": 77, **chosen["batching"]}


def test_bench_changes_a_running_servers_batching(tiny_files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "tiny" / "1").mkdir(parents=True)
    shutil.copy(tiny_files["onnx"], tmp_path / "tiny" / "1" / "model.onnx")
    with modelbay_serve(str(tmp_path)) as url:
        done = bench(
            "tiny",
            *("--url", url, "--concurrency", "2", "--max-batch-size", "2,8", "--max-queue-delay-ms", "1"),
            *("--duration-s", "0.5", "--processes", "1"),
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("max_batch_size 8, delay 1 ms") >= 1
        assert "best: " in done.stdout  # no SLO: the fastest
        index = httpx.post(f"{url}/v2/repository/index", json={}).json()
        assert [row["state"] for row in index] == ["READY"]  # reloaded with each setting, serving


def test_bench_refuses_mistakes_with_one_line(tiny_files: dict[str, Path]) -> None:
    file_not_folder = bench(str(tiny_files["onnx"]), "--write", "--duration-s", "0.1")
    assert file_not_folder.returncode == 2
    assert "--write records into a model folder" in file_not_folder.stderr
    workers = bench("tiny", "--url", "http://127.0.0.1:9", "--workers", "2")
    assert workers.returncode == 2 and "--workers is a setting of the server" in workers.stderr
    unreachable = bench("tiny", "--url", "http://127.0.0.1:9", "--duration-s", "0.1")
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    bad = bench(str(tiny_files["onnx"]), "--concurrency", "0,2")
    assert bad.returncode == 2 and "expected whole numbers >= 1" in bad.stderr
