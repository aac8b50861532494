"""An HTTP server that accepts `Upgrade: h2c` (RFC 7540 §3.2), as curl --http2 asks for on
http:// URLs: the HTTP/1.1 request is answered with a 101, its response comes as HTTP/2 on
stream 1, and later requests of the connection are HTTP/2 streams. With the `h2` library
(sans-I/O: this file does the socket work). Usage: python3 h2c_upgrade.py PORT.
GET /hello answers 200, anything else 404; a request without the upgrade gets HTTP/1.1."""
import sys

import h2.config
import h2.connection
import h2.events

import threaded


def answer(path):
    if path == b"/hello":
        return b"200", b"hello over h2c\n"
    return b"404", b"not found\n"


def respond(conn, stream_id, path):
    status, body = answer(path)
    conn.send_headers(stream_id, [(b":status", status), (b"content-length", b"%d" % len(body))])
    conn.send_data(stream_id, body, end_stream=True)


def http1(sock, path):
    status, body = answer(path)
    sock.sendall(b"HTTP/1.1 %s X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (status, len(body), body))


def serve(sock):
    with sock:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
        head, data = buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        path = lines[0].split(b" ")[1]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"h2c" not in headers.get(b"upgrade", b"").lower():
            http1(sock, path)
            return
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        conn.initiate_upgrade_connection(headers.get(b"http2-settings", b""))
        respond(conn, 1, path)
        sock.sendall(conn.data_to_send())
        paths = {}
        while True:
            if data:
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        paths[event.stream_id] = dict(event.headers).get(b":path", b"")
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id in paths:
                        respond(conn, event.stream_id, paths.pop(event.stream_id))
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
            data = sock.recv(65536)
            if not data:
                return


threaded.serve_forever(int(sys.argv[1]), serve)
