"""Where products live on disk, and the one way every partition is written: into a temporary
folder that is moved into place only when complete, so readers never see half a partition and a
failed run leaves the previous result whole."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from dagster import ConfigurableResource
from rasterio.crs import CRS
from rasterio.windows import Window

from resources.errors import RawPartitionMissingError
from resources.regions import RegionGrid

INDEX_FILE = "index.json"


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `final`; on success it replaces `final`, on error it vanishes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}-tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = final.with_name(f".{final.name}-old-{uuid.uuid4().hex[:8]}")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TesseraStorage(ConfigurableResource):
    """The data root: raw partitions, embeddings, the demo catalog."""

    root: str = ".tessera/data"

    def path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)

    def raw_dir(self, sensor: str, year: int, region: str) -> Path:
        return self.path("raw", sensor, str(year), region)

    def open_raw(self, sensor: str, year: int, region: str) -> "RawPartition":
        folder = self.raw_dir(sensor, year, region)
        if not (folder / INDEX_FILE).exists():
            raise RawPartitionMissingError(
                f"{sensor}_raw for year {year}, region {region!r} is not materialised (looked in {folder})"
            )
        return RawPartition(folder)


def grid_to_json(grid: RegionGrid) -> dict[str, Any]:
    return {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6], "width": grid.width, "height": grid.height}


def grid_from_json(data: dict[str, Any]) -> RegionGrid:
    return RegionGrid(CRS.from_string(data["crs"]), Affine(*data["transform"]), data["width"], data["height"])


@dataclass
class RawPartition:
    """A materialised raw partition: one GeoTIFF per observation (bands + GDAL valid mask), and an index."""

    folder: Path

    @property
    def index(self) -> dict[str, Any]:
        if not hasattr(self, "_index"):
            self._index = json.loads((self.folder / INDEX_FILE).read_text())
        return self._index

    @property
    def grid(self) -> RegionGrid:
        return grid_from_json(self.index["grid"])

    @property
    def observations(self) -> list[dict[str, Any]]:
        return self.index["observations"]

    @property
    def doy(self) -> np.ndarray:
        return np.array([o["doy"] for o in self.observations], np.int16)

    def read_block(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Values (T, bands, h, w) and valid mask (T, h, w) of every observation in a window."""
        count = len(self.index["bands"])
        values = np.zeros((len(self.observations), count, int(window.height), int(window.width)), self.index["dtype"])
        valid = np.zeros((len(self.observations), int(window.height), int(window.width)), bool)
        for t, obs in enumerate(self.observations):
            with rasterio.open(self.folder / obs["file"]) as src:
                values[t] = src.read(window=window)
                valid[t] = src.read_masks(1, window=window) > 0
        return values, valid

    def valid_count(self) -> np.ndarray:
        with rasterio.open(self.folder / "valid_count.tif") as src:
            return src.read(1)
