"""Non-HTTP traffic for the bad-input tests.
  python3 raw_tcp.py serve PORT          accept connections, read and discard everything
  python3 raw_tcp.py send PORT N [then M]
        send N binary messages on one connection; then, if given, print "paused", wait for a
        line on stdin, and send M more on the same connection
"""
import os
import socket
import sys
import threading

mode, port = sys.argv[1], int(sys.argv[2])
if mode == "serve":
    srv = socket.create_server(("127.0.0.1", port))

    def drain(c):
        while c.recv(65536):
            pass
        c.close()

    while True:
        c, _ = srv.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()
else:
    s = socket.create_connection(("127.0.0.1", port))
    for _ in range(int(sys.argv[3])):
        s.sendall(b"\x16\x03\x01" + os.urandom(200))
    if len(sys.argv) > 5 and sys.argv[4] == "then":
        print("paused", flush=True)
        sys.stdin.readline()
        for _ in range(int(sys.argv[5])):
            s.sendall(b"\x16\x03\x01" + os.urandom(200))
    s.close()
