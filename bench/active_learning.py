"""Suggested labels against random picks: a labeller simulated with the demo's ground truth; prints JSON.

    .venv/bin/python bench/active_learning.py [--home .tessera] [--region demo] [--year 2022] [--seeds 5]
        [--batch 8] [--rounds 40] [--head <model.fewshot.DEFAULT_HEAD>] [--spacing 5] [--tolerance 0.02]

Needs the demo's embeddings partition and ground truth (`make demo`): `<home>/data/embeddings/<year>/<region>`
and `<home>/data/demo_catalog/ground_truth/<region>/[<year>/]classes.tif` (uint8 class ids, names in
its tags). Nothing is written.

Each seed: a labeller starts with one label per class (a random pixel of each), then adds `--batch`
labels a round for `--rounds` rounds, the ground truth giving each its class. The picks are either
`model.suggest` on the head fitted so far (from a random sample of `--candidates` unlabelled pixels,
as the explorer scores a sample of its displayed ones, with the explorer's default spacing) or
random unlabelled pixels; both start from the same labels. After every round the head is fitted
again and scored on a fixed random sample of `--eval` pixels, less those labelled by then. The
reference, measured in the same run and seed, is the head fitted on `--reference` random labelled
pixels; the answer is how many labels each method needs to come within `--tolerance` of it, mean
and sd over the seeds that got there, with the accuracy curves.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from model.fewshot import DEFAULT_HEAD, HEADS, Classifier  # noqa: E402
from model.quantise import dequantise  # noqa: E402
from model.suggest import MIN_PER_CLASS, suggest  # noqa: E402
from resources.scenes.demo_catalog import CLASS_NAMES  # noqa: E402
from resources.storage.data_root import TesseraStorage  # noqa: E402

METHODS = ("suggested", "random")


class Pixels:
    """The partition's labelled-to-be pixels: embeddings, grid positions and true class names."""

    def __init__(self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, truth: np.ndarray):
        self.x, self.rows, self.cols, self.truth = x, rows, cols, truth

    def __len__(self) -> int:
        return len(self.truth)


def ground_truth_path(data: Path, region: str, year: int) -> Path:
    """The classes raster of the region's ground truth: of the year where the catalog keeps one per
    year, else the region's one."""
    folder = data / "demo_catalog" / "ground_truth" / region
    for candidate in (folder / str(year) / "classes.tif", folder / "classes.tif"):
        if candidate.exists():
            return candidate
    sys.exit(f"no ground truth classes.tif under {folder}: run `make demo` first")


def load(home: Path, year: int, region: str) -> Pixels:
    """Every pixel with an embedding and a true class, the embeddings dequantised."""
    data = home / "data"
    partition = TesseraStorage(root=str(data)).open_embeddings(year, region)
    q, scales = partition.read()
    with rasterio.open(ground_truth_path(data, region, year)) as src:
        classes = src.read(1)
        tags = src.tags()
    if classes.shape != scales.shape:
        sys.exit(f"the ground truth is {classes.shape}, the embeddings {scales.shape}: not one grid")
    names = {k: tags.get(f"class_{k}", CLASS_NAMES.get(k, str(k))) for k in np.unique(classes) if k > 0}
    rows, cols = np.nonzero(np.isfinite(scales) & (classes > 0))
    truth = np.array([names[k] for k in classes[rows, cols]])
    return Pixels(dequantise(q[rows, cols], scales[rows, cols]), rows, cols, truth)


def accuracy(pixels: Pixels, labelled: np.ndarray, scored: np.ndarray, head: str, seed: int) -> tuple[float, Classifier]:
    """The head fitted on `labelled`, scored on `scored` less the labelled pixels."""
    model = Classifier(head).fit(pixels.x[labelled], pixels.truth[labelled], seed=seed)
    test = scored[~np.isin(scored, labelled)]
    return float(np.mean(model.predict(pixels.x[test]) == pixels.truth[test])), model


def first_labels(pixels: Pixels, rng: np.random.Generator) -> np.ndarray:
    """One random pixel of every class."""
    return np.array([rng.choice(np.flatnonzero(pixels.truth == name)) for name in np.unique(pixels.truth)])


def pick(method: str, pixels: Pixels, labelled: np.ndarray, model: Classifier, args, rng: np.random.Generator,
         seed: int) -> np.ndarray:
    """The next batch: random unlabelled pixels, or `model.suggest` over a random sample of them."""
    unlabelled = np.setdiff1d(np.arange(len(pixels)), labelled)
    if method == "random":
        return rng.choice(unlabelled, args.batch, replace=False)
    candidates = rng.choice(unlabelled, min(args.candidates, len(unlabelled)), replace=False)
    proba = model.predict_proba(pixels.x[candidates])
    counts = np.array([np.sum(pixels.truth[labelled] == c) for c in model.classes])
    chosen = suggest(proba, pixels.x[candidates], pixels.rows[candidates], pixels.cols[candidates], args.batch,
                     labelled=np.stack([pixels.rows[labelled], pixels.cols[labelled]], axis=1),
                     labelled_embeddings=pixels.x[labelled], min_spacing_px=args.spacing,
                     class_counts=counts, min_per_class=args.min_per_class, seed=seed)
    return candidates[chosen]


