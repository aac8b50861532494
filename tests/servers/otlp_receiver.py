"""An independent OTLP receiver for the tests, built on the official Python packages
(grpcio, opentelemetry-proto, protobuf) and the standard library.

Usage: python otlp_receiver.py --out FILE [--grpc-port N] [--http-port N] [--http-status S]

- gRPC on 127.0.0.1:--grpc-port: TraceService/Export and MetricsService/Export.
- OTLP/HTTP protobuf on 127.0.0.1:--http-port: POST /v1/traces and POST /v1/metrics, answered
  200 with an empty Export*ServiceResponse (or --http-status, e.g. 503, to play overloaded).
- Port 0 (the default) picks a free port.
- Every request received appends one JSON line to FILE (flushed at once):
  {"signal": "traces"|"metrics", "transport": "grpc"|"http", "raw_b64": <request bytes>,
   "body": MessageToDict(request, preserving_proto_field_name=True)}
  A body that does not decode is recorded with "error" instead of "body" and answered 400
  (HTTP) or INVALID_ARGUMENT (gRPC).
- Prints "ready grpc=PORT http=PORT" once both listeners accept connections.
"""
import argparse
import base64
import gzip
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

SIGNALS = {
    "traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
}


class Sink:
    """The output file, one JSON line per request, safe across threads."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")

    def record(self, signal, transport, raw, request=None, error=None):
        line = {
            "signal": signal,
            "transport": transport,
            "raw_b64": base64.b64encode(raw).decode("ascii"),
        }
        if request is not None:
            line["body"] = MessageToDict(request, preserving_proto_field_name=True)
        if error is not None:
            line["error"] = error
        text = json.dumps(line, separators=(",", ":"))
        with self.lock:
            self.file.write(text + "\n")
            self.file.flush()


def decode(signal, raw):
    """(request, None) or (None, error text)."""
    request = SIGNALS[signal][0]()
    try:
        request.ParseFromString(raw)
    except DecodeError as e:
        return None, str(e)
    return request, None


def grpc_server(sink, port):
    def handler(signal):
        def export(raw, context):
            request, error = decode(signal, raw)
            sink.record(signal, "grpc", raw, request, error)
            if error is not None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
            return SIGNALS[signal][1]()

        # The raw bytes are kept: deserialize ourselves.
        return grpc.unary_unary_rpc_method_handler(
            export,
            request_deserializer=None,
            response_serializer=SIGNALS[signal][1].SerializeToString,
        )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                {"Export": handler("traces")},
            ),
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.metrics.v1.MetricsService",
                {"Export": handler("metrics")},
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        sys.exit(f"cannot bind gRPC port {port}")
    server.start()
    return server, bound


def http_server(sink, port, status):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, code, body=b"", ctype="application/x-protobuf"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raw = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    raw += self.rfile.read(size)
                    self.rfile.readline()
            else:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                raw = gzip.decompress(raw)
            return raw

        def do_POST(self):
            raw = self.read_body()
            signal = {"/v1/traces": "traces", "/v1/metrics": "metrics"}.get(self.path)
            if signal is None:
                self.answer(404, b"not found", "text/plain")
                return
            if status != 200:
                self.answer(status, b"unavailable", "text/plain")
                return
            request, error = decode(signal, raw)
            sink.record(signal, "http", raw, request, error)
            if error is not None:
                self.answer(400, error.encode(), "text/plain")
                return
            self.answer(200, SIGNALS[signal][1]().SerializeToString())

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--http-status", type=int, default=200)
    args = p.parse_args()
    sink = Sink(args.out)
    grpc_srv, grpc_port = grpc_server(sink, args.grpc_port)
    _, http_port = http_server(sink, args.http_port, args.http_status)
    print(f"ready grpc={grpc_port} http={http_port}", flush=True)
    grpc_srv.wait_for_termination()


if __name__ == "__main__":
    main()
