"""Inputs by URL (runtime/fetch.py): every refusal, checked before anything is sent, and the
fetches that are allowed, from real HTTP and HTTPS servers on loopback.

Host names are mapped to addresses by the fetcher's resolver, a table here: a refused address is
never connected to (the connector records every connection it opens, and for refusals it opens
none). The origins listen on 127.0.0.1, itself refused; the tests that fetch from them pass
`loopback_allowed`, an address check that lets exactly 127.0.0.1 through and refuses everything
else as the default check does. Nothing outside the tests can switch it on: it is an argument of
UrlFetcher, which the server builds with the default check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpcore
import pytest
import trustme

from modelbay.errors import DeadlineExceeded, InvalidInput, ModelbayError, ModelLoadError, PayloadTooLarge
from modelbay.runtime.cache import request_key
from modelbay.runtime.fetch import Address, UrlFetcher, UrlInput, address_refusal, host_allowed
from modelbay.settings import UrlInputConfig, model_config
from tests.conftest import SAMPLES

pytestmark = pytest.mark.anyio

IMAGE = (SAMPLES / "7.png").read_bytes()
LOOPBACK = ipaddress.ip_address("127.0.0.1")
Route = Callable[[asyncio.StreamWriter], Awaitable[None]]


def loopback_allowed(address: Address) -> str | None:
    """The default address check, except that 127.0.0.1 (where the test origins listen) passes."""
    return None if address == LOOPBACK else address_refusal(address)


def resolver(table: dict[str, Sequence[str]]) -> Callable[[str, int], Awaitable[Sequence[str]]]:
    """A resolver that knows only `table`'s names; asking it for any other name fails the test."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        assert host in table, f"the fetcher resolved {host!r}, which it should never have asked about"
        return table[host]

    return resolve


