"""One process, one fd number, three servers in turn: an HTTP server A, a Redis server, a
second HTTP server C. Every connection lives under the fd number of the one before it
(checked: the script fails otherwise).

Usage: python3 fd_reuse_client.py MODE HTTP_A_PORT REDIS_PORT HTTP_C_PORT ROUNDS
MODE:
  close  each connection is closed (close()), and the next one opened at once: the kernel
         hands out the lowest free fd, the number the previous one had.
  dup2   the next connection is opened first (another fd), then dup2()'d onto the previous
         one's number (which closes the previous connection inside dup2, without a close()
         call), and its own fd is closed.
Per round:
  A:     GET /users/1, GET /users/2, GET /error   (keep-alive, one connection)
  Redis: SET fdreuse:k v, GET fdreuse:k, GET fdreuse:k
  C:     GET /nocontent, GET /chunked
Prints one line "fds N N N ..." (the fd of every connection), then "done".
"""
import http.client
import os
import socket
import sys

mode = sys.argv[1]
a_port, redis_port, c_port, rounds = map(int, sys.argv[2:6])
assert mode in ("close", "dup2"), mode
fds = []
current = None


def open_next(port):
    """A connection to `port` under the previous connection's fd number."""
    global current
    if mode == "close" or current is None:
        if current is not None:
            current.close()
        current = socket.create_connection(("127.0.0.1", port), timeout=10)
    else:
        fresh = socket.create_connection(("127.0.0.1", port), timeout=10)
        fd = current.detach()
        os.dup2(fresh.fileno(), fd)
        fresh.close()
        current = socket.socket(fileno=fd)
        current.settimeout(10)
    fds.append(current.fileno())
    return current


def http_round(port, paths, want):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.sock = open_next(port)
    got = []
    for p in paths:
        conn.request("GET", p)
        r = conn.getresponse()
        r.read()
        got.append(r.status)
    assert got == want, (port, got)


def redis_reply(f):
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:])
        return f.read(n + 2)[:-2] if n >= 0 else None
    return line.rstrip(b"\r\n")


def redis_round(port, commands, want):
    s = open_next(port)
    f = s.makefile("rb")
    got = []
    for args in commands:
        msg = b"*%d\r\n" % len(args)
        for a in args:
            msg += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(msg)
        got.append(redis_reply(f))
    f.close()
    assert got == want, (port, got)


for i in range(rounds):
    http_round(a_port, ["/users/1", "/users/2", "/error"], [200, 200, 500])
    value = b"v%d" % i
    redis_round(redis_port,
                [[b"SET", b"fdreuse:k", value], [b"GET", b"fdreuse:k"], [b"GET", b"fdreuse:k"]],
                [b"+OK", value, value])
    http_round(c_port, ["/nocontent", "/chunked"], [204, 200])
current.close()

print("fds", *fds, flush=True)
assert len(set(fds)) == 1, "the fd numbers differ: %s" % fds
print("done", flush=True)
