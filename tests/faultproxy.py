"""A fault-injecting HTTP proxy on loopback, in front of the test S3 server.

Every `slowdown_every`-th request gets S3's 503 SlowDown; every `reset_every`-th has its
connection closed with no response (a connection reset to the client). The rest pass
through unchanged. Faults are counted so a test can show they happened.
"""

from __future__ import annotations

import http.client
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream: str, slowdown_every: int = 4, reset_every: int = 7):
        target = urlparse(upstream)
        self.upstream = (target.hostname, target.port)
        self.slowdown_every, self.reset_every = slowdown_every, reset_every
        self.counter = itertools.count(1)
        self.faults = {"slowdown": 0, "reset": 0, "passed": 0}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                number = next(proxy.counter)
                if number % proxy.reset_every == 0:
                    proxy._count("reset")
                    self.close_connection = True
                    self.connection.shutdown(2)  # the client sees the connection drop
                    return
                if number % proxy.slowdown_every == 0:
                    proxy._count("slowdown")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(_SLOWDOWN)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                head = self.command == "HEAD"  # keeps the object's Content-Length, sends no body
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()
                proxy._count("passed")

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
