"""The demo's ground truth against the products: how well change maps find the true changes and
how close the area estimates come to the true areas. Only the demo has a truth to score against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from model.change import detection_scores
from resources.errors import PartitionNotMaterialisedError
from resources.regions import PIXEL_AREA_HA
from resources.scenes.demo_catalog import CLASS_NAMES, ground_truth_dir
from resources.storage.data_root import TesseraStorage


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def change_scores(storage: TesseraStorage, catalog_root: Path, year: int, region: str) -> dict[str, dict[str, float]]:
    """Pixel precision, recall, F1 and false-alarm rate of the change map (and of its raw-input
    baseline, where it was made) against the demo's true change since the year before."""
    truth = _read(ground_truth_dir(catalog_root, region, year) / "change.tif") == 1
    scores = {}
    for name, file in (("embeddings", "changed.tif"), ("baseline", "baseline_changed.tif")):
        try:
            changed = _read(storage.fetch("change", str(year), region, file))
        except PartitionNotMaterialisedError:  # no baseline without raw partitions
            continue
        scores[name] = detection_scores(changed == 1, truth, changed != 255)
    return scores


def true_class_area_ha(catalog_root: Path, year: int, region: str) -> dict[str, float]:
    """Each class's true area in the region (10 m pixels)."""
    classes = _read(ground_truth_dir(catalog_root, region, year) / "classes.tif")
    ids, counts = np.unique(classes[classes > 0], return_counts=True)
    return {CLASS_NAMES[int(i)]: float(n) * PIXEL_AREA_HA for i, n in zip(ids, counts)}
