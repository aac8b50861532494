"""A threaded TCP server on 127.0.0.1 for the test servers: serve_forever(PORT, handle) calls
handle(sock) on its own thread for each accepted connection."""
import socketserver


def serve_forever(port, handle):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            handle(self.request)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 64

    Server(("127.0.0.1", port), Handler).serve_forever()
