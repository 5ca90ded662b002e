""""Find changes like this one": the change at a pixel (how its embedding moved since the
reference year) compared with the change of every changed pixel of the change maps, ranked by
patch. A cleared wood finds other clearings, not new houses, although both are "changed"."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from rasterio.windows import Window

from model.quantise import dequantise, unit_rows
from resources.errors import PartitionNotMaterialisedError, SearchError
from resources.labels import LabelFeature, pixels_of
from resources.regions import PartitionId
from resources.storage.data_root import TesseraStorage

CHANGE_INFO = "change.json"


def _fetch(storage: TesseraStorage, year: int, region: str, name: str):
    try:
        return storage.fetch("change", str(year), region, name)
    except PartitionNotMaterialisedError as exc:
        raise SearchError(f"no change map of {PartitionId(year, region)}: materialise change_map for it first") from exc


def _change_vectors(storage: TesseraStorage, year: int, region: str, rows: np.ndarray, cols: np.ndarray,
                    window: Window | None = None) -> tuple[np.ndarray, str]:
    """unit(embedding this year) - unit(embedding in the reference year) at the given pixels (of
    `window`, when given), and the encoder of both; refused when the embeddings were re-made by
    another encoder since the change map was."""
    info = json.loads(_fetch(storage, year, region, CHANGE_INFO).read_text())
    vectors = []
    for y in (info["reference_year"], year):
        partition = storage.open_embeddings(y, region)
        if partition.encoder_id != info["encoder_id"]:
            raise SearchError(f"the embeddings of {PartitionId(y, region)} are now of encoder {partition.encoder_id}, "
                              f"the change map of {info['encoder_id']}: materialise change_map again")
        q, scales = partition.read(window)
        vectors.append(unit_rows(dequantise(q[rows, cols], scales[rows, cols])))
    return vectors[1] - vectors[0], info["encoder_id"]


def similar_changes(storage: TesseraStorage, year: int, region: str, lon: float, lat: float, k: int = 10,
                    regions: list[str] | None = None) -> list[dict]:
    """The `k` changed patches (of `regions`' change maps of `year`, default the query's region)
    whose change is most like the change at (lon, lat): GeoJSON features with `similarity`, the
    mean cosine of their pixels' change vectors to the query's."""
    grid = storage.open_embeddings(year, region).grid
    row, col = pixels_of(LabelFeature("query", {"type": "Point", "coordinates": [lon, lat]}, year, 0, "query"), grid)
    if len(row) == 0:
        raise SearchError(f"({lon}, {lat}) is outside region {region}")
    query, encoder_id = _change_vectors(storage, year, region, np.array([0]), np.array([0]),
                                        Window(int(col[0]), int(row[0]), 1, 1))
    query = query[0]
    if not np.isfinite(query).all():
        raise SearchError(f"({lon}, {lat}) has no embedding in {year} or in the reference year")
    found = []
    for other in regions or [region]:
        with rasterio.open(_fetch(storage, year, other, "patch_ids.tif")) as src:
            ids = src.read(1)
        patches = {f["properties"]["patch"]: f for f in
                   json.loads(_fetch(storage, year, other, "patches.geojson").read_text())["features"]}
        rows, cols = np.nonzero(ids > 0)
        if len(rows) == 0:
            continue
        vectors, other_encoder = _change_vectors(storage, year, other, rows, cols)
        if other_encoder != encoder_id:
            raise SearchError(f"the change maps of {region} and {other} were made with different encoders "
                              f"({encoder_id}, {other_encoder}): their changes cannot be compared")
        cosine = np.nan_to_num(unit_rows(vectors) @ unit_rows(query), nan=0.0)
        owner = ids[rows, cols]
        sums = np.bincount(owner, weights=cosine, minlength=ids.max() + 1)
        counts = np.bincount(owner, minlength=ids.max() + 1)
        for patch in np.unique(owner):
            feature = patches.get(int(patch))
            if feature is not None:
                found.append({**feature, "properties": {**feature["properties"], "region": other, "year": year,
                                                        "similarity": round(float(sums[patch] / counts[patch]), 4)}})
    return sorted(found, key=lambda f: -f["properties"]["similarity"])[:k]
