"""`tessera serve` as a real process on a loopback port: over a test environment's data, or started by
any command line (the compose file's, with its own flags and environment)."""

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
    """Started by `with`, which returns once `/api/regions` answers a request without a token with
    `ready_status` (200; 401 for an explorer that needs tokens); `url` is its root, `client` an HTTP
    client on it, and everything it prints goes to `log`."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log: Path, ready_status: int = 200,
                 start_within_s: float = 120):
        self.command, self.env, self.port, self.log, self.ready_status = command, env, port, log, ready_status
        self.url = f"http://127.0.0.1:{port}"
        self.start_within_s = start_within_s

    @classmethod
    def over(cls, root: Path, regions_file: Path, lancedb_uri: Path) -> "ExplorerServer":
        """`tessera serve` on this machine only, over the data under `root`."""
        port = free_port()
        env = dict(os.environ, TESSERA_HOME=str(root), TESSERA_REGIONS=str(regions_file),
                   TESSERA_LANCEDB_URI=str(lancedb_uri), TESSERA_DEPLOYMENT="local")
        env.pop("TESSERA_EMBEDDINGS_TILES", None)
        command = [sys.executable, "-m", "tessera_assets.cli", "serve", "--port", str(port)]
        return cls(command, env, port, Path(root) / "logs" / f"explorer-{port}.log")

    def output(self) -> str:
        """What the server printed so far (its last 4,000 characters)."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def __enter__(self) -> "ExplorerServer":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=Path(__file__).resolve().parents[2],
                                            stdout=log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + self.start_within_s
        status = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.client.close()
                raise RuntimeError(f"tessera serve exited ({self.process.returncode}): {self.output()}")
            try:
                status = self.client.get("/api/regions").status_code
                if status == self.ready_status:
                    return self
                time.sleep(0.2)
            except httpx.TransportError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"tessera serve did not answer {self.ready_status} within {self.start_within_s:.0f} s "
                           f"(last: {status or 'no answer'}): {self.output()}")

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
