"""Peak memory of raw ingest and embedding for a demo-sized region and one four times larger; JSON.

    .venv/bin/python bench/memory.py [--checkpoint path/to/encoder.pt]   # default: the demo's current encoder

Each step runs in a fresh process (as Dagster's multiprocess executor runs it), so its peak RSS is
its own. The ratio large/small is what matters: streaming should keep it near 1 while the area is 4x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from model.encoder import TesseraEncoder
from resources.storage.data_root import TesseraStorage

STEP = """
import json, resource, sys, time
from dagster import instance_for_test, materialize
from model.config import preset
from resources.compute import ComputeDevice
from resources.regions import RegionCatalog
from resources.scenes.stac import StacCatalog
from resources.storage.data_root import TesseraStorage
from tessera_assets.embeddings.assets import embeddings
from tessera_assets.partitions import year_region_key
from tessera_assets.raw.assets import s1_raw, s2_raw
home, step = sys.argv[1], sys.argv[2]
catalog = StacCatalog(url=f"{home}/data/demo_catalog/catalog.json", provider="demo")
resources = {"storage": TesseraStorage(root=f"{home}/data"), "regions": RegionCatalog(path=f"{home}/regions.yaml"),
             "s2_catalog": catalog, "s1_catalog": catalog, "compute": ComputeDevice()}
assets = [s2_raw, s1_raw] if step == "raw" else [embeddings]
with instance_for_test() as instance:
    instance.add_dynamic_partitions("region", ["bench"])
    start = time.perf_counter()
    # the kept encoder by id: this throwaway instance has no encoder_checkpoint materialisation
    config = {} if step == "raw" else {"ops": {"embeddings": {"config": {
        "encoder_id": resources["storage"].current_encoder_id()}}}}
    ok = materialize(assets, partition_key=year_region_key(2022, "bench"), instance=instance, resources=resources,
                     run_config=config).success
print(json.dumps({"ok": ok, "seconds": round(time.perf_counter() - start, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def bbox_for(pixels: int, lon: float = 0.08, lat: float = 52.19) -> list[float]:
    """A bbox of about `pixels` x `pixels` 10 m pixels at the demo's latitude."""
    import math

    dlat = pixels * 10 / 111_320
    dlon = pixels * 10 / (111_320 * math.cos(math.radians(lat)))
    return [lon, lat, round(lon + dlon, 6), round(lat + dlat, 6)]


def run(home: Path, pixels: int, checkpoint: Path) -> dict:
    from resources.scenes.demo_catalog import DemoSpec, ensure_demo_catalog
    from resources.regions import RegionCatalog

    (home / "regions.yaml").write_text(yaml.safe_dump({"regions": {"bench": {"bbox": bbox_for(pixels), "demo": True}}}))
    regions = RegionCatalog(path=str(home / "regions.yaml")).all()
    ensure_demo_catalog(home / "data" / "demo_catalog", regions, DemoSpec())
    TesseraStorage(root=str(home / "data")).publish_encoder(TesseraEncoder.from_checkpoint(checkpoint))
    grid = regions[0].grid
    result = {"pixels": grid.width * grid.height, "shape": [grid.height, grid.width]}
    for step in ("raw", "embeddings"):
        out = subprocess.run([sys.executable, "-c", STEP, str(home), step], capture_output=True, text=True, check=True)
        result[step] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", help="encoder checkpoint (default: the current encoder of .tessera)")
    parser.add_argument("--pixels", type=int, default=256, help="side of the small region in pixels")
    args = parser.parse_args()
    if args.checkpoint is None:
        storage = TesseraStorage(root=".tessera/data")
        args.checkpoint = str(storage.encoder_checkpoint(storage.current_encoder_id()))
    started = time.perf_counter()
    report = {}
    for name, side in (("demo_size", args.pixels), ("four_times_area", args.pixels * 2)):
        with tempfile.TemporaryDirectory() as tmp:
            report[name] = run(Path(tmp), side, Path(args.checkpoint))
    for step in ("raw", "embeddings"):
        report[f"{step}_peak_ratio_large_over_small"] = round(
            report["four_times_area"][step]["peak_rss_mb"] / report["demo_size"][step]["peak_rss_mb"], 3)
    report["area_ratio"] = round(report["four_times_area"]["pixels"] / report["demo_size"]["pixels"], 2)
    report["bench_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
