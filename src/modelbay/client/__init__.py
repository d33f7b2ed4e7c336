"""Python clients for modelbay, or any Open Inference Protocol v2 server (Triton, KServe).

    from modelbay.client import Client
    with Client("http://127.0.0.1:8000") as client:        # or "grpc://127.0.0.1:8001"
        client.ready()                                       # True
        client.metadata("digits")                            # OIP model metadata
        client.infer("digits", np.zeros((1, 1, 8, 8), np.float32))   # {"logits": array [1, 10]}
        client.predict("digits", Path("7.png"))              # the simple door (HTTP only)
        client.load_model("tiny", files={"2/model.onnx": data})   # the model repository (loopback)
        client.set_default_version("tiny", "1")              # unversioned calls go to 1 (HTTP only)
        client.set_traffic("tiny", {"split": {"1": 90, "2": 10}})   # a canary (HTTP only)

`AsyncClient` has the same methods as coroutines. Tensors travel raw: over HTTP with the binary
tensor extension (`binary=False` sends JSON), over gRPC as raw contents. `api_key=` sends an API
key with every call (`Authorization: Bearer`, as a header or as gRPC metadata) to a server with
`--auth`. Server errors come back as the same exceptions the server raised: InvalidInput,
ModelNotFound, Unavailable (ModelNotReady, Overloaded, TooManyRequests), Unauthenticated,
Forbidden, InferenceFailed, PayloadTooLarge... (modelbay.errors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np

from modelbay.client import _grpc, _rest
from modelbay.client._tensors import named_arrays
from modelbay.errors import ModelbayError
from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc

__all__ = ["AsyncClient", "Client"]


def _target(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return "http", url.rstrip("/")
    if parts.scheme == "grpc" and parts.netloc:
        return "grpc", parts.netloc
    raise ValueError(f"url must be http://host:port or grpc://host:port, got {url!r}")


def _metadata_json(message: Any) -> dict[str, Any]:
    tensors = lambda items: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]  # noqa: E731
    return {
        "name": message.name,
        "versions": list(message.versions),
        "platform": message.platform,
        "inputs": tensors(message.inputs),
        "outputs": tensors(message.outputs),
    }


class _Base:
    """What both clients keep: the transport ("http" or "grpc"), its address, options, input names,
    and the API key's header (`_auth`; gRPC metadata is the same pair)."""

    def __init__(self, url: str, timeout_s: float, binary: bool, api_key: str | None) -> None:
        self.transport, self._address = _target(url)
        self.binary = binary
        self.timeout_s = timeout_s
        self._auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._metadata = tuple(self._auth.items()) or None
        self._first_inputs: dict[tuple[str, str | None], str] = {}


