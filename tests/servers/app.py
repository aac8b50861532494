"""Test application server: HTTP/1.1 with keep-alive, known routes, statuses and timings.

Usage: python3 app.py PORT [--fork]
  --fork: a process per connection (accepted by the parent, served by a forked child that
          inherits the socket: the pre-fork model of PostgreSQL, Apache prefork...)
Routes:
  GET  /users/<id>       200, small JSON
  GET  /error            500
  GET  /nocontent        204
  GET  /big              200, 1.5 MB body with Content-Length
  GET  /chunked          200, chunked body (3 chunks)
  GET  /slow/<name>?ms=N 200 after sleeping N ms
  POST /echo             201, echoes the request body length
  GET  /close            200 with Connection: close
  anything else          404
Environment:
  APP_TIMING_LOG=FILE    append one line per request, "<id> <microseconds>": the app's own
                         duration of the request (time.perf_counter() from the start of the
                         method handler, after the head was read and parsed, to the return of
                         the write of the response's last byte), as a framework middleware
                         would time it. <id> is the trace id of the request's W3C
                         `traceparent` header, else its `X-Request-Id`, else "-".
"""
import json
import os
import sys
import threading
import time
import socketserver
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BIG = b"x" * (1536 * 1024)

TIMING_LOG = os.environ.get("APP_TIMING_LOG")
TIMING_FILE = open(TIMING_LOG, "a", buffering=1) if TIMING_LOG else None
TIMING_LOCK = threading.Lock()


def request_id(headers):
    tp = headers.get("traceparent", "")
    parts = tp.split("-")
    if len(parts) >= 4 and len(parts[1]) == 32:
        return parts[1]
    return headers.get("x-request-id", "-")


def timed(handler):
    """The app's own measurement of each request, written to APP_TIMING_LOG (when set)."""
    if TIMING_FILE is None:
        return handler

    def wrapper(self):
        t0 = time.perf_counter()
        try:
            handler(self)
        finally:
            us = (time.perf_counter() - t0) * 1e6
            with TIMING_LOCK:
                TIMING_FILE.write("%s %.1f\n" % (request_id(self.headers), us))

    return wrapper


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # With the timing log (a benchmark), no Nagle delay between the head and the body writes:
    # the client would otherwise wait for its delayed ACK (40 ms) on every request.
    disable_nagle_algorithm = TIMING_FILE is not None

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    @timed
    def do_GET(self):
        url = urlsplit(self.path)
        path = url.path
        if path.startswith("/users/"):
            self.send(200, json.dumps({"id": path.rsplit("/", 1)[-1]}).encode(),
                      [("Content-Type", "application/json")])
        elif path == "/error":
            self.send(500, b"boom")
        elif path == "/nocontent":
            self.send(204)
        elif path == "/big":
            self.send(200, BIG)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first", b"second-part", b"third"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/slow/"):
            ms = int(parse_qs(url.query).get("ms", ["50"])[0])
            time.sleep(ms / 1000.0)
            self.send(200, b"slept")
        elif path == "/close":
            self.close_connection = True
            self.send(200, b"bye", [("Connection", "close")])
        else:
            self.send(404, b"not found")

    do_HEAD = do_GET

    @timed
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        if self.path == "/echo":
            self.send(201, str(len(body)).encode())
        else:
            self.send(404, b"not found")


class ForkingHTTPServer(socketserver.ForkingMixIn, HTTPServer):
    pass


if __name__ == "__main__":
    port = int(sys.argv[1])
    if "--fork" in sys.argv[2:]:
        ForkingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    else:
        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
