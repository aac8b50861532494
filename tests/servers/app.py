"""Test application server: HTTP/1.1 with keep-alive, known routes, statuses and timings.

Usage: python3 app.py PORT [--fork] [--bind ADDR]
  --fork: a process per connection (accepted by the parent, served by a forked child that
          inherits the socket: the pre-fork model of PostgreSQL, Apache prefork...)
  --bind: the address to listen on (default: APP_BIND from the environment, else 127.0.0.1;
          0.0.0.0 in a container of its own); an IPv6 one (::1) listens on IPv6
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
"""
import json
import os
import socket
import sys
import time
import socketserver
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BIG = b"x" * (1536 * 1024)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

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

    def do_GET(self):
        url = urlsplit(self.path)
        path = url.path
        if path.startswith("/users/"):
            # `?status=503`: the same route failing on demand (the alerts test).
            status = int(parse_qs(url.query).get("status", ["200"])[0])
            self.send(status, json.dumps({"id": path.rsplit("/", 1)[-1]}).encode(),
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
    options = sys.argv[2:]
    default = os.environ.get("APP_BIND", "127.0.0.1")
    host = options[options.index("--bind") + 1] if "--bind" in options else default
    if "--fork" in options:
        cls = ForkingHTTPServer
    else:
        cls = ThreadingHTTPServer
        cls.daemon_threads = True
    if ":" in host:
        cls = type(cls.__name__ + "6", (cls,), {"address_family": socket.AF_INET6})
    cls((host, port), Handler).serve_forever()
