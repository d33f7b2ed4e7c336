"""Request bodies: read within `max_body_bytes`, and the simple door's ways to send an example."""

from __future__ import annotations

import urllib.parse
import zlib
from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from modelbay.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from modelbay.runtime.fetch import UrlInput

_json = msgspec.json.Decoder()
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # gzip header / zlib stream
MAX_FILES = 64


def header_dict(scope: Scope) -> dict[str, str]:
    """An ASGI scope's headers as {lower-case name: value} (a repeated header keeps its last value)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole body of an ASGI request, refused with PayloadTooLarge once it passes `limit` bytes.

    A Content-Length over the limit is refused before reading; a chunked body is counted as it
    streams, so an endless body cannot exhaust memory. A gzip/deflate body is inflated (see
    `decompress`). Raises ClientDisconnect if the client goes away mid-body.
    """
    declared = headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return decompress(body, headers.get("content-encoding"), limit)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a gzip or deflate Content-Encoding, never inflating past `limit` bytes (zip bombs).

    Raises PayloadTooLarge past the limit, InvalidInput for corrupt or truncated data,
    UnsupportedMediaType for any other encoding.
    """
    if encoding in (None, "", "identity"):
        return body
    if encoding not in _WBITS:
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"request body inflates to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {encoding} data")
    return data


def decode_json(body: bytes) -> Any:
    """Parse a JSON body. Raises InvalidInput with the parser's position of the error."""
    try:
        return _json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("request body is JSON nested too deeply") from None


async def predict_examples(scope: Scope, headers: Mapping[str, str], body: bytes) -> tuple[list[Any], bool]:
    """The examples of a `POST /predict/{model}` body, and whether it asked for a single one.

    - `?url=...` in the query (repeated for several) and no body: each URL is one example, a
      UrlInput the core fetches if the model allows it (`url_inputs`); one URL -> single.
    - `multipart/form-data`: each uploaded file is one example (bytes); one file -> single.
    - JSON (`application/json`, or any body opening with "{"): `{"input": x}` is one example,
      `{"inputs": [x, ...]}` a list of them; `{"url": "https://..."}` one example by URL,
      `{"urls": [...]}` several (alone: never beside input or inputs).
    - anything else (image/*, application/octet-stream, curl's default form type): the raw body
      is one example (bytes).
    Raises InvalidInput for an empty body, a body beside `?url=`, or JSON of another shape,
    UnsupportedMediaType for a multipart body without files.
    """
    urls = _query_urls(scope)
    if urls:
        if body:
            raise InvalidInput("send the example in the body or as ?url=, not both")
        return [UrlInput(url) for url in urls], len(urls) == 1
    content_type = headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        files = await _uploaded_files(Headers(scope=scope), body)
        return files, len(files) == 1
    if not body:
        raise InvalidInput('request body is empty; send an image, or JSON {"input": ...}')
    if "json" in content_type or (body[:1] == b"{" and not content_type.startswith("image/")):
        value = decode_json(body)
        if isinstance(value, dict) and ("url" in value or "urls" in value):
            return _json_urls(value)
        if isinstance(value, dict) and "input" in value:
            return [value["input"]], True
        if isinstance(value, dict) and isinstance(value.get("inputs"), list):
            return value["inputs"], False
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise InvalidInput(f'expected a JSON object {{"input": ...}} or {{"inputs": [...]}}, got {keys}')
    return [body], True


def _query_urls(scope: Scope) -> list[str]:
    """The `url` parameters of the request's query string, in order ([] without a query)."""
    query = scope.get("query_string")
    if not query:
        return []
    pairs = urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return [value for name, value in pairs if name == "url"]


def _json_urls(value: dict[str, Any]) -> tuple[list[Any], bool]:
    """The examples of a JSON body `{"url": "..."}` (single) or `{"urls": ["...", ...]}`."""
    forms = [key for key in ("input", "inputs", "url", "urls") if key in value]
    if len(forms) > 1:
        raise InvalidInput(f"send one of input, inputs, url or urls, not {' and '.join(forms)}")
    if "url" in value:
        if not isinstance(value["url"], str):
            raise InvalidInput(f'"url" must be a string, got {type(value["url"]).__name__}')
        return [UrlInput(value["url"])], True
    urls = value["urls"]
    if not isinstance(urls, list) or not urls or not all(isinstance(url, str) for url in urls):
        raise InvalidInput('"urls" must be a list of one or more URL strings')
    return [UrlInput(url) for url in urls], False


async def _uploaded_files(headers: Headers, body: bytes) -> list[Any]:
    async def replay() -> Any:
        yield body

    parser = MultiPartParser(headers, replay(), max_files=MAX_FILES, max_fields=MAX_FILES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(f"malformed multipart body: {exc.message}") from None
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    try:
        if not files:
            raise UnsupportedMediaType("multipart body has no file part; upload the image as a file")
        return [await upload.read() for upload in files]
    finally:
        await form.close()
