"""Change statistics on the demo's true changes: how well each tells changed pixels from stable ones,
and how well the change map's calibration sets its threshold; prints JSON.

    .venv/bin/python bench/change_statistics.py [--home .tessera] [--year 2022]

Needs `make demo`: both years' embeddings of every demo region and the catalog's ground truth. For
each region, two statistics of a pixel's two yearly embeddings, each over the change map's 5 x 5
neighbourhood median:
  standardised  - what `change_map` scores (its own function): the change vector (after - before,
                  unit embeddings), each dimension as a robust z-score over the region's pixels
                  (median, MAD), the mean |z|
  cosine        - 1 - cosine of the two embeddings, the change map's statistic before it
Reported per statistic:
  recall_at_true_far   - recall when the threshold is set from the truth so that exactly that share
                         of stable pixels is flagged: how well the statistic separates, free of any
                         calibration
  calibrated           - precision, recall, F1 and the false-alarm rate measured on stable pixels
                         when the threshold is `model.change.calibrate`'s, at the rate asked (0.001),
                         patches under 0.05 ha dropped (`flagged_patches`), as `change_map` does;
                         `false_alarm_rate_beyond_20m` counts only stable pixels more than 2 pixels
                         from a true change (where no 20 m band mixes changed and stable land)
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

from scipy import ndimage  # noqa: E402

from model.change import calibrate, detection_scores, flagged_patches, neighbourhood_median  # noqa: E402
from model.quantise import dequantise, unit_rows  # noqa: E402
from resources.regions import PIXEL_AREA_HA  # noqa: E402
from resources.scenes.demo_catalog import ground_truth_dir  # noqa: E402
from resources.storage.data_root import EmbeddingPartition, TesseraStorage  # noqa: E402
from tessera_assets.change.assets import change_magnitude  # noqa: E402

RATE, NEIGHBOURHOOD, MIN_PATCH_HA = 1e-3, 5, 0.05


def cosine_distance(before: EmbeddingPartition, after: EmbeddingPartition) -> np.ndarray:
    """1 - cosine of each pixel's two embeddings (NaN where a year has none)."""
    vectors = []
    for partition in (before, after):
        q, scales = partition.read()
        unit = np.full(q.shape, np.nan, np.float32)
        valid = np.isfinite(scales)
        unit[valid] = unit_rows(dequantise(q[valid], scales[valid]))
        vectors.append(unit)
    return 1.0 - np.sum(vectors[0] * vectors[1], axis=-1)


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
    beyond = valid & (ndimage.distance_transform_edt(~truth) > 2)
    found["false_alarm_rate_beyond_20m"] = float(np.mean(patch_ids[beyond] > 0))
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
        statistics = {"standardised": change_magnitude(before, after), "cosine": cosine_distance(before, after)}
        result["regions"][region] = {"changed_share": round(float(truth.mean()), 4),
                                     **{name: evaluate(s, truth) for name, s in statistics.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
