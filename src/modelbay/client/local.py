"""Device or server, chosen at run time: a model answered by the server, or by a local ONNX copy.

    from modelbay.client.local import LocalFallback
    with LocalFallback("http://10.0.0.5:8000", "digits", local="digits.onnx", deadline_s=0.2) as model:
        answer = model.infer(images)        # Answer(outputs={"logits": ...}, source="server", version="2")
        answer.source, answer.reason         # "local", "unreachable: ConnectError ..." when it was not

The server answers when it can. The local copy answers when the server is unreachable, sends
nothing for `deadline_s` (connecting, sending, or waiting for the answer: httpx's per-phase
timeout), or says it cannot now (503 / 429: Unavailable; 504: DeadlineExceeded; 500:
InferenceFailed). A refusal of the request itself (400, 401, 403, 404) is raised as the server's
exception: the copy would refuse it too, or the caller is not allowed.

The copy is the server's ONNX file of the model's default version (`GET /v2/models/{m}/onnx`,
modelbay.http.download), fetched when missing and again when the server's default version
changes: looked at when the client starts, whenever an answer comes from another version than
the answer before, and on `refresh()`. It replaces the old copy atomically, once onnxruntime has
opened it; its version is kept beside it in `<local>.version`. Needs onnxruntime
(`pip install 'modelbay[onnx]'`). Not thread-safe: one per thread.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from modelbay.client import _rest
from modelbay.client._tensors import named_arrays
from modelbay.errors import DeadlineExceeded, InferenceFailed, ModelbayError, ModelLoadError, Unavailable

# What the server answers when it cannot now: the local copy answers instead.
SERVER_CANNOT = (Unavailable, DeadlineExceeded, InferenceFailed)


@dataclass(frozen=True)
class Answer:
    """One inference's outputs and who gave them.

    outputs: {output name: numpy array}, as Client.infer returns them.
    source:  "server" or "local".
    version: the model version that answered (the server's x-model-version, or the local copy's).
    reason:  why the local copy answered ("unreachable: ...", "deadline of 0.2 s missed", the
             server's error); None when the server did.
    """

    outputs: dict[str, np.ndarray]
    source: str
    version: str | None
    reason: str | None = None


class LocalFallback:
    """One model of a modelbay server (HTTP), with a local ONNX copy (see the module docstring).

    url: "http://host:port". model: the model's name. local: the copy's path (made if missing).
    deadline_s: how long the server may be silent before the copy answers, in seconds.
    download_timeout_s: the same for a download of the copy. api_key: sent with every call.
    A server that cannot be reached at start, or offers no ONNX file, is no error: the copy on
    disk (if any) answers, and `copy_problem` says why the copy could not be fetched (None once
    it was, or is current).
    """

    def __init__(
        self,
        url: str,
        model: str,
        local: str | Path,
        *,
        deadline_s: float = 1.0,
        download_timeout_s: float = 60.0,
        api_key: str | None = None,
        binary: bool = True,
    ) -> None:
        self.model = model
        self.local = Path(local)
        self.deadline_s = deadline_s
        self.download_timeout_s = download_timeout_s
        self.binary = binary
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=deadline_s, headers=headers)
        self._version_file = self.local.with_name(self.local.name + ".version")
        self._session: Any = None
        self._local_version: str | None = None
        self._last_version: str | None = None
        if self.local.is_file():
            with contextlib.suppress(ModelLoadError):  # a broken copy is as good as none: refreshed below
                self._session = _open(self.local)
            if self._version_file.is_file():
                self._local_version = self._version_file.read_text().strip()
        self.copy_problem: str | None = None
        self._try_refresh()

    def __enter__(self) -> LocalFallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    @property
    def local_version(self) -> str | None:
        """The model version of the local copy; None when there is none (or it is of unknown version)."""
        return self._local_version if self._session is not None else None

    def infer(self, inputs: Any) -> Answer:
        """Run one inference on the server, or on the local copy when the server cannot answer.

        inputs: {input name: array-like}, or one array-like for the model's first input.
        Returns the outputs by the names of whoever answered: the server's (its metadata), or the
        local file's, which are the same when the file was exported from the served model folder.
        When the server answers from another version than the call before, the copy is checked
        (a HEAD request) and, if the default version changed, downloaded again before this call
        returns: that call may take up to `download_timeout_s` more than `deadline_s`.
        Raises the server's exception (modelbay.errors) when it refuses the request;
        httpx.TransportError, or the server's exception, when it cannot answer and there is no
        local copy.
        """
        arrays = named_arrays(inputs, self._first_input)
        try:
            outputs, version = self._server_infer(arrays)
        except (httpx.TransportError, *SERVER_CANNOT) as exc:
            if self._session is None:
                raise
            return Answer(self._local_infer(arrays), "local", self._local_version, self._why(exc))
        if version != self._last_version:
            self._last_version = version
            self._try_refresh()
        return Answer(outputs, "server", version)

    def _try_refresh(self) -> None:
        """`refresh`, its failure kept in `copy_problem` instead of raised: the server still answers."""
        try:
            self.refresh()
        except (httpx.TransportError, ModelbayError) as exc:
            self.copy_problem = self._why(exc)
        else:
            self.copy_problem = None

    def refresh(self) -> bool:
        """Fetch the default version's ONNX file when the local copy is missing or of another
        version; True when the copy was replaced.

        Raises httpx.TransportError when the server cannot be reached, the server's exception
        when it offers no ONNX file (ModelNotFound), ModelLoadError when the file it sent does
        not open in onnxruntime (the old copy is kept).
        """
        path = f"/v2/models/{self.model}/onnx"
        head = self._http.head(path, timeout=self.download_timeout_s)
        if head.status_code >= 400:  # a HEAD answer has no body: ask again for the message
            error = self._http.get(path, timeout=self.download_timeout_s)
            _rest.raise_for_status(error.status_code, error.headers, error.content)
        if head.headers.get("x-model-version") == self._local_version and self._session is not None:
            return False
        self.local.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{self.local.name}.", dir=self.local.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                version = self._download(path, file)
            session = _open(Path(staging))
            os.replace(staging, self.local)
        finally:
            Path(staging).unlink(missing_ok=True)
        self._version_file.write_text(f"{version}\n")
        self._session, self._local_version = session, version
        return True

    def _download(self, path: str, file: IO[bytes]) -> str | None:
        """Stream GET `path` into `file`; its x-model-version. Raises as `refresh` says."""
        with self._http.stream("GET", path, timeout=self.download_timeout_s) as got:
            if got.status_code >= 400:
                got.read()
                _rest.raise_for_status(got.status_code, got.headers, got.content)
            for chunk in got.iter_bytes():
                file.write(chunk)
            return got.headers.get("x-model-version")

    def _server_infer(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str | None]:
        body, headers = _rest.infer_body(arrays, None, self.binary, None)
        response = self._http.post(
            f"/v2/models/{self.model}/infer", content=body, headers=headers, timeout=self.deadline_s
        )
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return _rest.parse_infer(response.headers, response.content), response.headers.get("x-model-version")

    def _local_infer(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [output.name for output in self._session.get_outputs()]
        return dict(zip(names, self._session.run(None, arrays), strict=True))

    def _first_input(self) -> str:
        if self._session is not None:
            return str(self._session.get_inputs()[0].name)
        response = self._http.get(f"/v2/models/{self.model}")
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return str(response.json()["inputs"][0]["name"])

    def _why(self, exc: Exception) -> str:
        if isinstance(exc, httpx.TimeoutException):
            return f"deadline of {self.deadline_s:g} s missed ({type(exc).__name__})"
        if isinstance(exc, httpx.TransportError):
            return f"unreachable: {type(exc).__name__}: {exc}"
        assert isinstance(exc, ModelbayError)
        return f"{type(exc).__name__}: {exc.message}"


def _open(path: Path) -> Any:
    """An onnxruntime session of the ONNX file at `path`. Raises ModelLoadError when onnxruntime
    is missing or cannot open it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError("a local ONNX copy needs onnxruntime: pip install 'modelbay[onnx]'") from exc
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf types
        raise ModelLoadError(f"{path}: onnxruntime cannot open it: {exc}") from exc
