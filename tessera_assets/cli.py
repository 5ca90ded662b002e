"""The `tessera` command line: the demo pipeline and region management.

Runs go through a real, persistent Dagster instance (DAGSTER_HOME, by default `.tessera/dagster`),
so whatever the CLI materialises shows up in `dagster dev` with its metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
from dagster import DagsterInstance, materialize

from model.errors import ModelError
from resources.demo_catalog import DEFAULT_YEARS, ensure_demo_catalog, ground_truth_dir
from resources.errors import TesseraError
from resources.geotessera_export import export_partition
from resources.similarity import SearchFilter, Similarity, write_results
from resources.regions import Region, validate_year
from tessera_assets.embeddings.assets import embeddings, encoder_checkpoint
from tessera_assets.fewshot.assets import fewshot_classifier, fewshot_samples, land_cover_map
from tessera_assets.partitions import region_partitions, year_region_key
from tessera_assets.raw.assets import s1_raw, s2_raw
from tessera_assets.vectors.assets import embedding_table, load_queries, similarity_map
from tessera_assets.resources_by_deployment import build_resources, tessera_home

# Each stage is materialised for every demo partition (or once, if unpartitioned) before the next.
PIPELINE_STAGES = [[s2_raw, s1_raw], [encoder_checkpoint], [embeddings], [embedding_table], [similarity_map],
                   [fewshot_samples, fewshot_classifier], [land_cover_map]]
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


def _example_search(resources: dict, regions: list[Region], year: int) -> None:
    """The first saved query, searched in its own region and year: what a user would try first."""
    queries = load_queries("queries.yaml")
    if not queries:
        return
    name, spec = next(iter(sorted(queries.items())))
    similarity = Similarity(resources["vectors"])
    query, origin = similarity.vector_at(spec["lon"], spec["lat"], spec["year"])
    results = similarity.search(query, k=10, filters=SearchFilter(years=[year]))
    print(f"\nexample search: the 10 pixels of {year} most like '{name}' ({spec['lon']}, {spec['lat']}, {spec['year']})")
    print_results(results)
    home = Path(tessera_home())
    written = write_results(results, str(home / f"search_{name}.geojson"))
    png = resources["storage"].path("similarity", str(year), origin["region"], f"{name}.png")
    print(f"results: {written}; similarity map: {png}")


def _fewshot_report(results: dict, resources: dict, region: str, year: int) -> None:
    classifier = results.get(("fewshot_classifier", ""))
    if not classifier:
        return
    print(f"\nfew-shot ({classifier['head']} head, {classifier['samples']} labelled pixels, {classifier['draws']} draws a k):")
    print(classifier["scores"])
    print(f"class map: {resources['storage'].path('land_cover', str(year), region, 'classes.png')}")


def _print_summary(results: dict[tuple[str, str], dict]) -> None:
    encoder = results.get(("encoder_checkpoint", ""))
    if encoder:
        print(f"\nencoder: {encoder.get('preset')} ({encoder.get('family')}, {encoder.get('parameters'):,} parameters), "
              f"loss {encoder.get('first_loss')} -> {encoder.get('final_loss')} in {encoder.get('seconds')} s; "
              f"id {encoder.get('encoder_id')}")
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
    labels = ground_truth_dir(Path(resources["s2_catalog"].url).parent, chosen[0].name) / "labels.geojson"
    run_configs = {"fewshot_samples": {"ops": {"fewshot_samples": {"config": {
        "labels_path": str(labels), "year": max(years)}}}}}
    for stage in PIPELINE_STAGES:
        keys = [year_region_key(y, r.name) for r in chosen for y in years] if stage[0].partitions_def else [None]
        for key in keys:
            t0 = time.perf_counter()
            result = materialize(stage, partition_key=key, instance=instance, resources=resources,
                                 run_config=run_configs.get(stage[0].key.to_user_string(), {}))
            if not result.success:
                print(f"FAILED {[a.key.to_user_string() for a in stage]} {key or ''}", file=sys.stderr)
                return 1
            for event in result.get_asset_materialization_events():
                m = event.event_specific_data.materialization
                results[(m.asset_key.to_user_string(), str(key or ""))] = {k: v.value for k, v in m.metadata.items()}
            print(f"{', '.join(a.key.to_user_string() for a in stage)} {key or ''}: {time.perf_counter() - t0:.1f} s")
    _print_summary(results)
    _example_search(resources, chosen, max(years))
    _fewshot_report(results, resources, chosen[0].name, max(years))
    print(f"\ndone in {time.perf_counter() - started:.1f} s; browse with: make dev")
    return 0


def run_classify(resources: dict, args) -> int:
    """The few-shot assets for one partition, through the Dagster instance; prints the report."""
    region = resources["regions"].get(args.region)
    year = validate_year(args.year)
    resources["storage"].open_embeddings(year, region.name)  # a clear error before any work
    instance = dagster_instance()
    config = {"ops": {"fewshot_samples": {"config": {"labels_path": args.labels, "year": year}},
                      "fewshot_classifier": {"config": {"head": args.head}}}}
    trained = materialize([fewshot_samples, fewshot_classifier], instance=instance, resources=resources,
                          run_config=config, raise_on_error=False)
    if not trained.success:
        failure = trained.get_step_failure_events()[0].event_specific_data.error
        message = (failure.cause or failure).message.strip().splitlines()[-1]
        raise TesseraError(message.split(": ", 1)[-1] if message.split(":")[0].count(".") else message)
    mapped = materialize([land_cover_map], partition_key=year_region_key(year, region.name), instance=instance,
                         resources=resources)
    report = {}
    for result in (trained, mapped):
        for event in result.get_asset_materialization_events():
            m = event.event_specific_data.materialization
            report[(m.asset_key.to_user_string(), "")] = {k: v.value for k, v in m.metadata.items()}
    _fewshot_report(report, resources, region.name, year)
    areas = report[("land_cover_map", "")]["class_area_ha"]
    print("class areas (ha): " + ", ".join(f"{k} {v}" for k, v in areas.items()))
    path = resources["storage"].path("land_cover", str(year), region.name, "report.json")
    path.write_text(json.dumps({
        "labels": args.labels, "year": year, "region": region.name, "head": args.head,
        "curves": report[("fewshot_classifier", "")]["curves"], "class_area_ha": areas,
        "samples": report[("fewshot_samples", "")]["samples"],
    }, indent=1))
    print(f"report: {path}")
    return 0


def run_search(vectors, args) -> pa.Table:
    similarity = Similarity(vectors)
    query, _ = similarity.vector_at(args.lon, args.lat, args.year)
    filters = SearchFilter(years=args.years or [args.year], regions=args.search_regions,
                           bbox=tuple(args.bbox) if args.bbox else None, h3_cells=args.h3,
                           within_m=args.within_m, centre=(args.lon, args.lat), encoder_id=args.encoder_id)
    return similarity.search(query, k=args.k, filters=filters)


def print_results(results) -> None:
    print(f"{'rank':>4} {'similarity':>10} {'lon':>11} {'lat':>10} {'year':>5} {'region':<12} h3 (res 13)")
    for rank, row in enumerate(results.to_pylist(), start=1):
        print(f"{rank:>4} {row['similarity']:>10.4f} {row['lon']:>11.6f} {row['lat']:>10.6f} {row['year']:>5} "
              f"{row['region']:<12} {row['h3_r13']:x}")


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
    classify = commands.add_parser("classify", help="train a few-shot classifier from labels and map a partition")
    classify.add_argument("labels", help="GeoJSON, GeoParquet or CSV (lon, lat, label[, year]) file or folder")
    classify.add_argument("--year", type=int, required=True)
    classify.add_argument("--region", required=True)
    classify.add_argument("--head", default="logistic", choices=["logistic", "knn", "mlp", "forest"])
    search = commands.add_parser("search", help="find the pixels most like the pixel at a point")
    search.add_argument("--lon", type=float, required=True)
    search.add_argument("--lat", type=float, required=True)
    search.add_argument("--year", type=int, required=True, help="year of the query pixel")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--within-m", type=float, default=None, help="only within this radius of the point")
    search.add_argument("--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"))
    search.add_argument("--years", type=int, nargs="+", help="years to search (default: the query's year)")
    search.add_argument("--regions", nargs="+", dest="search_regions")
    search.add_argument("--h3", nargs="+", default=[], help="H3 cells (any resolution) to search within")
    search.add_argument("--encoder-id", help="search the vectors of this encoder (needed when the table holds several)")
    search.add_argument("--out", help="write results.geojson or results.parquet")
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
        if args.command == "classify":
            return run_classify(resources, args)
        if args.command == "search":
            results = run_search(resources["vectors"], args)
            print_results(results)
            if args.out:
                print(f"wrote {write_results(results, args.out)}")
        elif args.command == "export":
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
    except (TesseraError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
