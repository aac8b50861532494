"""An HTTP/2 client (prior knowledge, the `h2` library) that opens its connection and makes a
request before it is told to go on: for a connection older than the agent. Usage:
python3 h2_held_client.py PORT PATH_BEFORE PATH...
  Connects to 127.0.0.1:PORT, GETs PATH_BEFORE with an `x-trace` header (both enter the
  client's HPACK table), prints "ready <status>", then waits for a line on stdin; then GETs
  each PATH in turn on the same connection, each with the same `x-trace` (named from the
  table now), prints "done <status> <status> ...", and waits for another line; then closes
  the connection and exits."""
import socket
import sys

import h2.config
import h2.connection
import h2.events


def get(sock, conn, path, port):
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "127.0.0.1:%d" % port),
        (":path", path),
        ("x-trace", "held-1"),
    ], end_stream=True)
    sock.sendall(conn.data_to_send())
    status = None
    while True:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("connection closed")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                status = dict(event.headers)[b":status"].decode()
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
                return status
        out = conn.data_to_send()
        if out:
            sock.sendall(out)


def main():
    port, before, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    sock = socket.create_connection(("127.0.0.1", port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    print("ready", get(sock, conn, before, port), flush=True)
    sys.stdin.readline()
    statuses = [get(sock, conn, p, port) for p in paths]
    print("done", *statuses, flush=True)
    # Held until told again: a client that lives on, as one with a long-lived connection.
    sys.stdin.readline()
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()


main()
