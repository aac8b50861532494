"""One hop of a two-service chain, uninstrumented (no trace headers anywhere).

Usage: python3 chain.py PORT [DOWNSTREAM_PORT]
Listens and calls on 127.0.0.1, or on the address in CHAIN_HOST (`::1`: IPv6 only).
Routes:
  GET /front/<id>  calls GET /back/<id> on 127.0.0.1:DOWNSTREAM_PORT from the thread serving
                   the request (a new connection per call), then answers 200 with its body
  GET /back/<id>   200, small body
  anything else    404
The service name comes from OTEL_SERVICE_NAME, as for any process the agent observes.
"""
import http.client
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/front/") and DOWNSTREAM:
            item = self.path.rsplit("/", 1)[-1]
            conn = http.client.HTTPConnection(HOST, DOWNSTREAM, timeout=10)
            try:
                conn.request("GET", "/back/" + item)
                resp = conn.getresponse()
                body = resp.read()
                status = 200 if resp.status == 200 else 502
            finally:
                conn.close()
            self.send(status, b"front:" + body)
        elif self.path.startswith("/back/"):
            self.send(200, b"back")
        else:
            self.send(404, b"not found")


HOST = os.environ.get("CHAIN_HOST", "127.0.0.1")

if __name__ == "__main__":
    PORT = int(sys.argv[1])
    DOWNSTREAM = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    ThreadingHTTPServer.daemon_threads = True
    if ":" in HOST:
        ThreadingHTTPServer.address_family = socket.AF_INET6
    ThreadingHTTPServer((HOST, PORT), Handler).serve_forever()
