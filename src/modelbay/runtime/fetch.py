"""Inputs by URL: the simple door's examples fetched from the hosts a model allows, and never from
inside the server's own network (server-side request forgery).

A door passes `UrlInput(url)` for an example; the dataplane hands the request's examples and the
model's `url_inputs` (UrlInputConfig) to `UrlFetcher.resolve` before preprocessing, and the bytes
fetched take each marker's place, as if uploaded. Everything is checked before anything is sent:
- scheme https (http too with allow_http) and host in allow_hosts: for the URL and every redirect;
- every connection, the first and each redirect's, is opened by `GuardedBackend` (httpcore's
  network backend): it resolves the host itself, refuses unless every address checks out
  (`address_refusal`), and connects to an address it checked, so no DNS answer can differ between
  check and connection (rebinding). TLS still verifies the URL's host name: httpcore starts TLS
  with server_hostname = that name (SNI, certificate check), whatever address it connected to;
- at most max_redirects redirects, max_bytes of body (reading stops past it), timeout_s in all.
Proxies named by the environment are never used: a proxy would make the connection, not us.

Errors (status): a rule refused, or the fetch failed (no such host, refused, TLS, an error status
from the origin): InvalidInput (400), saying which; the URL is the client's, and a 5xx from
modelbay means modelbay failed. Over max_bytes or max_urls: PayloadTooLarge (413). Over timeout_s:
DeadlineExceeded (504, Gateway Timeout: an upstream did not answer in time; 408 would say the
client sent its own request too slowly), as when the request's deadline ends the fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from modelbay._version import __version__
from modelbay.errors import DeadlineExceeded, InvalidInput, PayloadTooLarge
from modelbay.settings import UrlInputConfig

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses the host name resolves to (IPv4 or IPv6, as text).
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
# an address -> why it is refused ("a private address"), or None for one that may be connected to.
AddressCheck = Callable[[Address], str | None]

_METADATA = ipaddress.ip_address("169.254.169.254")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 shared address space
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # RFC 791 "this network"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
_HEADERS = {"accept-encoding": "identity", "user-agent": f"modelbay/{__version__}"}


@dataclass(frozen=True, slots=True)
class UrlInput:
    """An example given by URL at the door, fetched by the core under the model's url_inputs."""

    url: str


