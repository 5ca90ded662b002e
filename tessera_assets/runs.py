"""The commands of `tessera` that materialise assets: the demo pipeline and few-shot classification.

Runs go through a real, persistent Dagster instance (DAGSTER_HOME, by default `.tessera/dagster`),
so whatever the CLI materialises shows up in `dagster dev` with its metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, materialize

from resources.demo_catalog import DEFAULT_YEARS, ensure_demo_catalog, ground_truth_dir
from resources.errors import PartitionNotMaterialisedError, TesseraError
from resources.geotessera_tiles import export_region
from resources.similarity import SearchFilter, Similarity, format_results, write_results
from resources.regions import Region, validate_year
from tessera_assets.embeddings.assets import embeddings, encoder_checkpoint
from tessera_assets.embeddings.imported import imported_embeddings
from tessera_assets.fewshot.assets import fewshot_classifier, fewshot_samples, land_cover_map
from tessera_assets.partitions import region_partitions, year_region_key
from tessera_assets.raw.assets import demo_catalog_folder, s1_raw, s2_raw
from tessera_assets.vectors.assets import embedding_index, embedding_table, load_queries, similarity_map
from tessera_assets.resources_by_deployment import build_resources, tessera_home

# Each stage is materialised for every partition (or once, if unpartitioned) before the next.
COMPUTED = [("raw", [s2_raw, s1_raw]), ("encoder", [encoder_checkpoint]), ("embeddings", [embeddings])]
IMPORTED = [("embeddings", [imported_embeddings])]  # from official tiles (TESSERA_EMBEDDINGS_TILES)
DOWNSTREAM = [("table", [embedding_table]), ("index", [embedding_index]), ("maps", [similarity_map]),
              ("fewshot", [fewshot_samples, fewshot_classifier]), ("land_cover", [land_cover_map])]
UNTIL = {"raw": "raw", "embeddings": "embeddings", "table": "index", "maps": "maps"}  # --until: the last stage


def pipeline_stages(imported: bool, until: str | None = None) -> list[list]:
    """The stages of the pipeline, from raw data or from official tiles, up to `until` (`UNTIL`)."""
    stages = (IMPORTED if imported else COMPUTED) + DOWNSTREAM
    names = [name for name, _ in stages]
    if until is not None:
        if UNTIL[until] not in names:
            raise TesseraError(f"--until {until}: embeddings come from official tiles here, there is no {until} stage")
        stages = stages[:names.index(UNTIL[until]) + 1]
    return [assets for _, assets in stages]


INSTANCE_FILE = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"  # pools and run queue


def dagster_instance() -> DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(tessera_home(), "dagster").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_FILE, home / "dagster.yaml")
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
    print(format_results(results))
    home = Path(tessera_home())
    written = write_results(results, str(home / f"search_{name}.geojson"))
    png = resources["storage"].location("similarity", year, origin["region"]) + f"/{name}.png"
    print(f"results: {written}; similarity map: {png}")


def _fewshot_report(results: dict, resources: dict, region: str, year: int) -> None:
    classifier = results.get(("fewshot_classifier", ""))
    if not classifier:
        return
    print(f"\nfew-shot ({classifier['head']} head, {classifier['samples']} labelled pixels, {classifier['draws']} draws a k):")
    print(classifier["scores"])
    print(f"class map: {resources['storage'].location('land_cover', year, region)}/classes.png")


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
              f"{s1.get('observations', '-'):>6} {emb.get('pixels_embedded', emb.get('pixels_with_data', '-')):>9} "
              f"{emb.get('pixels_per_second', '-'):>8} {emb.get('no_data_fraction', '-'):>8}")


def failure_message(result) -> str:
    """The last line of the first failed step's error: the message our errors carry."""
    failure = result.get_step_failure_events()[0].event_specific_data.error
    return (failure.cause or failure).message.strip().splitlines()[-1]


def materialised(result, key: str) -> dict[tuple[str, str], dict]:
    """The metadata of every materialisation of a run, by (asset, partition key)."""
    found = {}
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        found[(m.asset_key.to_user_string(), key)] = {k: v.value for k, v in m.metadata.items()}
    return found


def materialise_stages(stages: list[list], regions: list[Region], years: list[int], resources: dict,
                       instance: DagsterInstance, run_configs: dict | None = None) -> dict | None:
    """Each stage for every partition (or once, if unpartitioned) before the next, through the
    instance, so the runs show in the UI; the metadata of every materialisation, or None after
    printing what failed and why."""
    results = {}
    for stage in stages:
        keys = [year_region_key(y, r.name) for r in regions for y in years] if stage[0].partitions_def else [None]
        names = ", ".join(a.key.to_user_string() for a in stage)
        for key in keys:
            t0 = time.perf_counter()
            result = materialize(stage, partition_key=key, instance=instance, resources=resources, raise_on_error=False,
                                 run_config=(run_configs or {}).get(stage[0].key.to_user_string(), {}))
            if not result.success:
                print(f"FAILED {names} {key or ''}: {failure_message(result)}", file=sys.stderr)
                return None
            results |= materialised(result, str(key or ""))
            print(f"{names} {key or ''}: {time.perf_counter() - t0:.1f} s")
    return results