def run_seed(pixels: Pixels, args, seed: int) -> dict:
    """The reference and both methods' curves for one seed."""
    rng = np.random.default_rng(seed)
    scored = rng.choice(len(pixels), min(args.eval, len(pixels)), replace=False)
    reference_set = rng.choice(len(pixels), min(args.reference, len(pixels)), replace=False)
    reference, _ = accuracy(pixels, reference_set, scored, args.head, seed)
    start = first_labels(pixels, rng)
    out = {"seed": seed, "reference_accuracy": round(reference, 4)}
    for m, method in enumerate(METHODS):
        method_rng = np.random.default_rng([seed, m])
        labelled, curve = start.copy(), {"labels": [], "accuracy": []}
        for round_ in range(args.rounds + 1):
            score, model = accuracy(pixels, labelled, scored, args.head, seed)
            curve["labels"].append(len(labelled))
            curve["accuracy"].append(round(score, 4))
            if round_ < args.rounds:
                labelled = np.concatenate([labelled, pick(method, pixels, labelled, model, args, method_rng,
                                                          seed * 1000 + round_)])
        reached = [n for n, score in zip(*curve.values()) if score >= reference - args.tolerance]
        out[method] = {"labels_needed": reached[0] if reached else None, "curve": curve}
    return out


def summary(runs: list[dict], method: str) -> dict:
    """Labels needed over the seeds that got within the tolerance, and the mean curve."""
    needed = [r[method]["labels_needed"] for r in runs if r[method]["labels_needed"] is not None]
    curves = np.array([r[method]["curve"]["accuracy"] for r in runs])
    return {"labels_needed_mean": round(float(np.mean(needed)), 1) if needed else None,
            "labels_needed_sd": round(float(np.std(needed)), 1) if needed else None,
            "reached": f"{len(needed)}/{len(runs)}",
            "labels_needed": [r[method]["labels_needed"] for r in runs],
            "mean_curve": {"labels": runs[0][method]["curve"]["labels"],
                           "accuracy": [round(float(a), 4) for a in curves.mean(0)]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=os.environ.get("TESSERA_HOME", ".tessera"))
    parser.add_argument("--region", default="demo")
    parser.add_argument("--year", type=int, default=2022)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="labels added a round")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--head", default=DEFAULT_HEAD, choices=HEADS)
    parser.add_argument("--spacing", type=float, default=5.0, help="pixels between suggestions (the explorer's default)")
    parser.add_argument("--min-per-class", type=int, default=MIN_PER_CLASS,
                        help="labels of each class that suggestions make sure of (0: uncertainty and diversity alone)")
    parser.add_argument("--candidates", type=int, default=20_000, help="unlabelled pixels scored for suggestions a round")
    parser.add_argument("--eval", type=int, default=20_000, help="pixels in the fixed scoring sample")
    parser.add_argument("--reference", type=int, default=2000, help="random labels of the all-labels reference")
    parser.add_argument("--tolerance", type=float, default=0.02, help="accuracy below the reference still counted")
    args = parser.parse_args()
    started = time.perf_counter()
    pixels = load(Path(args.home).resolve(), args.year, args.region)
    runs = [run_seed(pixels, args, seed) for seed in range(args.seeds)]
    references = [r["reference_accuracy"] for r in runs]
    methods = {m: summary(runs, m) for m in METHODS}
    pairs = [(r["suggested"]["labels_needed"], r["random"]["labels_needed"]) for r in runs]
    report = json.dumps({
        "partition": f"{args.region}|{args.year}", "pixels": len(pixels), "classes": len(np.unique(pixels.truth)),
        "head": args.head, "batch": args.batch, "rounds": args.rounds, "spacing_px": args.spacing,
        "min_per_class": args.min_per_class,
        "tolerance": args.tolerance, "reference_labels": args.reference,
        "reference_accuracy_mean": round(float(np.mean(references)), 4),
        "reference_accuracy_sd": round(float(np.std(references)), 4),
        # a seed where a method never got there counts as needing more than the run gave it
        "suggested_fewer_in_seeds": sum((s if s is not None else np.inf) < (r if r is not None else np.inf)
                                        for s, r in pairs),
        "methods": methods, "runs": runs, "seconds": round(time.perf_counter() - started, 1),
    }, indent=1)
    print(re.sub(r"\[[^\[\]{}]*\]", lambda m: re.sub(r"\s+", " ", m.group(0)), report))  # a list of numbers: one line


if __name__ == "__main__":
    main()
