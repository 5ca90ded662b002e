"""`OfficialTiles`: the resource that reads official TESSERA embeddings, from whichever layout is on
disk: geotessera's tile root (`.npy` tiles per 0.1 degree) or its Zarr store (one group per UTM zone).
It sits above both readers, so neither imports the other."""

from __future__ import annotations

from dagster import ConfigurableResource

from resources.official.tiles import Dataset, TileRoot
from resources.official.zarr_store import ZarrStore, is_zarr_store


class OfficialTiles(ConfigurableResource):
    """Official embeddings on local disk, as geotessera downloads them (its `embeddings_dir`): with
    this resource, `embeddings` partitions are read from the tiles instead of computed."""

    root: str
    dataset_version: str | None = None  # e.g. 1.1; needed when the root has no tessera_metadata.json
    dataset_variant: str | None = None  # checked against tessera_metadata.json when given

    def open(self) -> tuple[TileRoot | ZarrStore, Dataset]:
        """The tile root, or the Zarr store (a `.zarr` path, or a folder holding `zarr.json`)."""
        source = ZarrStore(self.root) if is_zarr_store(self.root) else TileRoot(self.root)
        return source, source.dataset(self.dataset_version, self.dataset_variant)
