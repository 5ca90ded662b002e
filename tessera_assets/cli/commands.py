"""The commands of `tessera` that materialise: the demo pipeline, any region's pipeline, few-shot
classification; and the ones that read or edit: export, regions.

Runs go through a real, persistent Dagster instance (DAGSTER_HOME, by default `.tessera/dagster`,
configured by deploy/dagster.yaml), so whatever the CLI materialises shows up in `dagster dev` with
its metadata. What runs and in which order is Dagster's asset graph (`tessera_assets.cli.pipeline`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from dagster import AssetKey, AssetSelection, DagsterInstance

from resources.errors import TesseraError
from resources.regions import PartitionId, Region, validate_year
from tessera_assets.cli import report
from tessera_assets.cli.pipeline import CodeLocation, RunOutcome, execute, plan_stages
from tessera_assets.cli.progress import PipelineView
from tessera_assets.resources_by_deployment import build_resources, tessera_home

INSTANCE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"  # pools and run queue
NEEDS_TAG = "tessera/needs"  # an asset that needs an input the user gives (labels, saved queries) carries it
# --until: a group of the definitions, an asset key, or one of these names of earlier releases
UNTIL_ALIASES = {"table": "embedding_index", "maps": "similarity_map"}


def dagster_instance() -> DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(tessera_home(), "dagster").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_FILE, home / "dagster.yaml")
    return DagsterInstance.get()


def seed_region_partitions(instance: DagsterInstance, regions: list[Region]) -> None:
    from tessera_assets.partitions import region_partitions

    known = set(instance.get_dynamic_partitions(region_partitions.name))
    missing = [r.name for r in regions if r.name not in known]
    if missing:
        instance.add_dynamic_partitions(region_partitions.name, missing)


def needing(asset_graph, need: str) -> AssetSelection:
    """The assets tagged as needing an input (`NEEDS_TAG`), sources included, and all downstream."""
    tagged = [k for k in asset_graph.get_all_asset_keys() if asset_graph.get(k).tags.get(NEEDS_TAG) == need]
    return AssetSelection.assets(*tagged).downstream()


def select_assets(asset_graph, until: str | None = None, unmet_needs: set[str] = frozenset(),
                  reuse: DagsterInstance | None = None) -> set[AssetKey]:
    """The executable assets to run: all of them, or those `until` (a group or an asset) needs and
    itself; without what depends on an input not given (`NEEDS_TAG` values in `unmet_needs`). With
    `reuse`, an unpartitioned asset that feeds others and is already materialised on that instance
    (the encoder) is kept, not made again."""
    executable = {k for k in asset_graph.get_all_asset_keys() if asset_graph.get(k).is_executable}
    if until is None:
        selection = AssetSelection.assets(*executable)
    else:
        name = UNTIL_ALIASES.get(until, until)
        groups = {asset_graph.get(k).group_name for k in executable}
        if name in groups:
            selection = AssetSelection.assets(*(k for k in executable if asset_graph.get(k).group_name == name)).upstream()
        elif AssetKey(name) in executable:
            selection = AssetSelection.assets(name).upstream()
        else:
            from tessera_assets.lineage import embeddings_imported

            why = (f"embeddings come from official tiles here, there is no {until} stage" if embeddings_imported()
                   else "no such asset or group here")
            raise TesseraError(f"--until {until}: {why} (groups: {', '.join(sorted(groups))})")
    for need in unmet_needs:
        selection = selection - needing(asset_graph, need)
    keys = {k for k in selection.resolve(asset_graph) if asset_graph.get(k).is_executable}
    if reuse is not None:
        keys = {k for k in keys if not (asset_graph.get(k).partitions_def is None
                                        and any(c in keys for c in asset_graph.get(k).child_keys)
                                        and reuse.get_latest_materialization_event(k) is not None)}
    return keys


def materialise(location: CodeLocation, keys: set[AssetKey], partitions: list[PartitionId], instance: DagsterInstance,
                op_config: dict | None = None, resource_config: dict | None = None,
                verbose: bool = False) -> list[RunOutcome] | None:
    """The selection through Dagster, in one progress view; None after printing what failed."""
    stages = plan_stages(location.definitions().get_repository_def().asset_graph, keys)
    planned = sum(len(partitions) if stage.partitioned else 1 for stage in stages)
    logs = Path(instance.root_directory) / "logs"
    print(f"{len(stages)} stages, {planned} runs; each run's full log in {logs}/<run id>.log")
    with PipelineView(planned, verbose) as view:
        outcomes = execute(location, stages, partitions, instance, op_config, resource_config, view, logs)
    report.failed_checks(outcomes)
    return outcomes if outcomes and all(o.success for o in outcomes) else None


def collected(outcomes: list[RunOutcome]) -> dict[tuple[str, str], dict]:
    return {key: meta for outcome in outcomes for key, meta in outcome.materialised.items()}


def saved_queries() -> dict:
    from tessera_assets.vectors.assets import load_queries

    return load_queries("queries.yaml")


def run_region(region_names: list[str], years: list[int], until: str | None, refresh: bool = False,
               verbose: bool = False) -> int:
    """The pipeline for regions of the regions file, up to `until`, from the deployment's catalogs.
    Unpartitioned assets that feed others (the encoder) are made once and reused unless `refresh`;
    by default, assets that need labels or saved queries are left to `tessera classify` / `--until maps`."""
    location = CodeLocation()
    defs = location.definitions()
    resources = build_resources()
    catalog = resources["regions"]
    regions = catalog.all() if region_names == ["all"] else [catalog.get(name) for name in region_names]
    instance = dagster_instance()
    seed_region_partitions(instance, regions)
    # by default what needs no input from the user; an asset named by --until gets what it needs, but a
    # regression only where the labels have a value field
    unmet = {"labels", "queries"} if until is None else set()
    if not resources["label_source"].value_field:
        unmet.add("values")
    keys = select_assets(defs.get_repository_def().asset_graph, until, unmet, reuse=None if refresh else instance)
    if "tiles" in resources:
        print(f"embeddings: read from the official tiles at {resources['tiles'].root}")
    started = time.perf_counter()
    outcomes = materialise(location, keys, [PartitionId(y, r.name) for r in regions for y in years], instance,
                           verbose=verbose)
    if outcomes is None:
        return 1
    report.summary(collected(outcomes))
    report.stage_times(outcomes)
    report.done(outcomes, time.perf_counter() - started, "; browse with: make dev")
    return 0


DEMO_VALUE_FIELD = "biomass"  # the demo labels' number (t/ha) that the regression learns


def run_demo(years: list[int], region_names: list[str] | None, verbose: bool = False) -> int:
    """Every asset of the definitions on the demo regions, from the embedded demo catalog."""
    os.environ["TESSERA_DEPLOYMENT"] = "local"  # before the definitions are imported, here and in step processes
    from resources.scenes.demo_catalog import ensure_demo_catalog, ground_truth_dir
    from tessera_assets.raw.assets import demo_catalog_folder

    location = CodeLocation()
    defs = location.definitions()
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
    keys = select_assets(defs.get_repository_def().asset_graph, None, set() if saved_queries() else {"queries"})
    outcomes = materialise(location, keys, [PartitionId(y, r.name) for r in chosen for y in years], instance,
                           op_config={"fewshot_samples": {"year": max(years)}},
                           resource_config={"label_source": {"path": str(labels), "value_field": DEMO_VALUE_FIELD}},
                           verbose=verbose)
    if outcomes is None:
        return 1
    results = collected(outcomes)
    report.summary(results)
    report.stage_times(outcomes)
    report.example_search(resources, max(years))
    report.fewshot(results, resources["storage"], chosen[0].name, max(years))
    report.headline(results, resources["storage"], catalog_folder, chosen[0].name, max(years))
    report.products(resources["storage"], max(years), chosen[0].name)
    report.done(outcomes, time.perf_counter() - started)
    report.next_commands(saved_queries(), max(years))
    return 0


def _partition_run(args, need: str, op_config: dict, resource_config: dict) -> tuple[dict, PartitionId, object] | None:
    """The assets needing `need` (labels, values) for one partition, through the Dagster instance:
    their materialisations' metadata, the partition and the storage; None after printing a failure."""
    location = CodeLocation()
    defs = location.definitions()
    resources = build_resources()
    region = resources["regions"].get(args.region)
    partition = PartitionId(validate_year(args.year), region.name)
    resources["storage"].open_embeddings(partition.year, region.name)  # a clear error before any work
    instance = dagster_instance()
    graph = defs.get_repository_def().asset_graph
    wanted = needing(graph, need).resolve(graph)
    if need == "labels":  # classification: not what needs a value field as well
        wanted -= needing(graph, "values").resolve(graph)
    else:  # a regression needs the samples too
        wanted |= {AssetKey("fewshot_samples"), AssetKey("labels")}
    keys = {k for k in wanted if graph.get(k).is_executable}
    outcomes = materialise(location, keys, [partition], instance, op_config=op_config, resource_config=resource_config)
    return (collected(outcomes), partition, resources["storage"]) if outcomes is not None else None


