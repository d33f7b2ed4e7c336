"""The dashboard in a real browser: headless Chromium (Debian's, launched by its path) driven by
Playwright, against a real `modelbay serve`.

A server with no keys serving the built-in digits classifier: the page loads with no console error
and asks nothing of any other origin, its playground classifies examples/digits/samples/7.png
through the server, the curl and Python it shows run as they stand, and the charts count the
request. Its API reference renders, and "Try it out" sends valid requests as it stands. A server
with `--auth` and a model repository: an admin key typed in, a model loaded through the page goes
READY and answers tensors in its playground, a broken one shows FAILED with the reason and its load
log, and the split is set.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect, sync_playwright

from modelbay.auth.keys import create_key
from tests.conftest import SAMPLES, Served, serve_process
from tests.dashboard.conftest import make_repository

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = 15_000  # the longest any one wait may take
LOAD_WAIT_MS = 45_000  # a model load through the page (reading, warming up)
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser tests need Chromium: apt-get install chromium")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served, str, str]]:
    """Two real servers, started side by side: `modelbay serve` as a newcomer runs it (no arguments:
    the built-in digits model, no keys), and one with API keys over a repository (digits loaded;
    digits-onnx and broken not); and an admin key and an infer key of the second."""
    root = tmp_path_factory.mktemp("dashboard")
    models = make_repository(root)
    admin, _ = create_key(root / "keys.yaml", "ops", ["admin"])
    infer, _ = create_key(root / "keys.yaml", "app", ["infer"])
    starting = [
        serve_process(),
        serve_process(str(models), "--load-model", "digits", "--auth", str(root / "keys.yaml")),
    ]
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(len(starting)) as pool:
            futures = [pool.submit(server.__enter__) for server in starting]
        for server, future in zip(starting, futures, strict=True):
            if future.exception() is None:
                stack.push(server.__exit__)
        open_server, auth_server = (future.result() for future in futures)
        yield open_server, auth_server, admin, infer


@pytest.fixture(scope="module")
def open_server(servers: tuple[Served, Served, str, str]) -> Served:
    return servers[0]


@pytest.fixture(scope="module")
def auth_server(servers: tuple[Served, Served, str, str]) -> tuple[Served, str, str]:
    return servers[1], servers[2], servers[3]


class Watched:
    """A page, with every console error, uncaught exception and request to another origin it made."""

    def __init__(self, browser: Browser, origin: str) -> None:
        self.page: Page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.elsewhere: list[str] = []

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        self.page.on("console", console)
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith((f"{origin}/", "blob:", "data:"))
                else self.elsewhere.append(request.url)
            ),
        )

    def clean(self) -> None:
        assert self.errors == [] and self.elsewhere == []


@pytest.fixture
def watched(browser: Browser) -> Iterator[type[Watched]]:
    pages: list[Watched] = []

    def make(origin: str) -> Watched:
        pages.append(Watched(browser, origin))
        return pages[-1]

    yield make  # type: ignore[misc]
    for page in pages:
        page.page.close()


def state_of(page: Page, version: str = "1") -> object:
    return page.locator(f'#versions tr[data-version="{version}"] td .state')


def test_the_dashboard_classifies_a_real_digit_through_the_real_server(
    open_server: Served, watched: type[Watched]
) -> None:
    url = open_server.url
    tab = watched(url)
    page = tab.page
    page.goto(f"{url}/")
    expect(state_of(page)).to_have_text("READY")
    row = page.locator('#versions tr[data-version="1"]')
    expect(row).to_contain_text("image FP32 [-1, 1, 8, 8]")
    expect(row).to_contain_text("logits FP32 [-1, 10]")
    expect(row).to_contain_text("max_batch_size 64")
    expect(page.locator('#models [data-model="digits"]')).to_contain_text("v1 READY")
    tab.clean()

    page.click("#tab-playground")
    page.set_input_files("#playground-file", str(SAMPLES / "7.png"))
    expect(page.locator("#playground-topk tr.best .label")).to_have_text("7")
    expect(page.locator("#playground-status")).to_have_text(
        re.compile(r"^200 in [0-9.]+ ms, answered by version 1$")
    )
    scores = [float(s) for s in page.locator("#playground-topk td.num").all_inner_texts()]
    assert len(scores) == 3 and scores[0] > 0.99 and scores == sorted(scores, reverse=True)

    curl, python = page.locator("#playground-answer .code pre").all_inner_texts()
    assert curl.startswith('curl -X POST -H "Content-Type: image/png"') and f"{url}/predict/digits" in curl
    ran = subprocess.run(
        [sys.executable, "-c", python], cwd=SAMPLES, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("[{'label': '7', 'score': 0.99")
    if shutil.which("curl"):
        answer = subprocess.run(["bash", "-c", curl], cwd=SAMPLES, capture_output=True, text=True, timeout=60)
        assert json.loads(answer.stdout)["predictions"][0]["label"] == "7"

    page.click("#tab-metrics")
    # The page's request and the snippets' (curl, when present, and Python), no error.
    expect(page.locator("#metric-totals")).to_have_text(
        re.compile(r"since the server started: [23] requests, 0 errors")
    )
    expect(page.locator(".chart")).to_have_count(6)
    tab.clean()


def try_it_out(page: Page, operation: str) -> None:
    block = page.locator(f"#{operation}")
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    block.locator("button.execute").click()
    expect(block.locator(".live-responses-table tr.response .response-col_status")).to_have_text("200")


def test_the_api_reference_renders_and_its_try_it_out_sends_valid_requests(
    open_server: Served, watched: type[Watched]
) -> None:
    tab = watched(open_server.url)
    page = tab.page
    page.goto(f"{open_server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("modelbay")
    expect(page.locator("#operations-model-post_v2_models__model__infer")).to_be_visible()
    operations = page.locator(".opblock").count()
    paths = httpx.get(f"{open_server.url}/openapi.json", timeout=10).json()["paths"]
    assert operations == sum(len(item) for item in paths.values())
    try_it_out(page, "operations-model-get_v2_models__model_")  # the model field starts as "digits"
    try_it_out(page, "operations-model-post_v2_models__model__infer")  # a generated [1, 1, 8, 8] body
    body = page.locator(
        "#operations-model-post_v2_models__model__infer .live-responses-table .microlight"
    ).first
    assert json.loads(body.inner_text())["outputs"][0]["shape"] == [1, 10]
    tab.clean()


def test_an_admin_loads_models_through_the_page_and_reads_their_load_logs(
    auth_server: tuple[Served, str, str], watched: type[Watched]
) -> None:
    served, admin, infer = auth_server
    tab = watched(served.url)
    page = tab.page
    page.goto(f"{served.url}/")
    expect(page.locator("#access")).to_contain_text("checks API keys: type one")
    expect(page.locator('#models [data-model="digits"]')).to_be_visible()
    expect(page.locator('#models [data-model="digits-onnx"]')).to_have_count(0)  # the index needs the key
    tab.clean()  # without a key the page asks nothing it would be refused

    page.fill("#api-key", infer)  # may try models, not manage them: the page asks the index once
    page.click("#key-form button[type=submit]")
    expect(page.locator("#notice")).to_contain_text("API key 'app' may not use the model repository API")
    expect(page.locator('#versions tr[data-version="1"]')).to_contain_text("image FP32 [-1, 1, 8, 8]")
    expect(page.locator("#model-load")).to_have_count(0)
    page.wait_for_timeout(2500)  # one more refresh: the refused key is not sent to the index again
    assert len(tab.errors) == 1 and "403" in tab.errors[0]
    tab.errors.clear()

    page.fill("#api-key", admin)
    page.click("#key-form button[type=submit]")
    expect(page.locator('#models [data-model="digits-onnx"]')).to_contain_text("v1 UNAVAILABLE")
    page.click('#models [data-model="digits-onnx"]')
    expect(page.locator(".model-head h2")).to_have_text("digits-onnx")
    page.click("#model-load")
    expect(state_of(page)).to_have_text("READY", timeout=LOAD_WAIT_MS)
    expect(page.locator("#notice")).to_have_text("digits-onnx loaded")
    index = httpx.post(
        f"{served.url}/v2/repository/index", headers={"authorization": f"Bearer {admin}"}, timeout=10
    )
    assert {"name": "digits-onnx", "version": "1", "state": "READY", "reason": ""} in index.json()
    page.click('#versions button.log[data-version="1"]')
    expect(page.locator("#load-log-lines")).to_contain_text(
        "model 'digits-onnx' version 1: set up and warmed up in"
    )

    page.click("#tab-playground")
    page.click("#playground-send")
    expect(page.locator("#playground-status")).to_contain_text("200 in")
    answer = json.loads(page.locator("#playground-output").inner_text())
    assert answer["model_name"] == "digits-onnx" and answer["outputs"][0]["shape"] == [1, 10]
    tab.clean()

    page.click("#tab-overview")
    page.click('#models [data-model="broken"]')
    expect(page.locator(".model-head h2")).to_have_text("broken")
    page.click("#model-load")
    expect(state_of(page)).to_have_text("FAILED", timeout=LOAD_WAIT_MS)
    expect(page.locator('#versions tr[data-version="1"] .reason')).to_contain_text("INVALID_PROTOBUF")
    page.click('#versions button.log[data-version="1"]')
    expect(page.locator("#load-log-lines")).to_contain_text("model 'broken' version 1 failed to load")
    # The one error: the browser's own line for the load's answer, 500.
    assert len(tab.errors) == 1 and "500" in tab.errors[0]
    tab.errors.clear()

    page.click('#models [data-model="digits"]')
    expect(page.locator(".model-head h2")).to_have_text("digits")
    page.fill('#traffic input[data-version="1"]', "100")
    page.click("#split-save")
    expect(page.locator("#split-now")).to_have_text("Now: version 1: 100.0%")
    traffic = httpx.get(
        f"{served.url}/v2/repository/models/digits/traffic", headers={"x-api-key": admin}, timeout=10
    )
    assert traffic.json()["traffic"]["split"] == {"1": 100.0}
    tab.clean()


QUANTILES = """async () => {
  const charts = await import("/dashboard/static/js/charts.js");
  const buckets = [[0.01, 0], [0.02, 50], [0.05, 100], [null, 100]];
  const before = { requests: 10, errors: 1, batches: 4, batch_rows: 10, cache_hits: 0, cache_misses: 0,
                   queue_depth: 0, latency_buckets: [[0.01, 0], [0.02, 5], [0.05, 10], [null, 10]] };
  const now = { requests: 110, errors: 3, batches: 24, batch_rows: 110, cache_hits: 30, cache_misses: 10,
                queue_depth: 2, latency_buckets: [[0.01, 0], [0.02, 55], [0.05, 110], [null, 110]] };
  const restarted = { ...now, requests: 4, batches: 1, batch_rows: 4, errors: 0,
                      latency_buckets: [[0.01, 4], [0.02, 4], [0.05, 4], [null, 4]] };
  return {
    p50: charts.quantile(0.5, buckets), p99: charts.quantile(0.99, buckets),
    past: charts.quantile(0.5, [[0.01, 0], [null, 10]]), empty: charts.quantile(0.5, [[0.01, 0], [null, 0]]),
    point: charts.point(charts.versionDelta(now, before), 2),
    restarted: charts.point(charts.versionDelta(restarted, now), 2),
  };
}"""


def test_the_charts_take_rates_and_quantiles_as_prometheus_does(
    open_server: Served, watched: type[Watched]
) -> None:
    """charts.js, run in the browser: histogram_quantile's interpolation, rates over the interval,
    and a version whose counters restarted (loaded again) counted from zero."""
    tab = watched(open_server.url)
    tab.page.goto(f"{open_server.url}/")
    found = tab.page.evaluate(QUANTILES)
    assert found["p50"] == 0.02 and found["p99"] == pytest.approx(0.0494)
    assert found["past"] == 0.01 and found["empty"] is None  # past the last bound: that bound
    assert found["point"] == {
        "rps": 50,
        "p50": pytest.approx(20.0),
        "p99": pytest.approx(49.4),
        "batch": 5,
        "queue": 2,
        "hit": 75,
        "errors": 1,
    }
    assert found["restarted"]["rps"] == 2 and found["restarted"]["p99"] == pytest.approx(9.9)
    tab.clean()
