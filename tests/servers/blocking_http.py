"""A minimal HTTP/1.1 server that blocks in accept() (no selector), one connection at a time.
Usage: python3 blocking_http.py PORT. Answers every request 200 with a small body."""
import socket
import sys

srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = srv.accept()  # blocks here while idle
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                break
            buf += data
        if b"\r\n\r\n" not in buf:
            break
        _, buf = buf.split(b"\r\n\r\n", 1)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    conn.close()
