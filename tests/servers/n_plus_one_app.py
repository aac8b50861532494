"""An HTTP service with an N+1 query pattern, over PostgreSQL with the pure-Python pg8000.

Usage: n_plus_one_app.py HTTP_PORT PG_PORT

GET /orders runs the same statement once per customer, 10 times (the N+1);
GET /single runs it once. One database connection, opened at start-up (as a pool would),
used under a lock; each request is handled on its own thread (ThreadingHTTPServer).
The statement goes through the extended protocol (Parse/Bind/Execute) with a parameter.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pg8000.native

HTTP_PORT, PG_PORT = int(sys.argv[1]), int(sys.argv[2])
QUERY = "SELECT id, total FROM orders WHERE customer_id = :cid"
conn = pg8000.native.Connection("postgres", host="127.0.0.1", port=PG_PORT, database="postgres")
lock = threading.Lock()


def totals(customers):
    out = []
    with lock:
        for cid in customers:
            out.extend(conn.run(QUERY, cid=cid))
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/orders":
            rows = totals(range(1, 11))
        elif self.path == "/single":
            rows = totals([1])
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"rows": len(rows)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", HTTP_PORT), Handler).serve_forever()