class Client(_Base):
    """A blocking client. url: "http://host:port" (REST) or "grpc://host:port".

    timeout_s: per-call timeout in seconds. binary: send and receive tensors raw over HTTP.
    api_key: an API key sent with every call (`modelbay keys create`); None sends none.
    Methods raise the modelbay exception of the server's answer (see the module docstring).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        timeout_s: float = 60.0,
        binary: bool = True,
        api_key: str | None = None,
    ) -> None:
        super().__init__(url, timeout_s, binary, api_key)
        address = self._address
        if self.transport == "http":
            self._http = httpx.Client(base_url=address, timeout=timeout_s, headers=self._auth)
        else:
            self._channel = grpc.insecure_channel(address, options=_grpc.CHANNEL_OPTIONS)
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool or channel."""
        if self.transport == "http":
            self._http.close()
        else:
            self._channel.close()

    def _truth(self, path: str) -> bool:
        """OIP health over HTTP: 200 is true, anything else false."""
        return self._http.get(path).status_code == 200

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _grpc.error_from(exc) from None

    def live(self) -> bool:
        """OIP server live."""
        if self.transport == "http":
            return self._truth("/v2/health/live")
        return bool(self._call(self._stub.ServerLive, pb.ServerLiveRequest()).live)

    def ready(self, model: str | None = None, version: str | None = None) -> bool:
        """OIP server ready, or model ready when `model` is given (False for an unknown model)."""
        if self.transport == "http":
            return self._truth(_rest.model_path(model, version) + "/ready" if model else "/v2/health/ready")
        if model is None:
            return bool(self._call(self._stub.ServerReady, pb.ServerReadyRequest()).ready)
        return bool(
            self._call(self._stub.ModelReady, pb.ModelReadyRequest(name=model, version=version or "")).ready
        )

    def metadata(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """OIP server metadata, or model metadata (name, versions, platform, inputs, outputs).

        Raises ModelNotFound for an unknown model or version.
        """
        if self.transport == "http":
            response = self._http.get(_rest.model_path(model, version) if model else "/v2")
            _rest.raise_for_status(response.status_code, response.headers, response.content)
            metadata: dict[str, Any] = response.json()
            return metadata
        if model is None:
            reply = self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest())
            return {"name": reply.name, "version": reply.version, "extensions": list(reply.extensions)}
        reply = self._call(
            self._stub.ModelMetadata, pb.ModelMetadataRequest(name=model, version=version or "")
        )
        return _metadata_json(reply)

    def infer(
        self,
        model: str,
        inputs: Any,
        *,
        outputs: list[str] | None = None,
        version: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one OIP inference; returns {output name: numpy array}.

        inputs: {input name: array-like}, or one array-like for the model's first input (its name
                is read from the model metadata once). Arrays keep their dtype (float32 -> FP32,
                int64 -> INT64, ...); strings and bytes become BYTES.
        outputs: names of the outputs wanted; None for all.
        Raises InvalidInput, ModelNotFound, Unavailable, InferenceFailed as the server says.
        """
        arrays = named_arrays(inputs, lambda: self._first_input(model, version))
        if self.transport == "grpc":
            message = _grpc.infer_message(model, version, arrays, outputs, request_id)
            return _grpc.parse_message(self._call(self._stub.ModelInfer, message))
        body, headers = _rest.infer_body(arrays, outputs, self.binary, request_id)
        response = self._http.post(_rest.model_path(model, version) + "/infer", content=body, headers=headers)
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return _rest.parse_infer(response.headers, response.content)

    def predict(self, model: str, data: Any, *, version: str | None = None) -> Any:
        """The simple door, `POST /predict/{model}`: returns the model's predictions (JSON values).

        data: bytes or a Path (a file, e.g. an image, sent as the raw body), a str (text), or an
              array-like (one example, as nested lists).
        Raises ModelbayError over gRPC, which has no simple door: use `infer` there.
        """
        if self.transport != "http":
            raise ModelbayError("predict uses the HTTP simple door; over gRPC, call infer")
        path = _rest.predict_path(model, version)
        response = self._http.post(path, **_rest.predict_request(data))
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return response.json()["predictions"]

    def repository_index(self, ready: bool = False) -> list[dict[str, str]]:
        """The OIP model repository index: [{"name", "version", "state", "reason"}], READY rows
        only when `ready`. Raises Forbidden off loopback, Unavailable when the server has no
        model manager (--workers > 1)."""
        if self.transport == "grpc":
            return _grpc.index_rows(
                self._call(self._stub.RepositoryIndex, pb.RepositoryIndexRequest(ready=ready))
            )
        return list(self._repository("/v2/repository/index", {"ready": ready}))

    def load_model(
        self, model: str, config: Mapping[str, Any] | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) `model`; returns once it serves.

        config: modelbay.yaml fields applied to the load (Triton's `config` parameter).
        files:  a model sent with the load, by path relative to the model folder, e.g.
                {"3/model.onnx": b"..."}: written into the server's model repository as new
                versions (never over an existing one), then loaded.
        Raises ModelNotFound when the server knows no such model, InvalidInput for an upload it
        refuses (a bad path, an existing version, no --model-repository), InferenceFailed (500)
        when the model cannot be loaded (the index says why), Forbidden off loopback.
        """
        if self.transport == "grpc":
            self._call(self._stub.RepositoryModelLoad, _grpc.load_message(model, config, files))
            return
        self._repository(f"/v2/repository/models/{model}/load", _rest.load_body(config, files))

    def unload_model(self, model: str) -> None:
        """Stop serving `model` once its requests in flight are done. Raises ModelNotFound."""
        if self.transport == "grpc":
            self._call(self._stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=model))
            return
        self._repository(f"/v2/repository/models/{model}/unload", {})

    def set_default_version(self, model: str, version: str | None) -> str:
        """Make `version` of `model` answer the calls that name no version (None: the highest
        again); returns the version answering them now. HTTP only (modelbay's own route).

        Raises ModelNotFound when the model or that version is not loaded.
        """
        if self.transport != "http":
            raise ModelbayError("set_default_version is modelbay's own HTTP route; use an http:// URL")
        reply = self._repository(f"/v2/repository/models/{model}/default", {"version": version})
        return str(reply["version"])

    def traffic(self, model: str) -> dict[str, Any]:
        """The traffic policy of `model` and how it applies now: {"name", "traffic": the policy
        or None, "serving": {"split": percent per version loaded or None, "shadow": version or
        None}}. HTTP only (modelbay's own route). Raises ModelNotFound."""
        return self._traffic_call(model, None, read=True)

    def set_traffic(self, model: str, policy: Mapping[str, Any] | None) -> dict[str, Any]:
        """Set the traffic policy of `model` for the calls that name no version, atomically:
        {"split": {"2": 90, "3": 10}, "sticky": {"header": "x-user-id"}, "shadow": {"version":
        "4", "percent": 20}} (modelbay.yaml's `traffic:` fields); None clears it. Returns what
        `traffic` returns. Raises InvalidInput (a bad policy, a version not loaded), ModelNotFound.
        """
        return self._traffic_call(model, policy, read=False)

    def _traffic_call(self, model: str, policy: Mapping[str, Any] | None, read: bool) -> dict[str, Any]:
        if self.transport != "http":
            raise ModelbayError("traffic is modelbay's own HTTP route; use an http:// URL")
        path = f"/v2/repository/models/{model}/traffic"
        response = self._http.get(path) if read else self._http.post(path, **_rest.json_content(policy))
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return dict(response.json())

    def _repository(self, path: str, body: dict[str, Any]) -> Any:
        response = self._http.post(path, json=body)
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return response.json()

    def _first_input(self, model: str, version: str | None) -> str:
        key = (model, version)
        if key not in self._first_inputs:
            inputs = self.metadata(model, version)["inputs"]
            if not inputs:
                raise ModelbayError(f"model {model!r} declares no inputs; pass a dict of named inputs")
            self._first_inputs[key] = inputs[0]["name"]
        return self._first_inputs[key]


