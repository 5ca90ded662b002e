"""The `tessera` command line: the demo pipeline and region management.

Runs go through a real, persistent Dagster instance (DAGSTER_HOME, by default `.tessera/dagster`),
so whatever the CLI materialises shows up in `dagster dev` with its metadata.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, materialize

from resources.demo_catalog import DEFAULT_YEARS, ensure_demo_catalog
from resources.errors import TesseraError
from resources.geotessera_export import export_partition
from resources.regions import Region, validate_year
from tessera_assets.embeddings.assets import embeddings, encoder_checkpoint
from tessera_assets.partitions import region_partitions, year_region_key
from tessera_assets.raw.assets import s1_raw, s2_raw
from tessera_assets.resources_by_deployment import build_resources, tessera_home

# Each stage is materialised for every demo partition (or once, if unpartitioned) before the next.
PIPELINE_STAGES = [[s2_raw, s1_raw], [encoder_checkpoint], [embeddings]]
INSTANCE_CONFIG = """\
# Written by `tessera`: runs queue, and GPU steps (pool "gpu") run one at a time.
concurrency:
  pools:
    default_limit: 1
"""


def dagster_instance() -> DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(tessera_home(), "dagster").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(INSTANCE_CONFIG)
    return DagsterInstance.get()


def seed_region_partitions(instance: DagsterInstance, regions: list[Region]) -> None:
    known = set(instance.get_dynamic_partitions(region_partitions.name))
    missing = [r.name for r in regions if r.name not in known]
    if missing:
        instance.add_dynamic_partitions(region_partitions.name, missing)


def _print_summary(results: dict[tuple[str, str], dict]) -> None:
    encoder = results.get(("encoder_checkpoint", ""))
    if encoder:
        print(f"\nencoder: {encoder.get('preset')} ({encoder.get('parameters'):,} parameters), "
              f"loss {encoder.get('first_loss')} -> {encoder.get('final_loss')} in {encoder.get('seconds')} s")
    header = f"{'partition':<18} {'s2 obs':>6} {'s2 cover':>8} {'s1 obs':>6} {'embedded':>9} {'px/s':>8} {'no-data':>8}"
    print("\n" + header)
    for key in sorted({k for _, k in results if k}):
        s2 = results.get(("s2_raw", key), {})
        s1 = results.get(("s1_raw", key), {})
        emb = results.get(("embeddings", key), {})
        print(f"{key:<18} {s2.get('observations', '-'):>6} {s2.get('coverage_at_least_5', '-'):>8} "
              f"{s1.get('observations', '-'):>6} {emb.get('pixels_embedded', '-'):>9} "
              f"{emb.get('pixels_per_second', '-'):>8} {emb.get('no_data_fraction', '-'):>8}")


def run_demo(years: list[int], region_names: list[str] | None) -> int:
    resources = build_resources("local")
    instance = dagster_instance()
    demo_regions = [r for r in resources["regions"].all() if r.demo]
    chosen = [r for r in demo_regions if region_names is None or r.name in region_names]
    if not chosen:
        raise TesseraError(f"no demo regions selected (demo regions: {', '.join(r.name for r in demo_regions)})")
    seed_region_partitions(instance, chosen)
    started = time.perf_counter()
    ensure_demo_catalog(Path(resources["s2_catalog"].url).parent, demo_regions)
    print(f"demo catalog ready in {time.perf_counter() - started:.1f} s; Dagster instance at {os.environ['DAGSTER_HOME']}")
    results = {}
    for stage in PIPELINE_STAGES:
        keys = [year_region_key(y, r.name) for r in chosen for y in years] if stage[0].partitions_def else [None]
        for key in keys:
            t0 = time.perf_counter()
            result = materialize(stage, partition_key=key, instance=instance, resources=resources)
            if not result.success:
                print(f"FAILED {[a.key.to_user_string() for a in stage]} {key or ''}", file=sys.stderr)
                return 1
            for event in result.get_asset_materialization_events():
                m = event.event_specific_data.materialization
                results[(m.asset_key.to_user_string(), str(key or ""))] = {k: v.value for k, v in m.metadata.items()}
            print(f"{', '.join(a.key.to_user_string() for a in stage)} {key or ''}: {time.perf_counter() - t0:.1f} s")
    _print_summary(results)
    print(f"\ndone in {time.perf_counter() - started:.1f} s; browse with: make dev")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera", description="TESSERA embeddings on Dagster")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="materialise the demo pipeline end to end")
    demo.add_argument("--years", type=int, nargs="+", default=list(DEFAULT_YEARS))
    demo.add_argument("--regions", nargs="+", default=None, help="demo regions to run (default: all)")
    export = commands.add_parser("export", help="write embeddings in the official geotessera tile layout")
    export.add_argument("--year", type=int, required=True)
    export.add_argument("--region", required=True)
    export.add_argument("--out", required=True, help="tile root, as geotessera's embeddings_dir")
    regions = commands.add_parser("regions", help="list or add regions")
    region_commands = regions.add_subparsers(dest="regions_command", required=True)
    region_commands.add_parser("list")
    add = region_commands.add_parser("add")
    add.add_argument("name")
    add.add_argument("--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"), required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo([validate_year(y) for y in args.years], args.regions)
        resources = build_resources()
        catalog = resources["regions"]
        if args.command == "export":
            region = catalog.get(args.region)
            partition = resources["storage"].open_embeddings(validate_year(args.year), region.name)
            tiles = export_partition(partition, args.year, region.bbox, Path(args.out))
            print(f"wrote {len(tiles)} tiles under {args.out}: {', '.join(p.parent.name for p in tiles)}")
        elif args.regions_command == "add":
            region = catalog.add(args.name, args.bbox)
            seed_region_partitions(dagster_instance(), [region])
            grid = region.grid
            print(f"added {region.name}: {grid.crs.to_string()} {grid.width} x {grid.height} px ({region.area_km2():.1f} km2)")
        else:
            for region in catalog.all():
                grid = region.grid
                print(f"{region.name:<20} {' '.join(f'{v:.4f}' for v in region.bbox)}  {grid.crs.to_string()} "
                      f"{grid.width}x{grid.height}{'  (demo)' if region.demo else ''}")
        return 0
    except TesseraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
