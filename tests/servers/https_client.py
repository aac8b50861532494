"""HTTPS client for the TLS tests: Python's ssl module over one keep-alive connection.
Sends N requests alternating /ok/<i> (200) and /missing (404); prints how many of each
status it received, as `200=<n> 404=<m>`.

Usage: https_client.py PORT N
"""
import collections
import http.client
import ssl
import sys


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    # The test's certificate is self-signed: no verification (the agent sees plaintext anyway).
    ctx = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    seen = collections.Counter()
    for i in range(n):
        conn.request("GET", f"/ok/{i}" if i % 2 == 0 else "/missing")
        resp = conn.getresponse()
        resp.read()
        seen[resp.status] += 1
    conn.close()
    print(" ".join(f"{k}={v}" for k, v in sorted(seen.items())))


if __name__ == "__main__":
    main()
