"""A labelling session: labels clicked (or drawn) in the explorer, a few-shot head trained on them,
the class map it makes of a partition, and the pixels worth labelling next under that head
(`model.suggest`), which a click turns into ordinary labels.

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
from rasterio.warp import transform as warp_transform

from model.fewshot import HEADS, Classifier
from model.quantise import dequantise
from model.suggest import MIN_PER_CLASS, suggest as suggest_pixels, uncertainty
from resources.labelled_samples import gather_samples
from resources.labels import LabelFeature, LabelsError, coordinates, pixels_of, spatial_group
from resources.regions import PartitionId, RegionGrid
from resources.storage.atomic import atomic_directory, atomic_file
from resources.storage.data_root import TesseraStorage, write_class_map
from tessera_assets.explorer.layers import class_colours

MAX_LABELS = 5000
TOP_CLASSES = 3  # the likeliest classes a suggestion names


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
    classifier: Classifier | None = None  # the fitted head: what suggestions ask
    sample_vectors: np.ndarray | None = None  # the embeddings it was fitted on: suggestions go elsewhere


@dataclass
class Candidates:
    """Pixels a suggestion may be, on the partition's full grid, with their embeddings."""

    rows: np.ndarray
    cols: np.ndarray
    vectors: np.ndarray  # float32 (N, D)


def suggestion_candidates(q: np.ndarray, scales: np.ndarray, grid: RegionGrid, limit: int, seed: int) -> Candidates:
    """The valid pixels of the displayed vectors (`Layers.display_vectors`, already in memory),
    at most `limit` of them drawn with `seed`, each placed on the full-resolution pixel under its
    centre. Why a sample: a head scores tens of thousands of pixels in milliseconds, a whole
    large partition in seconds; the picks need only enough candidates to find uncertain places."""
    h, w = scales.shape
    valid = np.flatnonzero(np.isfinite(scales))
    if len(valid) > limit:
        valid = np.sort(np.random.default_rng(seed).choice(valid, limit, replace=False))
    i, j = np.divmod(valid, w)
    rows = np.minimum(((i + 0.5) * grid.height / h).astype(np.int64), grid.height - 1)
    cols = np.minimum(((j + 0.5) * grid.width / w).astype(np.int64), grid.width - 1)
    return Candidates(rows, cols, dequantise(q.reshape(h * w, -1)[valid], scales.reshape(-1)[valid]))


def pixel_lonlat(grid: RegionGrid, rows: np.ndarray, cols: np.ndarray) -> list[tuple[float, float]]:
    """Lon/lat of pixel centres: a label put there falls on that very pixel."""
    if len(rows) == 0:
        return []
    xs, ys = rasterio.transform.xy(grid.transform, rows, cols)
    lon, lat = warp_transform(grid.crs, "EPSG:4326", list(np.atleast_1d(xs)), list(np.atleast_1d(ys)))
    return list(zip(lon, lat))


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
        # the samples, head and map of the few-shot assets, on this partition's labels
        samples = gather_samples(self._features(year), {(year, region): partition})
        counts = samples.class_counts()
        if len(counts) < 2:
            raise LabelsError(f"label pixels of at least two classes in {PartitionId(year, region)} (labelled here: "
                              f"{', '.join(f'{n} ({c})' for n, c in counts.items()) or 'none'})")
        classifier = Classifier(head).fit(samples.x, samples.y, unlabelled=samples.unlabelled_x)
        folder = storage.local("explorer", "class_maps", str(year)) / region
        with atomic_directory(folder) as tmp:
            write_class_map(partition, classifier.predict_proba, list(classifier.classes), tmp)
        with rasterio.open(folder / "classes.tif") as src:
            labels = src.read(1)
        with rasterio.open(folder / "confidence.tif") as src:
            confidence = src.read(1)
        made = ClassMap(year, region, [str(c) for c in classifier.classes], labels, confidence,
                        counts,
                        [self.colours()[str(c)] for c in classifier.classes], partition.encoder_id, folder,
                        time.time_ns(), classifier, samples.x)
        self.maps[(year, region)] = made
        return made

    def _features(self, year: int) -> list[LabelFeature]:
        """The session's labels of `year` (and those without a year) as the labels readers make them."""
        features = []
        for i, f in enumerate(list(self.features)):
            if f["properties"].get("year", year) != year:
                continue
            feature = LabelFeature(f["properties"]["label"], f["geometry"], year, i, "")
            feature.group = spatial_group(feature)
            features.append(feature)
        return features

    def labelled_positions(self, grid: RegionGrid, year: int) -> np.ndarray:
        """(row, col) of every pixel the session's labels of `year` cover on a grid, (M, 2): labels
        made since the last train count too, so a suggestion just labelled is not suggested again."""
        found = [np.stack(pixels_of(f, grid), axis=1) for f in self._features(year)]
        return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), np.int64)

    def suggest(self, made: ClassMap, candidates: Candidates, grid: RegionGrid, count: int, spacing_px: float,
                seed: int) -> list[dict]:
        """The pixels to label next (`model.suggest`): uncertain under the trained head, far from
        the labels and from each other on the map and in embedding space, and some of the
        classes with fewest labels; each with its lon/lat, its likeliest classes and its
        uncertainty (the margin, 1 = a tie)."""
        if made.classifier is None:
            raise LabelsError(f"the class map of {PartitionId(made.year, made.region)} has no head: train again")
        proba = made.classifier.predict_proba(candidates.vectors)
        picked = suggest_pixels(proba, candidates.vectors, candidates.rows, candidates.cols, count,
                                labelled=self.labelled_positions(grid, made.year),
                                labelled_embeddings=made.sample_vectors, min_spacing_px=spacing_px,
                                class_counts=np.array([made.samples.get(name, 0) for name in made.classes]),
                                min_per_class=MIN_PER_CLASS, seed=seed)
        margin = uncertainty(proba[picked])
        rows, cols = candidates.rows[picked], candidates.cols[picked]
        return [{"lon": lon, "lat": lat, "row": int(r), "col": int(c), "uncertainty": float(u),
                 "classes": [{"name": made.classes[k], "probability": float(p[k])}
                             for k in np.argsort(-p, kind="stable")[:TOP_CLASSES]]}
                for (lon, lat), r, c, u, p in zip(pixel_lonlat(grid, rows, cols), rows, cols, margin, proba[picked])]
