"""A memcached text-protocol client on a raw socket, with a known workload.

Usage: memcached_client.py PORT CANARY

One connection, one command at a time (each reply read in full before the next command).
Prints the workload's own counts as JSON (per command, and the replies it got) so the test can
check them before comparing the agent's counts.
"""
import json
import socket
import sys

port = int(sys.argv[1])
canary = sys.argv[2].encode()
sock = socket.create_connection(("127.0.0.1", port))
buf = b""
counts = {}
replies = {}


def read_line():
    global buf
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("memcached closed the connection")
        buf += chunk
    line, buf = buf.split(b"\r\n", 1)
    return line


def read_exact(n):
    global buf
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("memcached closed the connection")
        buf += chunk
    data, buf = buf[:n], buf[n:]
    return data


def note(cmd, reply):
    counts[cmd] = counts.get(cmd, 0) + 1
    key = reply.split(b" ")[0].decode()
    replies.setdefault(cmd, {})
    replies[cmd][key] = replies[cmd].get(key, 0) + 1


def storage(cmd, key, value):
    sock.sendall(b"%s %s 0 0 %d\r\n%s\r\n" % (cmd.encode(), key, len(value), value))
    note(cmd, read_line())


def get(*keys):
    sock.sendall(b"get " + b" ".join(keys) + b"\r\n")
    hits = 0
    while True:
        line = read_line()
        if line == b"END":
            break
        if not line.startswith(b"VALUE "):
            note("get", line)
            return
        size = int(line.split(b" ")[3])
        read_exact(size + 2)
        hits += 1
    note("get", b"HIT" if hits else b"MISS")
    counts["get_keys_hit"] = counts.get("get_keys_hit", 0) + hits


def simple(cmd, *args):
    sock.sendall(b" ".join([cmd.encode(), *args]) + b"\r\n")
    note(cmd, read_line())


# 10 sets: 9 values (one carries the canary) and a counter.
for i in range(9):
    value = b"value-%d" % i if i else b"v-" + canary
    storage("set", b"k:%d" % i, value)
storage("set", b"counter", b"10")
# 8 single-key gets: 5 hits, 3 misses.
for i in range(5):
    get(b"k:%d" % i)
for i in range(3):
    get(b"miss:%d" % i)
# 1 multi-get (one command, 4 keys, 3 of them hits).
get(b"k:5", b"k:6", b"k:7", b"miss:9")
# 3 deletes: 2 found, 1 not found (NOT_FOUND is an answer, not an error).
simple("delete", b"k:0")
simple("delete", b"k:1")
simple("delete", b"miss:0")
# 4 incrs on the counter, then 1 on a non-numeric value: CLIENT_ERROR.
for _ in range(4):
    simple("incr", b"counter", b"1")
simple("incr", b"k:2", b"1")
sock.close()
print(json.dumps({"counts": counts, "replies": replies}, sort_keys=True))