def address_refusal(address: Address) -> str | None:
    """Why modelbay never connects to `address` ("a private address"), or None for a public one.

    Refused: unspecified and 0.0.0.0/8, loopback, link-local (169.254.0.0/16 with the cloud
    metadata address, fe80::/10), CGNAT (100.64.0.0/10), multicast, private (RFC 1918, fc00::/7 and
    the rest of Python's `ipaddress` private list), reserved, IPv6 site-local, anything else not
    global; an IPv4 address embedded in IPv6 (::ffff:a.b.c.d, 6to4, Teredo, NAT64) as the IPv4 one.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            kind = address_refusal(address.ipv4_mapped)
            return None if kind is None else f"the IPv4-mapped form of {address.ipv4_mapped}, {kind}"
        for embedded in _embedded_ipv4(address):
            kind = address_refusal(embedded)
            if kind is not None:
                return f"an IPv6 address embedding {embedded}, {kind}"
    checks = (
        (address.is_unspecified or address in _THIS_NETWORK, "an unspecified address"),
        (address == _METADATA, "a link-local address (the cloud metadata service)"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address in _CGNAT, "a carrier-grade NAT address (100.64.0.0/10)"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "a site-local address"),
        (not address.is_global, "a non-public address"),
    )
    return next((kind for refused, kind in checks if refused), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> Iterable[ipaddress.IPv4Address]:
    if address.sixtofour is not None:
        yield address.sixtofour
    if address.teredo is not None:
        yield address.teredo[1]
    if address in _NAT64:
        yield ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of `host` by the system's getaddrinfo (off the event loop); InvalidInput if none."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInput(f"host {host!r} could not be resolved: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for URL inputs: every TCP connection goes to an address of the
    host that `check` accepted, and only if it accepted every address the host resolves to.

    resolver:  how host names are resolved (injectable: tests map names to any address, and
               nothing is ever sent to a refused one).
    check:     why an address is refused, or None (`address_refusal`).
    connector: the backend that opens the checked connections (httpcore's anyio backend).
    Raises InvalidInput naming the host, the address and its kind; Unix sockets are refused.
    """

    def __init__(
        self, resolver: Resolver, check: AddressCheck, connector: httpcore.AsyncNetworkBackend
    ) -> None:
        self.resolver = resolver
        self.check = check
        self.connector = connector

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.addresses(host, port)
        failure: Exception | None = None
        for address in addresses:  # each address was checked: try them in the resolver's order
            try:
                return await self.connector.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def addresses(self, host: str, port: int) -> list[Address]:
        """The addresses of `host` (an IP literal is its own); InvalidInput unless all pass the check."""
        try:
            found: list[Address] = [ipaddress.ip_address(host)]
            literal = True
        except ValueError:  # a name; an IPv6 zone ("fe80::1%eth0") is not part of the address
            found = [ipaddress.ip_address(a.partition("%")[0]) for a in await self.resolver(host, port)]
            literal = False
        if not found:
            raise InvalidInput(f"host {host!r} resolves to no address")
        for address in found:
            kind = self.check(address)
            if kind is not None:
                said = f"{host} is" if literal else f"{host} resolves to {address},"
                raise InvalidInput(f"{said} {kind}; URL inputs are never fetched from such addresses")
        return found

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise InvalidInput("URL inputs are never fetched over a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.connector.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request and error mapping) over a connection pool that connects
    through `backend`. httpx takes no network backend, so the pool it built is replaced: `_pool`
    is the one private name relied on, and the tests fail loudly if httpx stops using it (every
    connection of theirs goes through a resolver that knows only test names)."""

    def __init__(self, backend: GuardedBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False, retries=0)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=backend, max_connections=4, retries=0
        )


class UrlFetcher:
    """Fetches the URL inputs of the simple door under each model's policy (module docstring).

    resolver:      host name -> addresses (default: the system's, `system_resolver`).
    address_check: why an address is refused (default `address_refusal`). Tests that serve on
                   loopback pass a check that lets their one address through; nothing else does.
    connector:     the httpcore backend that opens the checked TCP connections (anyio's).
    ssl_context:   certificates trusted for https (default: httpx's, certifi's CAs).
    """

    def __init__(
        self,
        resolver: Resolver = system_resolver,
        address_check: AddressCheck = address_refusal,
        connector: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.resolver = resolver
        self.address_check = address_check
        self.connector = connector if connector is not None else httpcore.AnyIOBackend()
        self._ssl_context = ssl_context

    async def resolve(self, examples: list[Any], policy: UrlInputConfig | None, model: str) -> list[Any]:
        """`examples` with each UrlInput replaced by the bytes fetched from its URL (all at once).

        policy: the model's `url_inputs`; None refuses every URL (InvalidInput).
        Raises InvalidInput, PayloadTooLarge or DeadlineExceeded (module docstring).
        """
        wanted = [index for index, example in enumerate(examples) if isinstance(example, UrlInput)]
        if not wanted:
            return examples
        if policy is None:
            raise InvalidInput(
                f"model {model!r} does not take inputs by URL (its settings have no url_inputs)"
            )
        if len(wanted) > policy.max_urls:
            raise PayloadTooLarge(
                f"{len(wanted)} URLs in one request; model {model!r} takes at most {policy.max_urls} "
                "(url_inputs.max_urls)"
            )
        tasks = [asyncio.ensure_future(self.fetch(examples[index].url, policy)) for index in wanted]
        try:
            bodies = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # the first failure ends the others
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        resolved = list(examples)
        for index, body in zip(wanted, bodies, strict=True):
            resolved[index] = body
        return resolved

    async def fetch(self, url: str, policy: UrlInputConfig) -> bytes:
        """The body at `url` (redirects followed), fetched under `policy`.

        Raises InvalidInput, PayloadTooLarge or DeadlineExceeded (module docstring).
        """
        backend = GuardedBackend(self.resolver, self.address_check, self.connector)
        transport = _GuardedTransport(backend, self._ssl())
        client = httpx.AsyncClient(transport=transport, trust_env=False, timeout=policy.timeout_s)
        try:
            async with asyncio.timeout(policy.timeout_s), client:
                return await self._follow(client, url, policy)
        except (TimeoutError, httpx.TimeoutException):
            raise DeadlineExceeded(
                f"fetching {url} took longer than the model's url_inputs.timeout_s ({policy.timeout_s} s)"
            ) from None
        except httpx.HTTPError as exc:
            raise InvalidInput(f"fetching {url} failed: {exc or type(exc).__name__}") from None

    async def _follow(self, client: httpx.AsyncClient, url: str, policy: UrlInputConfig) -> bytes:
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"{url!r} is not a valid URL: {exc}") from None
        check_url(target, policy)
        request = client.build_request("GET", target, headers=_HEADERS)
        for _ in range(policy.max_redirects + 1):
            response = await client.send(request, stream=True)
            try:
                if response.next_request is None:
                    return await _body(response, url, policy.max_bytes)
                request = response.next_request
            finally:
                await response.aclose()
            check_url(request.url, policy)  # before the redirect's connection, like the first
        raise InvalidInput(
            f"{url} redirects more than url_inputs.max_redirects ({policy.max_redirects}) times"
        )

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # built once, on the first fetch (loading CAs takes ~10 ms)
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context


def check_url(url: httpx.URL, policy: UrlInputConfig) -> None:
    """Refuse `url` (InvalidInput, naming the rule) unless its scheme and host are allowed."""
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if url.scheme == "http" and not policy.allow_http:
        raise InvalidInput("only https URLs are fetched (the model's url_inputs.allow_http is false)")
    if url.scheme not in schemes:
        got = f"its scheme is {url.scheme!r}" if url.scheme else "it has no scheme"
        raise InvalidInput(f"only {' and '.join(schemes)} URLs are fetched; {got}")
    host = url.raw_host.decode("ascii").lower().removesuffix(".")
    if not any(host_allowed(host, allowed) for allowed in policy.allow_hosts):
        raise InvalidInput(f"host {host!r} is not in the model's url_inputs.allow_hosts")


def host_allowed(host: str, allowed: str) -> bool:
    """True when `host` matches the allow_hosts entry `allowed` (lower case): equal, or for
    "*.example.com" any name ending in ".example.com"."""
    return host.endswith(allowed[1:]) if allowed.startswith("*.") else host == allowed


async def _body(response: httpx.Response, url: str, limit: int) -> bytes:
    """The body of a 2xx `response`, read as it streams and stopped past `limit` bytes."""
    if not response.is_success:
        raise InvalidInput(
            f"fetching {url} failed: {response.url.host} answered {response.status_code} "
            f"{response.reason_phrase}".rstrip()
        )
    declared = response.headers.get("content-length", "")
    too_large = f"the body at {url} is over the model's url_inputs.max_bytes ({limit} bytes)"
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidInput(f"{url} came {encoding}-encoded though identity was asked for")
    chunks, size = [], 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)
