"""The demo's few-shot margin for one pretraining setting: pretrain the demo encoder, embed the
labelled partition and run the few-shot protocol, as `make demo` does; prints JSON.

    .venv/bin/python bench/fewshot_margin.py [--steps 400] [--learning-rate 2e-3] [--seeds 0 1 2] [--batch-size 128]

Needs the demo's raw partitions (`make demo`). Everything is written into a fresh temporary data
root that links to them, so the demo's own encoder and partitions are untouched. The seed moves the
margin more than the training length does, so compare settings over several seeds: with several
`--seeds` it prints each seed's figures and, per k, the range (min, max) over them, which is what the
README reports (a CPU of another kind moves the figures within about that range too: its matrix
kernels round differently).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from dagster import AssetMaterialization, instance_for_test, materialize  # noqa: E402

from resources.compute import ComputeDevice  # noqa: E402
from resources.labels import LabelSource  # noqa: E402
from resources.regions import RegionCatalog  # noqa: E402
from resources.storage.data_root import TesseraStorage  # noqa: E402
from tessera_assets.embeddings.assets import embeddings, encoder_checkpoint  # noqa: E402
from tessera_assets.fewshot.assets import fewshot_classifier, fewshot_samples  # noqa: E402
from tessera_assets.partitions import year_region_key  # noqa: E402


def measure(args, seed: int, data: Path, labels: Path) -> dict:
    """One seed: pretrain, embed the labelled partition, run the few-shot protocol."""
    with tempfile.TemporaryDirectory() as tmp, instance_for_test() as instance:
        (Path(tmp) / "raw").symlink_to(data / "raw")
        resources = {"storage": TesseraStorage(root=tmp), "regions": RegionCatalog(path=str(ROOT / "regions.yaml")),
                     "compute": ComputeDevice(), "label_source": LabelSource(path=str(labels))}
        storage = resources["storage"]
        partitions = storage.raw_partitions()
        instance.add_dynamic_partitions("region", sorted({region for _, region in partitions}))
        for year, region in partitions:  # the demo's raw partitions, recorded in this throwaway instance
            for sensor in ("s2_raw", "s1_raw"):
                instance.report_runless_asset_event(AssetMaterialization(sensor, partition=year_region_key(year, region)))
        started = time.perf_counter()
        train = {"steps": args.steps, "learning_rate": args.learning_rate, "seed": seed,
                 "batch_size": args.batch_size, "pool_clusters": args.pool_clusters}
        assert materialize([encoder_checkpoint], instance=instance, resources=resources,
                           run_config={"ops": {"encoder_checkpoint": {"config": train}}}).success
        pretrain_s = time.perf_counter() - started
        assert materialize([embeddings], partition_key=year_region_key(args.year, args.region), instance=instance,
                           resources=resources).success
        result = materialize([fewshot_samples, fewshot_classifier], instance=instance, resources=resources,
                             run_config={"ops": {"fewshot_samples": {"config": {"labels_path": str(labels),
                                                                                "year": args.year}}}})
        curves = next(e.event_specific_data.materialization.metadata["curves"].value
                      for e in result.get_asset_materialization_events()
                      if e.event_specific_data.materialization.asset_key.to_user_string() == "fewshot_classifier")
    return {**train, "pretrain_s": round(pretrain_s, 1), **{metric: {
        str(e["k"]): {"embeddings": round(e[metric], 3), "baseline": round(b[metric], 3),
                      "margin": round(e[metric] - b[metric], 3)}
        for e, b in zip(curves["embeddings"], curves["baseline"])} for metric in ("accuracy", "macro_f1")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=".tessera")
    parser.add_argument("--region", default="demo")
    parser.add_argument("--year", type=int, default=2022)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pool-clusters", type=int, default=0, help="EncoderConfig.pool_clusters (0: uniform)")
    args = parser.parse_args()
    data = Path(args.home, "data").resolve()
    labels = data / "demo_catalog" / "ground_truth" / args.region / "labels.geojson"
    if not (data / "raw").is_dir() or not labels.exists():
        sys.exit(f"no demo raw partitions or labels under {data}: run `make demo` first")
    runs = [measure(args, seed, data, labels) for seed in args.seeds]
    if len(runs) == 1:
        print(json.dumps(runs[0], indent=1))
        return
    ranges = {metric: {k: {side: [min(r[metric][k][side] for r in runs), max(r[metric][k][side] for r in runs)]
                           for side in ("embeddings", "baseline", "margin")} for k in runs[0][metric]}
              for metric in ("accuracy", "macro_f1")}
    print(json.dumps({"seeds": args.seeds, "runs": runs, "range": ranges}, indent=1))


if __name__ == "__main__":
    main()
