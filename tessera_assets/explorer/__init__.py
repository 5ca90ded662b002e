"""The map explorer: `tessera serve` (a Starlette app on uvicorn) and its single page."""

import os


def explorer_url(year: int, region: str) -> str:
    """Where the explorer shows a partition (TESSERA_EXPLORER_URL, by default the local server)."""
    base = os.environ.get("TESSERA_EXPLORER_URL", "http://127.0.0.1:8765").rstrip("/")
    return f"{base}/#year={year}&region={region}"
