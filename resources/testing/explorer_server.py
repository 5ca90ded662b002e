"""`tessera serve` as a real process on a free loopback port, over a test environment's data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExplorerServer:
    """Started by `with`; `url` is its root, `client` an HTTP client on it."""

    def __init__(self, root: Path, regions_file: Path, lancedb_uri: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, TESSERA_HOME=str(root), TESSERA_REGIONS=str(regions_file),
                        TESSERA_LANCEDB_URI=str(lancedb_uri), TESSERA_DEPLOYMENT="local")
        self.env.pop("TESSERA_EMBEDDINGS_TILES", None)

    def __enter__(self) -> "ExplorerServer":
        self.process = subprocess.Popen([sys.executable, "-m", "tessera_assets.cli", "serve", "--port", str(self.port)],
                                        env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tessera serve exited: {self.process.stdout.read()}")
            try:
                if self.client.get("/api/regions").status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("tessera serve did not answer within 60 s")

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=10)
