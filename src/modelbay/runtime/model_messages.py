"""What a model worker process and its server say to each other, and how it travels.

Messages are typed (one dataclass per kind, as MLServer's `parallel/messages.py`), never bare
tuples. They travel over a Unix socket pair, each as one frame:

    header  24 bytes: magic b"MBW1", buffer count n (u32), pickle length (u64), rest length (u64)
    rest    n buffer lengths (u64 each), then the pickle, then the n buffers, each starting on a
            64-byte boundary of `rest` (zero padding between)

The pickle is protocol 5 with out-of-band buffers (PEP 574): a numpy array's bytes are not
copied into the pickle but written from the array itself (one `sendmsg`), and read back into one
buffer from which the arrays are rebuilt in place (writeable, 64-byte aligned within the frame).
Tensors are never re-encoded (no JSON, no per-element Python).

Only the server and the worker process it started talk over the socket, and both trust each
other's pickles (the same code built them); still, every header is checked (magic, counts,
lengths against the limits below and against each other) and a frame that breaks the framing
raises FramingError: the stream can no longer be trusted, so the server kills the worker.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import time
import traceback
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modelbay import errors
from modelbay.errors import InferenceFailed, ModelbayError
from modelbay.types import TensorSpec

MAGIC = b"MBW1"
_HEADER = struct.Struct("<4sIQQ")
ALIGN = 64
MAX_BUFFERS = 1 << 16
MAX_FRAME_BYTES = 1 << 34  # 16 GiB: far above any batch; stops a corrupt length allocating more
_IOV_CHUNK = 512  # sendmsg takes at most IOV_MAX (1024 on Linux) pieces per call
_PADDING = bytes(ALIGN)

Door = Literal["simple", "oip"]
# Raised again as InferenceFailed with the worker's traceback: the base class is never raised itself,
# and an InferenceFailed's message is for the log.
_NOT_RAISED_AGAIN = (ModelbayError, InferenceFailed)


class FramingError(Exception):
    """A frame broke the framing (bad magic, counts or lengths) or held an unexpected message."""


# Messages. Server -> worker: Start, then Run (artifact models) or Handle (predict.py folders).
# Worker -> server: Ready or Failure after Start; Ran, Handled or Failure after each request.


@dataclass(slots=True)
class Start:
    """Load the model: `config` is its ModelConfig as msgspec JSON (worker_process false).

    role: "runner" serves an artifact's forward pass (Run -> Ran); "handler" serves a whole
    predict.py batch, hooks included (Handle -> Handled).
    """

    config: bytes
    role: Literal["runner", "handler"]


@dataclass(slots=True)
class Ready:
    """The model is loaded and set up (`Predictor.setup` ran); what the server needs to know of it.

    output_keys:  a runner's output names from its module's dict keys, once known.
    custom_rows:  the handler counts its own rows per item (`Predictor.rows` overridden).
    default:      with `batching.default_output`, the finished default answer of one row for each
                  door: (postprocess(default), encode_tensors(default)); None without one.
    """

    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_keys: list[str] | None = None
    preprocess_in_thread: bool = False
    custom_rows: bool = False
    default: tuple[Any, dict[str, np.ndarray]] | None = None


@dataclass(slots=True)
class Run:
    """One forward pass: input arrays [batch, ...] in input order; `traceparent`: the batch's
    span when it is traced (runtime/tracing.py), the parent of the worker's `forward` span."""

    arrays: list[np.ndarray]
    traceparent: str | None = None


@dataclass(slots=True)
class Ran:
    """The forward pass's output arrays [batch, ...], in order, and the runner's output keys."""

    arrays: list[np.ndarray]
    output_keys: list[str] | None = None


@dataclass(slots=True)
class Item:
    """One request's raw item as its door gave it: an example of the simple door (`preprocess`
    takes it) or the named input tensors of the OIP door (`decode_tensors` takes them)."""

    door: Door
    value: Any


@dataclass(slots=True)
class Handle:
    """A whole batch for a predict.py handler: its items, preprocessed, predicted and
    postprocessed (or encoded, for the OIP door) in the worker; `traceparent` as for Run."""

    items: list[Item]
    traceparent: str | None = None


@dataclass(slots=True)
class Handled:
    """One finished output per item, in order: the JSON-able prediction (simple door), the named
    output arrays (OIP door), or a Failure for an item whose own hooks failed."""

    outputs: list[Any]


@dataclass(slots=True)
class Failure:
    """Model code in the worker raised. Exceptions are not pickled (their class may exist only in
    the worker's environment): their class name, message and traceback travel as text.

    error:   the class name; a modelbay client-facing error (InvalidInput, ...) is raised again
             as itself in the server, anything else becomes InferenceFailed.
    """

    error: str
    message: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """The Failure that describes `exc` (with its traceback)."""
        text = "".join(traceback.format_exception(exc))
        message = exc.message if isinstance(exc, ModelbayError) else str(exc)
        return cls(type(exc).__name__, message, text)

    def exception(self) -> ModelbayError:
        """The error to raise in the server: a modelbay ModelbayError other than InferenceFailed
        (its message is for the client) as itself; anything else as InferenceFailed whose message,
        meant for the log only, holds the worker's traceback."""
        kind = getattr(errors, self.error, None)
        if isinstance(kind, type) and issubclass(kind, ModelbayError) and kind not in _NOT_RAISED_AGAIN:
            try:
                return kind(self.message)
            except TypeError:  # an error class whose constructor takes more than a message
                pass
        return InferenceFailed(
            f"{self.error}: {self.message}\n--- in the worker process ---\n{self.traceback}"
        )


