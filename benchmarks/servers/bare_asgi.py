"""The ceiling of the HTTP stack: a bare ASGI app on uvicorn that reads the body and returns fixed JSON.

uvicorn benchmarks.servers.bare_asgi:app
"""

from __future__ import annotations

BODY = b'{"predictions": [0.0]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict, receive: object, send: object) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()  # type: ignore[operator]
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": BODY})  # type: ignore[operator]