def run_classify(args) -> int:
    """The few-shot classification assets for one partition; prints the scores and the area
    estimates, and publishes the report beside the class map."""
    op_config = {"fewshot_samples": {"year": args.year}, "fewshot_classifier": {"head": args.head}}
    if args.validation:
        op_config["land_cover_map"] = {"validation_labels": args.validation}
    done = _partition_run(args, "labels", op_config, {"label_source": {"path": args.labels}})
    if done is None:
        return 1
    results, partition, storage = done
    report.fewshot(results, storage, partition.region, partition.year)
    land_cover = results.get(("land_cover_map", str(partition)))
    if land_cover is None:  # the instance has not recorded the partition's embeddings: the terminal said so
        return 1
    report.area_estimates(land_cover)
    body = json.dumps({
        "labels": args.labels, "year": partition.year, "region": partition.region, "head": args.head,
        "curves": results[("fewshot_classifier", "")]["curves"], "class_area_ha": land_cover["class_area_ha"],
        "area_estimate_ha": land_cover["area_estimate_ha"], "samples": results[("fewshot_samples", "")]["samples"],
    }, indent=1)
    print(f"report: {storage.publish_file(body.encode(), 'land_cover', partition.year, partition.region, name='report.json')}")
    return 0


def run_regress(args) -> int:
    """The few-shot regression assets for one partition; prints R² against labelled pixels and the map."""
    op_config = {"fewshot_samples": {"year": args.year}, "fewshot_regressor": {"head": args.head}}
    done = _partition_run(args, "values", op_config, {"label_source": {"path": args.labels, "value_field": args.field}})
    if done is None:
        return 1
    results, partition, storage = done
    report.regression(results, storage, partition)
    return 0


