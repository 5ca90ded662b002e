"""A local HTTP server for COGs that behaves like a busy object store: HTTP range requests (what
GDAL's /vsicurl/ sends), a fixed latency per request, a share of requests failed with 503 at random
(transient: GDAL retries them), files refused with 403 (an expired signed URL: final), and, with
`token_ttl_s`, every request refused with 403 unless its URL carries a `token` issued by `sign` less
than that long ago (Planetary Computer's SAS tokens, in miniature). Used by the ingest tests and by
`bench/ingest.py`."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class FlakyCogServer:
    """Serves `root` at `url` while used as a context manager; counts requests and bytes."""

    def __init__(self, root: Path, latency_s: float = 0.0, fail_share: float = 0.0, always_fail: set[str] = frozenset(),
                 seed: int = 0, token_ttl_s: float | None = None):
        self.root, self.latency_s, self.fail_share, self.always_fail = Path(root), latency_s, fail_share, set(always_fail)
        self.token_ttl_s = token_ttl_s
        self.requests = self.failed = self.bytes = self.signed = 0
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                time.sleep(server.latency_s)
                path = server.root / self.path.split("?")[0].lstrip("/")
                refused = self.path.lstrip("/") in server.always_fail or server.expired(self.path)
                with server._lock:
                    server.requests += 1
                    fail = refused or server._random.random() < server.fail_share
                    server.failed += fail
                if fail:
                    self.send_response(403 if refused else 503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                match = RANGE.match(self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2) or size - 1), size - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if body:
                    with open(path, "rb") as handle:
                        handle.seek(start)
                        data = handle.read(end - start + 1)
                    with server._lock:
                        server.bytes += len(data)
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def sign(self, href: str) -> str:
        """`href` with a token valid for `token_ttl_s` from now."""
        with self._lock:
            self.signed += 1
        return f"{href}?token={time.time()}"

    def expired(self, path: str) -> bool:
        if self.token_ttl_s is None:
            return False
        token = parse_qs(urlsplit(path).query).get("token", ["0"])[0]
        return time.time() - float(token) > self.token_ttl_s

    def href(self, local: str) -> str:
        """The URL this server gives a file under its root."""
        return f"{self.url}/{os.path.relpath(local, self.root)}"

    def __enter__(self) -> "FlakyCogServer":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
