"""An HTTPS sink for OTLP/HTTP over TLS: stores every POST body in a directory, one file per
request named <n>-<signal>.bin (traces, metrics), and answers 200. Decoding is left to the
test (it uses the official protobuf definitions in Rust).

usage: tls_sink.py PORT CERT KEY OUTDIR
"""
import http.server
import itertools
import os
import ssl
import sys
import threading

PORT, CERT, KEY, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
COUNTER = itertools.count()
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        signal = self.path.rstrip("/").rsplit("/", 1)[-1] or "unknown"
        with LOCK:
            n = next(COUNTER)
        tmp = os.path.join(OUT, f".{n}.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
        os.rename(tmp, os.path.join(OUT, f"{n}-{signal}.bin"))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
