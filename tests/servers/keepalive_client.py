"""Opens one keep-alive connection, sends one request, prints 'ready', waits for a line on
stdin, then sends N more requests on the SAME connection and prints 'done'.
Usage: python3 keepalive_client.py PORT N"""
import http.client
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
conn.request("GET", "/users/0")
conn.getresponse().read()
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    conn.request("GET", "/users/%d" % (i + 1))
    conn.getresponse().read()
print("done", flush=True)
