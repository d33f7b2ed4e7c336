"""The dashboard's files: every one a page names is in the package and served with a type a browser
accepts, nothing is fetched from elsewhere, and the vendored libraries are the files their README
says (byte for byte)."""

from __future__ import annotations

import hashlib
import re
import tomllib
from html.parser import HTMLParser

import pytest

from modelbay.dashboard.routes import STATIC, STATIC_URL
from tests.conftest import ROOT, asgi_client
from tests.http.test_openapi import tiny_server

pytestmark = pytest.mark.anyio
PAGES = ["index.html", "reference.html"]
SERVER_ROUTES = {"/", "/docs", "/metrics", "/openapi.json"}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def page_urls(page: str) -> list[str]:
    parser = Links()
    parser.feed((STATIC / page).read_text())
    return parser.urls


@pytest.mark.parametrize("page", PAGES)
def test_a_page_names_only_this_server_s_files(page: str) -> None:
    urls = page_urls(page)
    assert urls
    for url in urls:
        assert url in SERVER_ROUTES or url.startswith(f"{STATIC_URL}/"), url
        if url.startswith(STATIC_URL):
            assert (STATIC / url.removeprefix(f"{STATIC_URL}/")).is_file(), url


def test_every_module_import_is_a_file_of_the_package() -> None:
    scripts = sorted((STATIC / "js").glob("*.js"))
    assert len(scripts) >= 7
    for script in scripts:
        for target in re.findall(r'^import .*? from "(\./[^"]+)";$', script.read_text(), re.M):
            assert (script.parent / target).is_file(), (script.name, target)
        assert "http://" not in script.read_text() and "https://" not in script.read_text(), script.name


def test_the_package_data_holds_every_dashboard_file() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = ROOT / "src" / "modelbay"
    shipped = {path for pattern in patterns["modelbay"] for path in package.glob(pattern) if path.is_file()}
    files = {path for path in STATIC.rglob("*") if path.is_file()}
    assert files and files <= shipped, sorted(str(p) for p in files - shipped)


def test_the_vendored_files_are_those_the_readme_names() -> None:
    readme = (STATIC / "vendor" / "README.md").read_text()
    listed = dict((name, digest) for digest, name in re.findall(r"^    ([0-9a-f]{64})  (\S+)$", readme, re.M))
    files = {str(p.relative_to(STATIC / "vendor")) for p in (STATIC / "vendor").rglob("*") if p.is_file()}
    assert set(listed) == files - {"README.md"}
    for name, digest in listed.items():
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == digest, name
    for license_file in ("uplot/LICENSE", "swagger-ui/LICENSE", "swagger-ui/NOTICE"):
        assert license_file in listed


async def test_pages_and_files_are_served_with_their_types() -> None:
    async with asgi_client(tiny_server()) as http:
        for path in ("/", "/docs"):
            reply = await http.get(path)
            assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in reply.headers["content-security-policy"]
        docs = (await http.get("/docs")).text
        assert "<code>/v2/models/{model}/versions/{version}/infer</code>" in docs  # without JavaScript too
        types = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        for file in STATIC.rglob("*"):
            if file.suffix not in types:
                continue
            reply = await http.get(f"{STATIC_URL}/{file.relative_to(STATIC)}")
            assert reply.status_code == 200 and reply.content == file.read_bytes()
            assert types[file.suffix] in reply.headers["content-type"], file
        missing = await http.get(f"{STATIC_URL}/js/nothing.js")
        assert missing.status_code == 404