class Channel:
    """One end of the socket pair: `send` and `receive` whole messages (see the module docstring).

    deadline: a `time.monotonic()` time by which the whole message must be sent or received
    (socket.timeout / TimeoutError past it), or None to wait as long as it takes.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._blocking = True

    def send(self, message: object, deadline: float | None = None) -> None:
        """Write `message` as one frame (`frame`). Raises what `frame` raises before writing
        anything; OSError (BrokenPipeError: the peer is gone) or TimeoutError while writing."""
        self.write(frame(message), deadline)

    def write(self, parts: list[bytes | memoryview], deadline: float | None = None) -> None:
        """Write a frame made by `frame`. Raises OSError or TimeoutError (the stream is then broken)."""
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        first = 0
        while first < len(views):
            self._timeout(deadline)
            sent = self.sock.sendmsg(views[first : first + _IOV_CHUNK])
            while sent:
                length = views[first].nbytes
                if sent < length:
                    views[first] = views[first][sent:]
                    break
                sent -= length
                first += 1

    def receive(self, deadline: float | None = None) -> object:
        """Read one frame and unpickle its message.

        Raises EOFError when the peer closed the socket (between frames or within one), FramingError
        for a frame that breaks the framing, TimeoutError past the deadline, and whatever
        unpickling raises for a well-framed message that cannot be rebuilt here.
        """
        head = bytearray(_HEADER.size)
        self._receive_into(memoryview(head), deadline)
        magic, count, pickled, size = _HEADER.unpack(head)
        if magic != MAGIC or count > MAX_BUFFERS or size > MAX_FRAME_BYTES or pickled > size:
            raise FramingError(
                f"bad frame header (magic {bytes(magic)!r}, {count} buffers, pickle {pickled} bytes, "
                f"frame {size} bytes)"
            )
        rest = bytearray(size)
        view = memoryview(rest)
        self._receive_into(view, deadline)
        lengths = struct.unpack_from(f"<{count}Q", rest) if 8 * count <= size else ()
        pieces = _layout(8 * count, [pickled, *lengths]) if len(lengths) == count else None
        if pieces is None or pieces[-1][1] != size:
            raise FramingError(f"frame of {size} bytes does not hold the {count} buffers its header lists")
        data, *buffers = (view[start:end] for start, end in pieces)
        return pickle.loads(data, buffers=buffers)

    def close(self) -> None:
        """Shut the socket down both ways (the peer's receive sees EOF at once), then close it."""
        with contextlib.suppress(OSError):  # already shut down, or the peer has gone
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _timeout(self, deadline: float | None) -> None:
        if deadline is None:
            if not self._blocking:
                self.sock.settimeout(None)
                self._blocking = True
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        self._blocking = False

    def _receive_into(self, view: memoryview, deadline: float | None) -> None:
        while view.nbytes:
            self._timeout(deadline)
            count = self.sock.recv_into(view)
            if count == 0:
                raise EOFError("the other process closed the connection")
            view = view[count:]


def frame(message: object) -> list[bytes | memoryview]:
    """`message` pickled (protocol 5, arrays out of band) and laid out as one frame's pieces, to be
    written in order (`Channel.write`); the arrays' bytes are referenced, not copied.

    Raises what pickling raises (PicklingError, TypeError, ...) for a message that cannot travel,
    FramingError for one over MAX_BUFFERS buffers or MAX_FRAME_BYTES bytes.
    """
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    if len(raws) > MAX_BUFFERS:
        raise FramingError(f"a message with {len(raws)} buffers; at most {MAX_BUFFERS} travel")
    parts: list[bytes | memoryview] = [struct.pack(f"<{len(raws)}Q", *(raw.nbytes for raw in raws))]
    size = 8 * len(raws)
    for piece in (memoryview(data), *raws):
        pad = -size % ALIGN
        parts += [_PADDING[:pad], piece]
        size += pad + piece.nbytes
    if size > MAX_FRAME_BYTES:
        raise FramingError(f"a message of {size} bytes; at most {MAX_FRAME_BYTES} travel")
    return [_HEADER.pack(MAGIC, len(raws), len(data), size), *parts]


def _layout(start: int, lengths: list[int]) -> list[tuple[int, int]]:
    """(start, end) in the frame's rest of each piece of `lengths`, each aligned to ALIGN bytes."""
    pieces = []
    for length in lengths:
        start += -start % ALIGN
        pieces.append((start, start + length))
        start += length
    return pieces