def run_region(region_name: str, years: list[int], until: str) -> int:
    """The pipeline for any region of the regions file, up to `until`, from the deployment's catalogs.
    An encoder is pretrained only when none is current; similarity maps only for saved queries."""
    resources = build_resources()
    region = resources["regions"].get(region_name)
    instance = dagster_instance()
    seed_region_partitions(instance, [region])
    stages = pipeline_stages("tiles" in resources, until)
    if "tiles" in resources:
        print(f"embeddings: read from the official tiles at {resources['tiles'].root}")
    elif [encoder_checkpoint] in stages:
        try:
            print(f"encoder: {resources['storage'].current_encoder_id()} (current)")
            stages = [s for s in stages if s != [encoder_checkpoint]]
        except PartitionNotMaterialisedError:
            print("encoder: none yet, encoder_checkpoint pretrains one on the raw partitions")
    if [similarity_map] in stages and not load_queries("queries.yaml"):
        print("no saved queries in queries.yaml: no similarity maps")
        stages = [s for s in stages if s != [similarity_map]]
    started = time.perf_counter()
    results = materialise_stages(stages, [region], years, resources, instance)
    if results is None:
        return 1
    _print_summary(results)
    print(f"\ndone in {time.perf_counter() - started:.1f} s; browse with: make dev")
    return 0


def run_demo(years: list[int], region_names: list[str] | None) -> int:
    resources = build_resources("local")
    instance = dagster_instance()
    demo_regions = [r for r in resources["regions"].all() if r.demo]
    chosen = [r for r in demo_regions if region_names is None or r.name in region_names]
    if not chosen:
        raise TesseraError(f"no demo regions selected (demo regions: {', '.join(r.name for r in demo_regions)})")
    seed_region_partitions(instance, chosen)
    started = time.perf_counter()
    catalog_folder = demo_catalog_folder(resources["s2_catalog"])
    ensure_demo_catalog(catalog_folder, demo_regions)
    print(f"demo catalog ready in {time.perf_counter() - started:.1f} s; Dagster instance at {os.environ['DAGSTER_HOME']}")
    labels = ground_truth_dir(catalog_folder, chosen[0].name) / "labels.geojson"
    run_configs = {"fewshot_samples": {"ops": {"fewshot_samples": {"config": {
        "labels_path": str(labels), "year": max(years)}}}}}
    results = materialise_stages(pipeline_stages(imported=False), chosen, years, resources, instance, run_configs)
    if results is None:
        return 1
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
        message = failure_message(trained)
        raise TesseraError(message.split(": ", 1)[-1] if message.split(":")[0].count(".") else message)
    mapped = materialize([land_cover_map], partition_key=year_region_key(year, region.name), instance=instance,
                         resources=resources)
    report = materialised(trained, "") | materialised(mapped, "")
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


def run_command(args) -> int:
    """Every command but `search`, from parsed arguments."""
    if args.command == "demo":
        return run_demo([validate_year(y) for y in args.years or DEFAULT_YEARS], args.regions)
    if args.command == "run":
        return run_region(args.region, [validate_year(y) for y in args.years], args.until)
    resources = build_resources()
    catalog = resources["regions"]
    if args.command == "classify":
        return run_classify(resources, args)
    if args.command == "export":
        region = catalog.get(args.region)
        partition = resources["storage"].open_embeddings(validate_year(args.year), region.name)
        root = Path(args.out)
        if args.format == "zarr":
            from resources.geotessera_zarr import export_zarr

            print(f"wrote {export_zarr(partition, args.year, root):,} pixels into the Zarr store {root}")
            return 0
        registry = Path(args.registry) if args.registry else root / "registry"
        tiles, listed = export_region(partition, args.year, region.bbox, root, registry)
        print(f"wrote {len(tiles)} tiles under {root}: {', '.join(p.parent.name for p in tiles)}; registries in "
              f"{registry} list {listed['tiles']} tiles (read with GeoTessera(embeddings_dir={str(root)!r}, "
              f"registry_dir={str(registry)!r}))")
    elif args.regions_command == "remove":
        region = catalog.remove(args.name)
        instance = dagster_instance()
        if region.name in instance.get_dynamic_partitions(region_partitions.name):
            instance.delete_dynamic_partition(region_partitions.name, region.name)
        print(f"removed {region.name} from {catalog.path} and its partitions from the Dagster instance")
        if args.purge:
            partitions = resources["storage"].delete_region(region.name)
            rows = resources["vectors"].delete_region(region.name)
            print(f"purged {partitions} partitions and {rows} rows of the embedding table")
        else:
            print("its data stays (tessera regions remove --purge deletes it)")
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