class RecordingConnector(httpcore.AnyIOBackend):
    """httpcore's anyio backend, recording every (address, port) it opens a connection to."""

    def __init__(self) -> None:
        self.connected: list[tuple[str, int]] = []

    async def connect_tcp(
        self, host: str, port: int, *args: Any, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        self.connected.append((host, port))
        return await super().connect_tcp(host, port, *args, **kwargs)


class Origin:
    """A real HTTP/1.1 server on 127.0.0.1 (TLS with `ssl_context`): each path is answered by its
    route, whatever the query (404 without one); `paths` records what was asked (with the query),
    `sent` the body bytes an `endless` route wrote."""

    def __init__(self, routes: dict[str, Route], ssl_context: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.ssl_context = ssl_context
        self.paths: list[str] = []
        self.sent = 0
        self.port = 0
        self.handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.handlers:  # connections still open (a stalled answer): ended, not leaked
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.paths.append(path)
                await self.routes.get(path.partition("?")[0], answer(404, b"no such file"))(writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)

    def url(self, path: str, host: str = "images.test", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    async def route(writer: asyncio.StreamWriter) -> None:
        fields = {"content-length": str(len(body)), **(headers or {})}
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()

    return route


def redirect(location: str) -> Route:
    return answer(302, headers={"location": location})


def endless(origin_of: Callable[[], Origin], chunk: int = 65536, total: int = 64 * 2**20) -> Route:
    """A chunked body of `total` bytes, never declared; what was written is counted in `sent`."""

    async def route(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        origin = origin_of()
        while origin.sent < total:
            writer.write(f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n")
            await writer.drain()
            origin.sent += chunk

    return route


async def stall(writer: asyncio.StreamWriter) -> None:
    """Headers and half a body, then nothing for longer than any test waits."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 50)
    await writer.drain()
    await asyncio.sleep(60)


def policy(*hosts: str, **fields: Any) -> UrlInputConfig:
    return UrlInputConfig(allow_hosts=list(hosts or ["images.test"]), **fields)


async def refusal(fetch: Awaitable[Any], kind: type[ModelbayError] = InvalidInput) -> str:
    """The message of the `kind` error that awaiting `fetch` raises."""
    with pytest.raises(kind) as raised:
        await fetch
    return raised.value.message


@pytest.fixture
def connector() -> RecordingConnector:
    return RecordingConnector()


def fetcher(
    connector: RecordingConnector, table: dict[str, Sequence[str]], ssl_context: ssl.SSLContext | None = None
) -> UrlFetcher:
    return UrlFetcher(resolver(table), loopback_allowed, connector, ssl_context)


METADATA = "a link-local address (the cloud metadata service)"
NON_PUBLIC = {
    "127.0.0.1": "a loopback address",
    "10.0.0.5": "a private address",
    "172.16.0.1": "a private address",
    "192.168.1.1": "a private address",
    "169.254.169.254": METADATA,
    "::1": "a loopback address",
    "fe80::1": "a link-local address",
    "fc00::1": "a private address",
    "::ffff:127.0.0.1": "the IPv4-mapped form of 127.0.0.1, a loopback address",
    "::ffff:169.254.169.254": f"the IPv4-mapped form of 169.254.169.254, {METADATA}",
    "100.64.0.1": "a carrier-grade NAT address (100.64.0.0/10)",
    "0.0.0.0": "an unspecified address",
    "0.1.2.3": "an unspecified address",
    "::": "an unspecified address",
    "224.0.0.1": "a multicast address",
    "ff02::1": "a multicast address",
    "240.0.0.1": "a reserved address",
    "fec0::1": "a site-local address",
    "2002:a00:5::1": "an IPv6 address embedding 10.0.0.5, a private address",
    "64:ff9b::7f00:1": "an IPv6 address embedding 127.0.0.1, a loopback address",
}


@pytest.mark.parametrize("address", NON_PUBLIC)
async def test_a_name_resolving_to_a_non_public_address_is_refused_before_connecting(
    address: str, connector: RecordingConnector
) -> None:
    want = NON_PUBLIC[address]
    assert address_refusal(ipaddress.ip_address(address)) == want
    with pytest.raises(InvalidInput) as refused:
        # The server's own check (the default), with the test's names.
        await UrlFetcher(resolver({"images.test": [address]}), connector=connector).fetch(
            "https://images.test/7.png", policy()
        )
    assert refused.value.message == (
        f"images.test resolves to {ipaddress.ip_address(address)}, {want}; "
        "URL inputs are never fetched from such addresses"
    )
    assert connector.connected == []


def test_public_addresses_pass_the_check() -> None:
    for address in ("93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"):
        assert address_refusal(ipaddress.ip_address(address)) is None, address


async def test_a_name_with_one_private_address_among_public_ones_is_refused(
    connector: RecordingConnector,
) -> None:
    mixed = {"images.test": ["93.184.215.14", "10.0.0.5"]}
    message = await refusal(fetcher(connector, mixed).fetch("https://images.test/7.png", policy()))
    assert message.startswith("images.test resolves to 10.0.0.5, a private address")
    assert connector.connected == []


async def test_ip_literals_are_checked_as_written(connector: RecordingConnector) -> None:
    cases = {
        "https://10.0.0.5/a.png": "10.0.0.5 is a private address",
        "https://[::1]:8443/a.png": "::1 is a loopback address",
        "https://169.254.169.254/": "169.254.169.254 is a link-local address (the cloud metadata service)",
        "https://[::ffff:7f00:1]/": "::ffff:7f00:1 is the IPv4-mapped form of 127.0.0.1, a loopback address",
    }
    allowed = policy("10.0.0.5", "::1", "169.254.169.254", "::ffff:7f00:1")
    for url, want in cases.items():
        assert (await refusal(fetcher(connector, {}).fetch(url, allowed))).startswith(want)
    assert connector.connected == []


async def test_the_system_resolver_is_checked_too() -> None:
    """The server's own fetcher (default resolver and check): localhost is loopback, refused."""
    message = await refusal(UrlFetcher().fetch("https://localhost/7.png", policy("localhost")))
    assert message.split(",")[0] in ("localhost resolves to 127.0.0.1", "localhost resolves to ::1")
    assert ", a loopback address;" in message


async def test_a_host_not_allowed_is_refused_without_resolving_it(connector: RecordingConnector) -> None:
    for url, host in (
        ("https://evil.test/7.png", "evil.test"),
        ("https://images.test.evil.test/", "images.test.evil.test"),
        ("https://images.test@evil.test/7.png", "evil.test"),
        ("https://169.254.169.254/", "169.254.169.254"),
    ):
        message = await refusal(fetcher(connector, {}).fetch(url, policy()))
        assert message == f"host {host!r} is not in the model's url_inputs.allow_hosts"
    assert connector.connected == []


def test_allowed_hosts_match_exactly_or_below_a_wildcard() -> None:
    assert host_allowed("images.example.com", "images.example.com")
    assert not host_allowed("images.example.com.evil.test", "images.example.com")
    assert host_allowed("a.b.example.com", "*.example.com")
    assert not host_allowed("example.com", "*.example.com")
    assert not host_allowed("badexample.com", "*.example.com")


async def test_only_https_unless_http_is_allowed(connector: RecordingConnector) -> None:
    cases = {
        "http://images.test/": "only https URLs are fetched (the model's url_inputs.allow_http is false)",
        "ftp://images.test/7.png": "only https URLs are fetched; its scheme is 'ftp'",
        "images.test/7.png": "only https URLs are fetched; it has no scheme",
        "file:///etc/passwd": "only https URLs are fetched; its scheme is 'file'",
    }
    for url, want in cases.items():
        assert await refusal(fetcher(connector, {}).fetch(url, policy())) == want
    gopher = fetcher(connector, {}).fetch("gopher://images.test/", policy(allow_http=True))
    assert (await refusal(gopher)).startswith("only https and http URLs are fetched")
    assert connector.connected == []


async def test_an_allowed_url_is_fetched_from_the_address_checked(connector: RecordingConnector) -> None:
    async with Origin({"/7.png": answer(200, IMAGE)}) as origin:
        got = await fetcher(connector, {"images.test": ["127.0.0.1"]}).fetch(
            origin.url("/7.png"), policy(allow_http=True)
        )
    assert got == IMAGE
    assert connector.connected == [("127.0.0.1", origin.port)]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def tls_client(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_verifies_the_url_host_name_though_the_connection_goes_to_an_address(
    ca: trustme.CA, connector: RecordingConnector
) -> None:
    names = {"images.test": ["127.0.0.1"]}
    async with Origin({"/7.png": answer(200, IMAGE)}, tls_server(ca, "images.test")) as origin:
        got = await fetcher(connector, names, tls_client(ca)).fetch(
            origin.url("/7.png", scheme="https"), policy()
        )
    assert got == IMAGE
    assert connector.connected == [("127.0.0.1", origin.port)]
    async with Origin({"/7.png": answer(200, IMAGE)}, tls_server(ca, "other.test")) as origin:
        wrong = fetcher(connector, names, tls_client(ca)).fetch(
            origin.url("/7.png", scheme="https"), policy()
        )
        assert "certificate verify failed: Hostname mismatch" in await refusal(wrong)
        assert origin.paths == []


async def test_redirects_are_followed_and_each_one_checked(connector: RecordingConnector) -> None:
    names = {"images.test": ["127.0.0.1"], "cdn.test": ["127.0.0.1"], "internal.test": ["10.0.0.5"]}
    allowed = policy("images.test", "cdn.test", "internal.test", "169.254.169.254", allow_http=True)
    routes: dict[str, Route] = {"/7.png": answer(200, IMAGE)}
    async with Origin(routes) as origin:
        routes["/moved"] = redirect(origin.url("/7.png", host="cdn.test"))
        routes["/relative"] = redirect("/7.png")
        routes["/away"] = redirect(origin.url("/7.png", host="evil.test"))
        routes["/inside"] = redirect(origin.url("/7.png", host="internal.test"))
        routes["/metadata"] = redirect("http://169.254.169.254/latest/meta-data/")
        routes["/ftp"] = redirect("ftp://cdn.test/7.png")
        get = fetcher(connector, names).fetch
        assert await get(origin.url("/moved"), allowed) == IMAGE
        assert await get(origin.url("/relative"), allowed) == IMAGE
        connected = len(connector.connected)
        refused = {
            "/away": "host 'evil.test' is not in the model's url_inputs.allow_hosts",
            "/inside": "internal.test resolves to 10.0.0.5, a private address;",
            "/metadata": "169.254.169.254 is a link-local address (the cloud metadata service);",
            "/ftp": "only https and http URLs are fetched; its scheme is 'ftp'",
        }
        for path, want in refused.items():
            assert (await refusal(get(origin.url(path), allowed))).startswith(want), path
    # Each refused redirect cost one connection, to the origin that redirected, and none more.
    assert connector.connected[connected:] == [("127.0.0.1", origin.port)] * 4


async def test_a_redirect_from_https_to_http_is_refused_when_http_is_not_allowed(
    ca: trustme.CA, connector: RecordingConnector
) -> None:
    routes: dict[str, Route] = {}
    async with Origin(routes, tls_server(ca, "images.test")) as origin:
        routes["/7.png"] = redirect(origin.url("/plain.png"))
        get = fetcher(connector, {"images.test": ["127.0.0.1"]}, tls_client(ca)).fetch
        message = await refusal(get(origin.url("/7.png", scheme="https"), policy()))
        assert message.startswith("only https URLs are fetched (the model's url_inputs.allow_http is false)")
    assert origin.paths == ["/7.png"]


async def test_redirects_past_the_limit_are_refused(connector: RecordingConnector) -> None:
    async with Origin({"/loop": redirect("/loop")}) as origin:
        get = fetcher(connector, {"images.test": ["127.0.0.1"]}).fetch
        message = await refusal(get(origin.url("/loop"), policy(allow_http=True, max_redirects=2)))
    assert message == f"{origin.url('/loop')} redirects more than url_inputs.max_redirects (2) times"
    assert origin.paths == ["/loop"] * 3


async def test_a_body_over_max_bytes_is_refused_while_it_streams(connector: RecordingConnector) -> None:
    origin = Origin({})
    origin.routes["/big"] = endless(lambda: origin)
    origin.routes["/declared"] = answer(200, b"x" * 2000)
    get = fetcher(connector, {"images.test": ["127.0.0.1"]}).fetch
    async with origin:
        message = await refusal(
            get(origin.url("/big"), policy(allow_http=True, max_bytes=100_000)), PayloadTooLarge
        )
        assert (
            message
            == f"the body at {origin.url('/big')} is over the model's url_inputs.max_bytes (100000 bytes)"
        )
        declared = get(origin.url("/declared"), policy(allow_http=True, max_bytes=1999))
        assert "is over the model's url_inputs.max_bytes (1999 bytes)" in await refusal(
            declared, PayloadTooLarge
        )
        assert await get(origin.url("/declared"), policy(allow_http=True, max_bytes=2000)) == b"x" * 2000
    assert origin.sent < 64 * 2**20  # the reading stopped: most of the 64 MiB was never sent


async def test_a_slow_origin_is_refused_at_the_time_limit(connector: RecordingConnector) -> None:
    async with Origin({"/slow": stall}) as origin:
        get = fetcher(connector, {"images.test": ["127.0.0.1"]}).fetch
        message = await refusal(
            get(origin.url("/slow"), policy(allow_http=True, timeout_s=0.3)), DeadlineExceeded
        )
    assert (
        message == f"fetching {origin.url('/slow')} took longer than the model's url_inputs.timeout_s (0.3 s)"
    )


async def test_fetch_failures_say_what_happened(connector: RecordingConnector) -> None:
    routes = {
        "/gone": answer(404),
        "/broken": answer(503),
        "/zipped": answer(200, b"x", {"content-encoding": "gzip"}),
    }
    get = fetcher(connector, {"images.test": ["127.0.0.1"]}).fetch
    allowed = policy(allow_http=True)
    async with Origin(routes) as origin:
        failures = {
            "/gone": f"fetching {origin.url('/gone')} failed: images.test answered 404 X",
            "/broken": f"fetching {origin.url('/broken')} failed: images.test answered 503 X",
            "/zipped": f"{origin.url('/zipped')} came gzip-encoded though identity was asked for",
        }
        for path, want in failures.items():
            assert await refusal(get(origin.url(path), allowed)) == want
    closed = await refusal(get(origin.url("/7.png"), allowed))  # nothing listens there now
    assert closed.startswith(f"fetching {origin.url('/7.png')} failed: ")


async def test_resolve_puts_each_fetched_body_in_its_markers_place(connector: RecordingConnector) -> None:
    eight = (SAMPLES / "8.png").read_bytes()
    async with Origin({"/7.png": answer(200, IMAGE), "/8.png": answer(200, eight)}) as origin:
        get = fetcher(connector, {"images.test": ["127.0.0.1"]})
        examples = [UrlInput(origin.url("/8.png")), b"raw", UrlInput(origin.url("/7.png"))]
        assert await get.resolve(examples, policy(allow_http=True), "digits") == [eight, b"raw", IMAGE]
        assert await get.resolve([b"raw"], None, "digits") == [b"raw"]
        with pytest.raises(InvalidInput) as refused:
            await get.resolve([UrlInput(origin.url("/7.png"))], None, "digits")
        assert (
            refused.value.message
            == "model 'digits' does not take inputs by URL (its settings have no url_inputs)"
        )
        with pytest.raises(PayloadTooLarge, match=r"3 URLs in one request; model 'digits' takes at most 2"):
            await get.resolve([UrlInput(origin.url("/7.png"))] * 3, policy(max_urls=2), "digits")


def test_a_url_is_its_own_cache_key_never_that_of_json_of_the_same_shape() -> None:
    url = "https://images.test/7.png"
    assert request_key(["predict", UrlInput(url)]) == request_key(["predict", UrlInput(url)])
    assert request_key(["predict", UrlInput(url)]) != request_key(["predict", {"url": url}])
    assert request_key(["predict", UrlInput(url)]) != request_key(["predict", url])


def test_allow_hosts_must_be_host_names() -> None:
    for bad in ([], ["*"], ["https://images.test"], ["images.test:443"], ["images.test/7.png"], ["*.*.test"]):
        with pytest.raises(ModelLoadError, match="url_inputs: allow_hosts must list host names"):
            model_config({"url_inputs": {"allow_hosts": bad}})
    config = model_config({"url_inputs": {"allow_hosts": ["Images.Test", "*.cdn.test", "2606:4700::1111"]}})
    assert config.url_inputs is not None
    assert config.url_inputs.allow_hosts == ["images.test", "*.cdn.test", "2606:4700::1111"]
    assert model_config({}).url_inputs is None  # off unless set
