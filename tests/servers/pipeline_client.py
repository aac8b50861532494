"""Sends N GET requests in ONE write on one connection (HTTP pipelining), then reads the N
responses. Usage: python3 pipeline_client.py PORT N PATH_PREFIX. Prints the statuses."""
import socket
import sys

port, n, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"".join(
    b"GET %s%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (prefix.encode(), i, port)
    for i in range(n)))
buf, statuses = b"", []
while len(statuses) < n:
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed early")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    statuses.append(int(lines[0].split()[1]))
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(buf) < length:
        buf += s.recv(65536)
    buf = buf[length:]
s.close()
print(" ".join(map(str, statuses)))