class AsyncClient(_Base):
    """The asyncio twin of Client (httpx.AsyncClient, grpc.aio); same arguments, awaitable methods."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        timeout_s: float = 60.0,
        binary: bool = True,
        api_key: str | None = None,
    ) -> None:
        super().__init__(url, timeout_s, binary, api_key)
        address = self._address
        if self.transport == "http":
            self._http = httpx.AsyncClient(base_url=address, timeout=timeout_s, headers=self._auth)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=_grpc.CHANNEL_OPTIONS)
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool or channel."""
        if self.transport == "http":
            await self._http.aclose()
        else:
            await self._channel.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _grpc.error_from(exc) from None

    async def live(self) -> bool:
        """OIP server live."""
        if self.transport == "http":
            return (await self._http.get("/v2/health/live")).status_code == 200
        return bool((await self._call(self._stub.ServerLive, pb.ServerLiveRequest())).live)

    async def ready(self, model: str | None = None, version: str | None = None) -> bool:
        """OIP server ready, or model ready when `model` is given (False for an unknown model)."""
        if self.transport == "http":
            path = _rest.model_path(model, version) + "/ready" if model else "/v2/health/ready"
            return (await self._http.get(path)).status_code == 200
        if model is None:
            return bool((await self._call(self._stub.ServerReady, pb.ServerReadyRequest())).ready)
        request = pb.ModelReadyRequest(name=model, version=version or "")
        return bool((await self._call(self._stub.ModelReady, request)).ready)

    async def metadata(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """OIP server or model metadata. Raises ModelNotFound for an unknown model or version."""
        if self.transport == "http":
            response = await self._http.get(_rest.model_path(model, version) if model else "/v2")
            _rest.raise_for_status(response.status_code, response.headers, response.content)
            metadata: dict[str, Any] = response.json()
            return metadata
        if model is None:
            reply = await self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest())
            return {"name": reply.name, "version": reply.version, "extensions": list(reply.extensions)}
        reply = await self._call(
            self._stub.ModelMetadata, pb.ModelMetadataRequest(name=model, version=version or "")
        )
        return _metadata_json(reply)

    async def infer(
        self,
        model: str,
        inputs: Any,
        *,
        outputs: list[str] | None = None,
        version: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one OIP inference (see Client.infer)."""
        key = (model, version)
        if not isinstance(inputs, dict) and key not in self._first_inputs:
            self._first_inputs[key] = (await self.metadata(model, version))["inputs"][0]["name"]
        arrays = named_arrays(inputs, lambda: self._first_inputs[key])
        if self.transport == "grpc":
            message = _grpc.infer_message(model, version, arrays, outputs, request_id)
            return _grpc.parse_message(await self._call(self._stub.ModelInfer, message))
        body, headers = _rest.infer_body(arrays, outputs, self.binary, request_id)
        response = await self._http.post(
            _rest.model_path(model, version) + "/infer", content=body, headers=headers
        )
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return _rest.parse_infer(response.headers, response.content)

    async def predict(self, model: str, data: Any, *, version: str | None = None) -> Any:
        """The simple door (see Client.predict)."""
        if self.transport != "http":
            raise ModelbayError("predict uses the HTTP simple door; over gRPC, call infer")
        path = _rest.predict_path(model, version)
        response = await self._http.post(path, **_rest.predict_request(data))
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return response.json()["predictions"]

    async def repository_index(self, ready: bool = False) -> list[dict[str, str]]:
        """The OIP model repository index (see Client.repository_index)."""
        if self.transport == "grpc":
            reply = await self._call(self._stub.RepositoryIndex, pb.RepositoryIndexRequest(ready=ready))
            return _grpc.index_rows(reply)
        return list(await self._repository("/v2/repository/index", {"ready": ready}))

    async def load_model(
        self, model: str, config: Mapping[str, Any] | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) `model`, maybe with a config and files (see Client.load_model)."""
        if self.transport == "grpc":
            await self._call(self._stub.RepositoryModelLoad, _grpc.load_message(model, config, files))
            return
        await self._repository(f"/v2/repository/models/{model}/load", _rest.load_body(config, files))

    async def unload_model(self, model: str) -> None:
        """Stop serving `model` once its requests in flight are done. Raises ModelNotFound."""
        if self.transport == "grpc":
            request = pb.RepositoryModelUnloadRequest(model_name=model)
            await self._call(self._stub.RepositoryModelUnload, request)
            return
        await self._repository(f"/v2/repository/models/{model}/unload", {})

    async def set_default_version(self, model: str, version: str | None) -> str:
        """Choose the version answering unversioned calls (see Client.set_default_version)."""
        if self.transport != "http":
            raise ModelbayError("set_default_version is modelbay's own HTTP route; use an http:// URL")
        reply = await self._repository(f"/v2/repository/models/{model}/default", {"version": version})
        return str(reply["version"])

    async def traffic(self, model: str) -> dict[str, Any]:
        """The traffic policy of `model` and how it applies now (see Client.traffic)."""
        return await self._traffic_call(model, None, read=True)

    async def set_traffic(self, model: str, policy: Mapping[str, Any] | None) -> dict[str, Any]:
        """Set the traffic policy of `model`; None clears it (see Client.set_traffic)."""
        return await self._traffic_call(model, policy, read=False)

    async def _traffic_call(self, model: str, policy: Mapping[str, Any] | None, read: bool) -> dict[str, Any]:
        if self.transport != "http":
            raise ModelbayError("traffic is modelbay's own HTTP route; use an http:// URL")
        path = f"/v2/repository/models/{model}/traffic"
        if read:
            response = await self._http.get(path)
        else:
            response = await self._http.post(path, **_rest.json_content(policy))
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return dict(response.json())

    async def _repository(self, path: str, body: dict[str, Any]) -> Any:
        response = await self._http.post(path, json=body)
        _rest.raise_for_status(response.status_code, response.headers, response.content)
        return response.json()
