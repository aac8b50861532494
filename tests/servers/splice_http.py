"""An HTTP/1.1 keep-alive server that sends every response body with splice(2) from a pipe,
as proxies and Go's io.Copy between sockets do: the body's bytes never pass through the
server's own memory. Usage: python3 splice_http.py PORT. GET /small answers 300 bytes,
GET /large 200 KiB (spliced in pieces of at most the pipe's 64 KiB), anything else 404."""
import os
import sys

import threaded

BODIES = {b"/small": 300, b"/large": 200 * 1024}


def send_spliced(conn, length):
    r, w = os.pipe()
    try:
        left = length
        while left:
            piece = min(left, 60 * 1024)
            os.write(w, b"s" * piece)
            moved = 0
            while moved < piece:
                moved += os.splice(r, conn.fileno(), piece - moved)
            left -= piece
    finally:
        os.close(r)
        os.close(w)


def serve(conn):
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1]
            length = BODIES.get(path)
            if length is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
            send_spliced(conn, length)


threaded.serve_forever(int(sys.argv[1]), serve)
