"""uvicorn's HTTP protocol (httptools) with a read timeout: slow clients cannot hold connections open.

uvicorn closes idle keep-alive connections, but not one whose client sends half a request and then
waits (slowloris): such a connection is held for ever, and enough of them exhaust the process's
file descriptors (issue 9, item 10). Here every request must arrive whole, headers and body, within
`read_timeout_s` of its first byte (a new connection: of its opening); otherwise it is answered
408 and the connection is closed. No timer is armed per request: each connection notes when it
began reading a request, and one task per server sweeps the connections (every
min(1 s, read_timeout_s / 2)), so a late request is closed within that much of its deadline. The request line
and headers together may take at most MAX_HEADER_BYTES (431 past it): memory a client can make
the server hold is bounded per connection.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelbay.codecs.oip_json import encode_json

READ_TIMEOUT_S = 30.0
# Most bytes of request line and headers one request may send (llhttp, under uvicorn, has no
# limit of its own): past it, 431 and the connection is closed.
MAX_HEADER_BYTES = 64 * 1024


class ReadTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 408 and closes a connection whose request is late, and 431
    one whose request line and headers pass MAX_HEADER_BYTES.

    The timeout, in seconds, is the uvicorn Config's `read_timeout_s` attribute (set by
    modelbay.server; READ_TIMEOUT_S when absent). The class is referred to by name so that
    `--workers` can send it, inside the pickled Config, to its worker processes.
    """

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.read_timeout_s: float = getattr(config, "read_timeout_s", READ_TIMEOUT_S)
        self.reading_since: float | None = None  # loop time the request being read began; None: none
        self._in_head = False  # between a request's first byte and the end of its headers
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.reading_since = self.loop.time()
        _ensure_sweep(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head:  # the request's headers are still incomplete: all of `data` was head
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self._answer(431, "Request Header Fields Too Large", f"headers over {MAX_HEADER_BYTES} bytes")
                self.transport.close()

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        if self.reading_since is None:
            self.reading_since = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_since = None

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser cannot read: 400 with an OIP error body (uvicorn's is plain
        text), then the connection closes."""
        self._answer(400, "Bad Request", f"malformed HTTP request: {msg}")
        self.transport.close()

    def _answer(self, status: int, reason: str, message: str) -> None:
        body = encode_json({"error": message})
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
        )

    def read_timed_out(self) -> None:
        """Answer 408 (unless a response is under way) and close: the request is late."""
        self.reading_since = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            message = f"the request did not arrive whole within {self.read_timeout_s:g} s (read_timeout_s)"
            self._answer(408, "Request Timeout", message)
            if cycle is not None:
                cycle.disconnected = True  # the app reads a disconnect, and anything it sends is dropped
        self.transport.close()


# One task per server (per uvicorn ServerState) closes the connections whose request is late. It
# runs while the server has connections and stops when it has none; the next connection restarts it.
_SWEEPS: weakref.WeakKeyDictionary[Any, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def _ensure_sweep(protocol: ReadTimeoutProtocol) -> None:
    state = protocol.server_state
    task = _SWEEPS.get(state)
    if task is None or task.done():
        _SWEEPS[state] = protocol.loop.create_task(_sweep(state, protocol.read_timeout_s))


async def _sweep(state: Any, read_timeout_s: float) -> None:
    interval = min(1.0, read_timeout_s / 2)
    loop = asyncio.get_running_loop()
    while state.connections:
        await asyncio.sleep(interval)
        cutoff = loop.time() - read_timeout_s
        for connection in list(state.connections):
            since = getattr(connection, "reading_since", None)
            if since is not None and since < cutoff:
                connection.read_timed_out()
