"""What assets show in the Dagster UI besides numbers: PNG previews and links into the explorer.

They live here, below every stage, so an asset never imports the explorer (a leaf: it is a client
of the assets' products, not a part of them)."""

import os
from pathlib import Path

from dagster import MetadataValue

from resources.previews import markdown_image


def _base() -> str:
    return os.environ.get("TESSERA_EXPLORER_URL", "http://127.0.0.1:8765").rstrip("/")


def explorer_url(year: int, region: str) -> str:
    """Where the explorer shows a partition (TESSERA_EXPLORER_URL, by default the local server)."""
    return f"{_base()}/#year={year}&region={region}"


def preview_metadata(key: str, png: Path, parts: tuple[str, ...], alt: str) -> dict[str, MetadataValue]:
    """A PNG for the Dagster UI, written into the partition `parts` under its own name: its thumbnail
    inline under `key`, and under `{key}_full` a link to the full-size file by its path in the data
    root (`raw/s2/2022/demo/preview.png`), which the explorer serves from the partition's current
    version, on a local disk or an object store."""
    published = "/".join((*parts, png.name))
    return {key: markdown_image(png, alt), f"{key}_full": MetadataValue.url(f"{_base()}/files/{published}")}
