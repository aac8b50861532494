"""A gRPC server and client for the tests, on grpcio alone: no protobuf, no generated code.
Messages are raw bytes (no serializers on either side), so the wire is plain gRPC framing
over cleartext HTTP/2 (h2c with prior knowledge), and what the agent sees is decided here.

Service `apm.test.Echo`, one method per outcome the agent must tell apart:
- Say:     answers the request bytes (status OK).
- Missing: aborts with NOT_FOUND before any message: a trailers-only response (one HEADERS
           frame with :status 200, grpc-status and END_STREAM; no DATA).
- Boom:    the handler raises: grpcio answers UNKNOWN.
- Slow:    sleeps 50 ms, then answers (OK) how many Slow calls were in flight when it began,
           so that the client can prove its calls overlapped on the connection.

Usage:
  python grpc_echo.py serve --port P
      Listens on 127.0.0.1:P (insecure), prints "ready port=P" once it accepts connections,
      serves until killed.
  python grpc_echo.py call --port P [--say N] [--missing N] [--boom N] [--slow N] [--concurrent]
      ONE channel (one HTTP/2 connection): the Say, Missing and Boom calls one after the
      other, then the Slow calls (all at once with --concurrent: futures, so their streams are
      in flight together). Checks every status, prints one summary line, closes the channel,
      exits 0; exits 1 (and says why on stderr) when a call did not end as expected.

The agent names each process by its OTEL_SERVICE_NAME (the tests set one per process).
"""
import argparse
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "apm.test.Echo"
SLOW_SECONDS = 0.05
# What each method must end with, as seen by the client.
EXPECTED = {
    "Say": grpc.StatusCode.OK,
    "Missing": grpc.StatusCode.NOT_FOUND,
    "Boom": grpc.StatusCode.UNKNOWN,
    "Slow": grpc.StatusCode.OK,
}
# No proxy from the environment, no transparent retries: exactly one HTTP/2 stream per call,
# straight to the server.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]


class Slow:
    """Counts the Slow calls in flight (the server's threads run them side by side)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight = 0

    def __call__(self, request, context):
        with self.lock:
            self.in_flight += 1
            seen = self.in_flight
        try:
            time.sleep(SLOW_SECONDS)
        finally:
            with self.lock:
                self.in_flight -= 1
        return str(seen).encode()


def say(request, context):
    return request


def missing(request, context):
    # Raises: no message and no initial metadata were sent, so only trailers go out.
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def boom(request, context):
    raise RuntimeError("boom")


def serve(port):
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn)
        for name, fn in (("Say", say), ("Missing", missing), ("Boom", boom), ("Slow", Slow()))
    }
    # Enough threads for every concurrent Slow call at once.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        sys.exit(f"cannot bind 127.0.0.1:{port}")
    server.start()
    print(f"ready port={port}", flush=True)
    server.wait_for_termination()


def outcome(call):
    """(status code, response bytes or None) of a finished call or future."""
    try:
        return grpc.StatusCode.OK, call.result()
    except grpc.RpcError as e:
        return e.code(), None


def call(args):
    failures = []
    target = f"127.0.0.1:{args.port}"
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stubs = {m: channel.unary_unary(f"/{SERVICE}/{m}") for m in EXPECTED}

        def check(method, i, code, response, payload):
            if code != EXPECTED[method]:
                failures.append(f"{method} #{i}: {code.name}, want {EXPECTED[method].name}")
            elif method == "Say" and response != payload:
                failures.append(f"Say #{i}: echoed {response!r}, sent {payload!r}")

        for method, n in (("Say", args.say), ("Missing", args.missing), ("Boom", args.boom)):
            for i in range(n):
                payload = f"{method.lower()}-{i}".encode()
                code, response = outcome(stubs[method].future(payload, timeout=10))
                check(method, i, code, response, payload)

        start = time.monotonic()
        if args.concurrent:
            # Every call issued before any is waited for: streams in flight together.
            pending = [stubs["Slow"].future(b"slow", timeout=10) for _ in range(args.slow)]
            results = [outcome(f) for f in pending]
        else:
            results = [
                outcome(stubs["Slow"].future(b"slow", timeout=10)) for _ in range(args.slow)
            ]
        slow_ms = (time.monotonic() - start) * 1000
        overlap = 0
        for i, (code, response) in enumerate(results):
            check("Slow", i, code, response, b"slow")
            if response is not None:
                overlap = max(overlap, int(response))
        if args.concurrent and args.slow > 1 and overlap < 2:
            failures.append(f"the {args.slow} Slow calls never overlapped at the server")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(
        f"ok say={args.say} missing={args.missing} boom={args.boom} slow={args.slow}"
        f" concurrent={int(args.concurrent)} slow_max_in_flight={overlap}"
        f" slow_wall_ms={slow_ms:.0f}",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("call")
    c.add_argument("--port", type=int, required=True)
    for method in ("say", "missing", "boom", "slow"):
        c.add_argument(f"--{method}", type=int, default=0)
    c.add_argument("--concurrent", action="store_true")
    args = p.parse_args()
    if args.command == "serve":
        serve(args.port)
    else:
        call(args)


if __name__ == "__main__":
    main()
