"""An HTTP/1.1 keep-alive server that never serves a connection on the fd accept() gave it.

Usage: python3 dup2_http.py PORT LOG
Each accepted connection (fd A) is moved at once: dup2(A, 100), close(A), and its requests
are read and answered on fd 100 (read/write). After answering `GET /move`, the connection
moves again: dup2(fd, fd + 1), close(fd), and the next requests go on fd + 1. When the
client closes, the fd is closed. One connection at a time (blocking).
Routes (GET only): /users/<id> 200, /error 500, /move 200, anything else 404.
For every connection, appends to LOG: "accepted=A fds=100,101,... requests=N".
"""
import os
import socket
import sys

FIRST = 100


def free(fd):
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def respond(fd, status, body):
    reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[status]
    out = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status, reason.encode(), len(body), body)
    while out:
        out = out[os.write(fd, out):]


def serve(fd, fds):
    """Serves requests on `fd` until the client closes; returns how many."""
    buf = b""
    served = 0
    while True:
        while b"\r\n\r\n" not in buf:
            data = os.read(fd, 65536)
            if not data:
                os.close(fd)
                return served
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        method, path = head.split(b"\r\n", 1)[0].split(b" ")[:2]
        assert method == b"GET", method
        if path.startswith(b"/users/"):
            respond(fd, 200, b'{"id": "%s"}' % path.rsplit(b"/", 1)[-1])
        elif path == b"/error":
            respond(fd, 500, b"boom")
        elif path == b"/move":
            respond(fd, 200, b"moved")
            assert free(fd + 1), "fd %d in use" % (fd + 1)
            os.dup2(fd, fd + 1)
            os.close(fd)
            fd += 1
            fds.append(fd)
        else:
            respond(fd, 404, b"not found")
        served += 1


def main():
    port, log = int(sys.argv[1]), sys.argv[2]
    srv = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = srv.accept()
        accepted = conn.fileno()
        assert free(FIRST), "fd %d in use" % FIRST
        os.dup2(accepted, FIRST)
        conn.close()  # close(A): the connection lives on under FIRST only
        fds = [FIRST]
        served = serve(FIRST, fds)
        with open(log, "a") as f:
            f.write("accepted=%d fds=%s requests=%d\n"
                    % (accepted, ",".join(map(str, fds)), served))


main()
