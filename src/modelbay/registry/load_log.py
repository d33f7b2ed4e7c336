"""Each model version's load log: the log lines of its last load, kept in memory.

While the model manager loads a version (reading its files, building its environment, setting it
up and warming it, or failing), every log line the server emits on behalf of that load is also
kept here, under the version's (name, version), whatever logger wrote it: the manager's own
lines, the loaders', the environment builder's. The dashboard and
`GET /v2/repository/models/{model}/versions/{version}/log` read it, as Panini shows a deployment's
log. Lines pass the server's log level first (`--log-level`): at `warning` only warnings and
errors are kept.

Which lines belong to which load is told by a context variable set for the load's task:
`asyncio.to_thread` copies it into the thread that builds the version, so lines written there
count, while the lines of requests served meanwhile (other tasks, other contexts) do not. Threads
a loader starts itself do not inherit it: their lines are only in the server's log.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
from collections.abc import Iterator

MAX_LINES = 200  # per version: the last ones are kept (the error that ended a load is last)
MAX_LINE_CHARS = 2000
MAX_VERSIONS = 1000  # versions whose log is kept; the oldest load's log goes first
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_LOADING: contextvars.ContextVar[tuple[LoadLog, tuple[str, str]] | None] = contextvars.ContextVar(
    "modelbay_loading", default=None
)


class LoadLog:
    """The load logs of one server's model versions.

    max_lines:   lines kept per version, the last ones.
    max_versions: versions whose log is kept; a new load past it drops the oldest log.
    A version's log starts afresh with each load of it (`capture`).
    """

    def __init__(self, max_lines: int = MAX_LINES, max_versions: int = MAX_VERSIONS) -> None:
        self.max_lines = max_lines
        self.max_versions = max_versions
        self._logs: dict[tuple[str, str], collections.deque[str]] = {}
        self._handler = _Handler(self)
        self._captures = 0

    def lines(self, name: str, version: str) -> list[str]:
        """The log lines of the last load of version `version` of model `name`, oldest first;
        [] when none was captured (a version on disk never loaded, or a server built without
        `modelbay.server.Server`, whose start is not captured)."""
        return list(self._logs.get((name, version), ()))

    @contextlib.contextmanager
    def capture(self, name: str, version: str) -> Iterator[None]:
        """Keep, as the log of `name` version `version` (emptied first), every line logged in this
        context until the block ends: by this task and the threads it hands work to with
        `asyncio.to_thread`. The handler sits on the root logger only while some capture runs."""
        key = (name, version)
        self._logs.pop(key, None)
        self._logs[key] = collections.deque(maxlen=self.max_lines)
        while len(self._logs) > self.max_versions:
            del self._logs[next(iter(self._logs))]
        token = _LOADING.set((self, key))
        if self._captures == 0:
            logging.getLogger().addHandler(self._handler)
        self._captures += 1
        try:
            yield
        finally:
            self._captures -= 1
            if self._captures == 0:
                logging.getLogger().removeHandler(self._handler)
            _LOADING.reset(token)

    def _add(self, key: tuple[str, str], line: str) -> None:
        lines = self._logs.get(key)
        if lines is not None:
            lines.append(line[:MAX_LINE_CHARS])


class _Handler(logging.Handler):
    """Files a log record under the load whose context it was emitted in, if it is one of `owner`'s."""

    def __init__(self, owner: LoadLog) -> None:
        super().__init__(logging.DEBUG)
        self.owner = owner
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        loading = _LOADING.get()
        if loading is None or loading[0] is not self.owner:
            return
        try:
            self.owner._add(loading[1], self.format(record))
        except Exception:
            self.handleError(record)
