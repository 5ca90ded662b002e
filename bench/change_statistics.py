"""Change statistics on the demo's true changes: how well each tells changed pixels from stable ones,
and how well the change map's calibration sets its threshold; prints JSON.

    .venv/bin/python bench/change_statistics.py [--home .tessera] [--year 2022]

Needs `make demo`: both years' embeddings of every demo region and the catalog's ground truth. For
each region, two statistics of a pixel's two yearly embeddings, each over the change map's 5 x 5
neighbourhood median:
  cosine        - 1 - cosine of the two embeddings: what `change_map` scores (its own function)
  standardised  - the change vector (after - before, unit embeddings), each dimension as a robust
                  z-score over the region's pixels (median, MAD), the mean |z|: a dimension that
                  moves little between years for stable pixels weighs more when it moves
Reported per statistic:
  recall_at_true_far   - recall when the threshold is set from the truth so that exactly that share
                         of stable pixels is flagged: how well the statistic separates, free of any
                         calibration
  calibrated           - precision, recall, F1 and the false-alarm rate measured on stable pixels
                         when the threshold is `model.change.calibrate`'s, at the rate asked (0.001),
                         patches under 0.05 ha dropped (`flagged_patches`), as `change_map` does
Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402

from model.change import MAD_TO_SD, calibrate, detection_scores, flagged_patches, neighbourhood_median  # noqa: E402
from model.quantise import dequantise, unit_rows  # noqa: E402
from resources.regions import PIXEL_AREA_HA  # noqa: E402
from resources.scenes.demo_catalog import ground_truth_dir  # noqa: E402
from resources.storage.data_root import EmbeddingPartition, TesseraStorage  # noqa: E402
from tessera_assets.change.assets import embedding_distance  # noqa: E402

RATE, NEIGHBOURHOOD, MIN_PATCH_HA = 1e-3, 5, 0.05


def unit_vectors(partition: EmbeddingPartition) -> np.ndarray:
    """(h, w, dim) unit embeddings, NaN where there is none."""
    q, scales = partition.read()
    vectors = np.full(q.shape, np.nan, np.float32)
    valid = np.isfinite(scales)
    vectors[valid] = unit_rows(dequantise(q[valid], scales[valid]))
    return vectors


def standardised_change(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Mean |robust z| over the dimensions of each pixel's change vector (NaN where a year has none)."""
    change = (after - before).reshape(-1, before.shape[-1])
    valid = np.isfinite(change).all(axis=1)
    centre = np.median(change[valid], axis=0)
    spread = np.median(np.abs(change[valid] - centre), axis=0) * MAD_TO_SD + 1e-6
    out = np.full(len(change), np.nan, np.float32)
    out[valid] = np.mean(np.abs((change[valid] - centre) / spread), axis=1)
    return out.reshape(before.shape[:-1])


def evaluate(statistic: np.ndarray, truth: np.ndarray) -> dict:
    smoothed = neighbourhood_median(statistic.astype(np.float32), NEIGHBOURHOOD)
    valid = np.isfinite(smoothed)
    stable = np.sort(smoothed[valid & ~truth])
    recall = {str(far): round(float(np.mean(smoothed[valid & truth] > stable[int(len(stable) * (1 - far))])), 3)
              for far in (1e-3, 1e-2)}
    calibration = calibrate(smoothed, RATE)
    score = calibration.score(smoothed)
    patch_ids, _ = flagged_patches(score, calibration.threshold, max(1, int(round(MIN_PATCH_HA / PIXEL_AREA_HA))))
    found = detection_scores(patch_ids > 0, truth, valid)
    return {"recall_at_true_far": recall, "calibrated": {k: round(v, 4) for k, v in found.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".tessera")
    parser.add_argument("--year", type=int, default=2022)
    args = parser.parse_args()
    storage = TesseraStorage(root=str(args.home / "data"))
    catalog = args.home / "data" / "demo_catalog"
    result: dict = {"year": args.year, "reference_year": args.year - 1, "false_alarm_rate_asked": RATE, "regions": {}}
    for truth_dir in sorted((catalog / "ground_truth").iterdir()):
        region = truth_dir.name
        with rasterio.open(ground_truth_dir(catalog, region, args.year) / "change.tif") as src:
            truth = src.read(1) == 1
        before, after = storage.open_embeddings(args.year - 1, region), storage.open_embeddings(args.year, region)
        statistics = {"cosine": embedding_distance(before, after),
                      "standardised": standardised_change(unit_vectors(before), unit_vectors(after))}
        result["regions"][region] = {"changed_share": round(float(truth.mean()), 4),
                                     **{name: evaluate(s, truth) for name, s in statistics.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
