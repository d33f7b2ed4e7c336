"""The gRPC door: `inference.GRPCInferenceService` (OIP v2) over the same Dataplane as HTTP."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from modelbay.auth.access import Access, Action, authorize, credential
from modelbay.codecs import oip_grpc
from modelbay.errors import InvalidInput, ModelNotFound, PayloadTooLarge
from modelbay.grpc.errors import status_of, trailers_of
from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from modelbay.logs import REQUEST_ID, finish, request_id
from modelbay.runtime.context import RequestContext
from modelbay.runtime.dataplane import Dataplane
from modelbay.runtime.management import is_loopback_host, load_request

if TYPE_CHECKING:
    from modelbay.runtime.tracing import RequestTrace

INFER_CALL = "inference.GRPCInferenceService/ModelInfer"  # its trace span's and access line's name
# Status codes that are the server's failure, not the caller's (OpenTelemetry's gRPC conventions).
SERVER_SIDE = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Translates OIP gRPC calls into Dataplane calls and errors into status codes (grpc/errors.py).

    max_message_bytes: ModelInfer and RepositoryModelLoad requests larger than this get
    INVALID_ARGUMENT (the gRPC runtime itself refuses messages over twice this size with
    RESOURCE_EXHAUSTED before reading them).
    access: the API keys every RPC is checked against first (`_authorize`); None: no keys,
    everything open but the repository extension, which answers loopback clients only.
    """

    def __init__(self, dataplane: Dataplane, max_message_bytes: int, access: Access | None = None) -> None:
        self.dataplane = dataplane
        self.max_message_bytes = max_message_bytes
        self.access = access

    def _authorize(
        self,
        context: grpc.aio.ServicerContext,
        action: Action,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Who made this RPC (the key's name, or the peer's address), if it may: the one check
        (modelbay.auth.access), with the key from the `authorization` or `x-api-key` metadata."""
        metadata = _metadata(context) if metadata is None else metadata
        key = credential(metadata.get("authorization"), metadata.get("x-api-key"))
        return authorize(self.access, action, key, peer_host(context.peer()), model)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self._authorize(context, Action.HEALTH)
            return pb.ServerLiveResponse(live=self.dataplane.live())

        return await _guarded(context, call)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self._authorize(context, Action.HEALTH)
            return pb.ServerReadyResponse(ready=self.dataplane.ready())

        return await _guarded(context, call)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call() -> Any:
            self._authorize(context, Action.HEALTH)
            return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

        return await _guarded(context, call)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self._authorize(context, Action.INFER, request.name)
            # An unknown model or version is simply not ready (Triton's answer; its clients expect a bool).
            try:
                ready = self.dataplane.model_ready(request.name, request.version or None)
            except ModelNotFound:
                ready = False
            return pb.ModelReadyResponse(ready=ready)

        return await _guarded(context, call)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        async def call() -> Any:
            self._authorize(context, Action.INFER, request.name)
            metadata = self.dataplane.model_metadata(request.name, request.version or None)
            return pb.ModelMetadataResponse(
                name=metadata["name"],
                versions=metadata["versions"],
                platform=metadata["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
            )

        return await _guarded(context, call)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        """OIP ModelInfer. Its id returns in the trailing metadata `x-request-id`; its access line
        and trace (modelbay.logs.finish) end as it is answered."""
        arrived = time.monotonic()
        metadata = _metadata(context)
        # The client's own deadline, if it set one, bounds the request too (gRPC deadlines).
        remaining = context.time_remaining()
        ctx = RequestContext(
            None if remaining is None else arrived + remaining,
            trace=metadata.get("traceparent"),
            routing_key=metadata.get("modelbay-routing-key"),
            headers=metadata,
            request_id=request_id(metadata.get(REQUEST_ID)),
        )
        if self.dataplane.tracing is not None:
            self.dataplane.tracing.start(ctx, INFER_CALL, arrived)
        ids = ((REQUEST_ID, ctx.request_id),)
        version = request.model_version
        try:
            ctx.caller = self._authorize(context, Action.INFER, request.model_name, metadata)
            size = request.ByteSize()
            if size > self.max_message_bytes:
                raise InvalidInput(
                    f"request message of {size} bytes is over the limit of {self.max_message_bytes} bytes"
                )
            span, began = ctx.span, time.monotonic()
            decoded = oip_grpc.decode_request(request)
            if span is not None:
                began = _phase(span, "decode", began)
            response = await self.dataplane.infer(decoded, ctx)
            version, began = response.model_version, time.monotonic()
            answer = oip_grpc.encode_response(response)
            if span is not None:
                _phase(span, "encode", began)
        except Exception as exc:
            code, details = status_of(exc)
            error = details if code in SERVER_SIDE else None
            finish(ctx, "grpc", INFER_CALL, request.model_name, version, code.value[0], arrived, error)
            await context.abort(code, details, trailing_metadata=(*trailers_of(exc), *ids))
        context.set_trailing_metadata(ids)
        finish(ctx, "grpc", INFER_CALL, request.model_name, version, 0, arrived)
        return answer

    # The model repository extension, as Triton's grpc_service.proto defines it. Each call needs an
    # admin API key, or without keys a loopback client (PERMISSION_DENIED otherwise), and takes an
    # empty repository_name (NOT_FOUND otherwise); then it is one Dataplane call (repository_index,
    # load_model, unload_model) whose errors map through grpc/errors.py. A load may carry a model (`config`
    # as string_param, `file:<path>` as bytes_param, read by runtime/management.load_request);
    # its message is held to max_message_bytes like ModelInfer's: the gRPC runtime's receive
    # limit is one per server, and raising it for uploads would let any client's ModelInfer
    # message that large be read. Larger models go over REST (max_upload_bytes).

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call() -> Any:
            self._check_management(context, request.repository_name)
            rows = self.dataplane.repository_index(ready_only=request.ready)
            return pb.RepositoryIndexResponse(
                models=[
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=row.name, version=row.version, state=str(row.state), reason=row.reason
                    )
                    for row in rows
                ]
            )

        return await _guarded(context, call)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call() -> Any:
            self._check_management(context, request.repository_name)
            size = request.ByteSize()
            if size > self.max_message_bytes:
                raise PayloadTooLarge(
                    f"load message of {size} bytes is over the gRPC limit of {self.max_message_bytes} "
                    "bytes (--max-body-bytes); send larger models over REST (--max-upload-bytes)"
                )
            parameters = {name: _parameter_value(p) for name, p in request.parameters.items()}
            load = load_request(request.model_name, parameters)
            await self.dataplane.load_model(request.model_name, load.config, load.files)
            return pb.RepositoryModelLoadResponse()

        return await _guarded(context, call)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def call() -> Any:
            # Triton's "unload_dependents" (tritonclient always sends it) has nothing to act on:
            # modelbay has no ensembles.
            self._check_management(context, request.repository_name)
            await self.dataplane.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await _guarded(context, call)

    def _check_management(self, context: grpc.aio.ServicerContext, repository_name: str) -> None:
        """Raises what `_authorize` raises for ADMIN, ModelNotFound for a repository_name."""
        self._authorize(context, Action.ADMIN)
        if repository_name:
            raise ModelNotFound("modelbay has one repository; leave repository_name empty")


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata as {key: value} (gRPC keys are lower-case; `-bin` keys are bytes
    and left out). A repeated key keeps its last value."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


def _parameter_value(parameter: pb.ModelRepositoryParameter) -> object:
    """The value a ModelRepositoryParameter holds (bool, int, str or bytes), None when unset."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def peer_host(peer: str) -> str:
    """The IP address of a gRPC peer (`ServicerContext.peer()`), or "" for another scheme.

    peer: "ipv4:127.0.0.1:54321", "ipv6:[::1]:54321" (gRPC percent-encodes the brackets:
    "ipv6:%5B::1%5D:54321"), or another scheme ("unix:/path"), which has no address.
    """
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return ""
    return rest.rpartition(":")[0].removeprefix("[").removesuffix("]")


def is_loopback(peer: str) -> bool:
    """Whether a gRPC peer is on loopback (runtime/management.is_loopback_host of its address)."""
    return is_loopback_host(peer_host(peer))


def _phase(span: RequestTrace, name: str, began: float) -> float:
    now = time.monotonic()
    span.phase(name, began, now)
    return now


async def _guarded(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await call()
    except Exception as exc:
        code, details = status_of(exc)
        await context.abort(code, details, trailing_metadata=trailers_of(exc))


def create_grpc_server(
    dataplane: Dataplane,
    address: str,
    max_message_bytes: int,
    reuse_port: bool = False,
    access: Access | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server for `dataplane` bound to `address` ("host:port"); not started yet.

    reuse_port: let several worker processes bind the same port (SO_REUSEPORT; the kernel spreads
    connections across them). access: the API keys (InferenceServicer). Raises RuntimeError when
    the address cannot be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 2 * max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(reuse_port)),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane, max_message_bytes, access), server
    )
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot bind gRPC to {address}")
    return server
