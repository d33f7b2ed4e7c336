"""An OTLP/HTTP trace receiver for benchmarks: accepts every POST /v1/traces, parses it (as a
collector would), counts the spans, answers 200. Prints the count when stopped.

    python benchmarks/otlp_sink.py PORT        # listens on 127.0.0.1:PORT until SIGTERM
"""

from __future__ import annotations

import http.server
import signal
import sys
import threading

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

received = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        global received
        request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        count = sum(len(scope.spans) for spans in request.resource_spans for scope in spans.scope_spans)
        with lock:
            received += count
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    print(f"otlp_sink: {received} spans received", file=sys.stderr)


if __name__ == "__main__":
    main()