def run_changes(args) -> int:
    """The change map of a partition (made if missing), or the changed patches most like a change."""
    resources = build_resources()
    region = resources["regions"].get(args.region)
    partition = PartitionId(validate_year(args.year), region.name)
    storage = resources["storage"]
    if args.k < 1:
        raise TesseraError(f"-k must be at least 1, not {args.k}")
    if args.search_regions and not args.like:
        raise TesseraError("--regions searches changes like one: give --like LON LAT as well")
    if args.like:
        from resources.change_search import similar_changes
        from resources.labels import coordinates

        found = similar_changes(storage, partition.year, region.name, args.like[0], args.like[1], args.k,
                                args.search_regions)
        print(f"{'region':<16} {'patch':>5} {'area ha':>8} {'score':>6} {'similarity':>10}  centre (lon, lat)")
        for feature in found:
            props, corners = feature["properties"], list(coordinates(feature["geometry"]))
            centre = (sum(p[0] for p in corners) / len(corners), sum(p[1] for p in corners) / len(corners))
            print(f"{props['region']:<16} {props['patch']:>5} {props['area_ha']:>8} {props['mean_score']:>6} "
                  f"{props['similarity']:>10.3f}  {centre[0]:.5f}, {centre[1]:.5f}")
        return 0
    location = CodeLocation()
    instance = dagster_instance()
    outcomes = materialise(location, {AssetKey("change_map")}, [partition], instance)
    if outcomes is None:
        return 1
    report.change(collected(outcomes).get(("change_map", str(partition)), {}), storage, partition)
    return 0


def run_export(args) -> int:
    from resources.official.tiles import export_region

    resources = build_resources()
    region = resources["regions"].get(args.region)
    partition = resources["storage"].open_embeddings(validate_year(args.year), region.name)
    root = Path(args.out)
    if args.format == "tiff":
        from resources.official.tiles import export_tiffs

        tiffs = export_tiffs(partition, args.year, region.bbox, root)
        print(f"wrote {len(tiffs)} float32 GeoTIFF tiles under {root} ({', '.join(p.name for p in tiffs)}): "
              f"geotessera's --format tiff layout, which TorchGeo's TesseraEmbeddings(paths={str(root)!r}) reads")
        return 0
    if args.format == "zarr":
        from resources.official.zarr_store import export_zarr

        print(f"wrote {export_zarr(partition, args.year, root):,} pixels into the Zarr store {root}")
        return 0
    registry = Path(args.registry) if args.registry else root / "registry"
    tiles, listed = export_region(partition, args.year, region.bbox, root, registry)
    print(f"wrote {len(tiles)} tiles under {root}: {', '.join(p.parent.name for p in tiles)}; registries in "
          f"{registry} list {listed['tiles']} tiles (read with GeoTessera(embeddings_dir={str(root)!r}, "
          f"registry_dir={str(registry)!r}))")
    return 0


def run_regions(args) -> int:
    from tessera_assets.partitions import region_partitions

    resources = build_resources()
    catalog = resources["regions"]
    if args.regions_command == "remove":
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
