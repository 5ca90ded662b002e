"""A labelling session: labels clicked (or drawn) in the explorer, a few-shot head trained on them,
and the class map it makes of a partition.

The labels are kept in a GeoJSON file that `tessera classify` and the `fewshot_samples` asset read
as they are (points or polygons, `label` and `year` properties), so a map made by clicking can be
made again by a Dagster run.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from model.fewshot import HEADS, Classifier
from resources.labelled_samples import gather_samples
from resources.labels import LabelFeature, LabelsError, coordinates, spatial_group
from resources.regions import PartitionId
from resources.storage.atomic import atomic_directory, atomic_file
from resources.storage.data_root import TesseraStorage, write_class_map
from tessera_assets.explorer.layers import class_colours

MAX_LABELS = 5000


@dataclass
class ClassMap:
    """A trained head's map of one partition."""

    year: int
    region: str
    classes: list[str]
    labels: np.ndarray  # uint8, 0 no data, 1 + class index
    confidence: np.ndarray  # float32
    samples: dict[str, int]
    colours: list[str]  # of each class, from the session's palette
    encoder_id: str
    folder: Path  # classes.tif and confidence.tif
    version: int


def _check_geometry(geometry: dict) -> dict:
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind not in ("Point", "Polygon"):
        raise LabelsError(f"a label is a Point or a Polygon, not {kind or 'nothing'}")
    for point in coordinates(geometry):
        if len(point) < 2 or not (-180 <= float(point[0]) <= 180 and -90 <= float(point[1]) <= 90):
            raise LabelsError(f"coordinates {point} are not lon/lat in WGS84")
    if kind == "Polygon" and len(geometry["coordinates"][0]) < 4:
        raise LabelsError("a polygon needs at least three corners and its closing point")
    return {"type": kind, "coordinates": geometry["coordinates"]}


class LabelSession:
    """Labels saved to `path` after every change; one class map per partition once trained."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.features: list[dict] = []
        if self.path.exists():
            self.features = json.loads(self.path.read_text()).get("features", [])
        self._next = 1 + max((int(f.get("id", 0)) for f in self.features), default=0)
        self.maps: dict[tuple[int, str], ClassMap] = {}

    def add(self, label: str, geometry: dict, year: int | None) -> dict:
        label = str(label).strip()
        if not label or len(label) > 64:
            raise LabelsError("a label name is 1 to 64 characters")
        with self._lock:
            if len(self.features) >= MAX_LABELS:
                raise LabelsError(f"a session holds at most {MAX_LABELS} labels: save them and start another")
            feature = {"type": "Feature", "id": self._next, "geometry": _check_geometry(geometry),
                       "properties": {"label": label, **({"year": int(year)} if year else {})}}
            self._next += 1
            self.features.append(feature)
            self._save()
        return feature

    def remove(self, label_id: int) -> None:
        with self._lock:
            kept = [f for f in self.features if int(f["id"]) != int(label_id)]
            if len(kept) == len(self.features):
                raise LabelsError(f"no label {label_id}")
            self.features = kept
            self._save()

    def clear(self) -> None:
        with self._lock:
            self.features = []
            self._save()

    def geojson(self) -> dict:
        return {"type": "FeatureCollection", "features": list(self.features)}

    def colours(self) -> dict[str, str]:
        """Each class of the session in its colour (`class_colours`)."""
        return class_colours(f["properties"]["label"] for f in self.features)

    def _save(self) -> None:
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps(self.geojson()))

    def train(self, storage: TesseraStorage, year: int, region: str, head: str = "logistic") -> ClassMap:
        """Fit the head on the labels of `year` that fall in the partition and map the partition."""
        if head not in HEADS:
            raise LabelsError(f"unknown head {head!r}: choose one of {', '.join(HEADS)}")
        partition = storage.open_embeddings(year, region)
        features = []
        for i, f in enumerate(self.features):
            if f["properties"].get("year", year) != year:
                continue
            feature = LabelFeature(f["properties"]["label"], f["geometry"], year, i, "")
            feature.group = spatial_group(feature)
            features.append(feature)
        # the samples, head and map of the few-shot assets, on this partition's labels
        samples = gather_samples(features, {(year, region): partition})
        counts = samples.class_counts()
        if len(counts) < 2:
            raise LabelsError(f"label pixels of at least two classes in {PartitionId(year, region)} (labelled here: "
                              f"{', '.join(f'{n} ({c})' for n, c in counts.items()) or 'none'})")
        classifier = Classifier(head).fit(samples.x, samples.y)
        folder = storage.local("explorer", "class_maps", str(year)) / region
        with atomic_directory(folder) as tmp:
            write_class_map(partition, classifier.predict_proba, len(classifier.classes), tmp)
        with rasterio.open(folder / "classes.tif") as src:
            labels = src.read(1)
        with rasterio.open(folder / "confidence.tif") as src:
            confidence = src.read(1)
        made = ClassMap(year, region, [str(c) for c in classifier.classes], labels, confidence,
                        counts,
                        [self.colours()[str(c)] for c in classifier.classes], partition.encoder_id, folder,
                        time.time_ns())
        self.maps[(year, region)] = made
        return made
