"""The `tessera` command line: one-off searches, the demo pipeline, few-shot maps, exports, regions.

Commands import what they use, when they run: `--help` and argument errors need only argparse; a
search needs only the embedding table (`resources.table.store`, no Dagster), and starts without the
raster, model and orchestration stack that the materialising commands (`tessera_assets.cli.commands`)
load, nor pandas (`resources.table.lancedb_import`). What those run, and in which order, is
Dagster's asset graph (`tessera_assets.cli.pipeline`). `bench/startup.py` measures what each start
costs.
"""

from __future__ import annotations

import argparse
import sys
import time

from model.errors import ModelError
from resources.errors import TesseraError


def run_search(args) -> int:
    from resources.table.lancedb_import import pyarrow_without_pandas_yet

    pyarrow_without_pandas_yet()  # a search never makes a DataFrame: start without pandas
    from resources.table.similarity import (SearchError, SearchFilter, Similarity, format_batch_results, format_results,
                                            search_report, write_results)
    from tessera_assets.resources_by_deployment import table_store

    if (args.points is None) == (args.lon is None or args.lat is None):
        raise SearchError("give a point (--lon and --lat) or a file of points (--points), not both")
    started = time.perf_counter()
    similarity = Similarity(table_store())
    filters = SearchFilter(years=args.years or [args.year], regions=args.search_regions,
                           bbox=tuple(args.bbox) if args.bbox else None, h3_cells=args.h3, within_m=args.within_m,
                           centre=(args.lon, args.lat) if args.points is None else None, encoder_id=args.encoder_id)
    if args.points is None:
        query, _ = similarity.vector_at(args.lon, args.lat, args.year)
        results = similarity.search(query, k=args.k, filters=filters)
        print(format_results(results))
    else:
        from resources.labels import read_points

        points = read_points(args.points)
        queries = similarity.vectors_at(points, args.year)
        searched = time.perf_counter()
        results = similarity.search_many(queries, k=args.k, filters=filters)
        seconds = time.perf_counter() - searched
        print(format_batch_results(results, points))
        print(f"{len(points):,} queries in one batch: {seconds:.2f} s, {len(points) / max(seconds, 1e-9):,.0f} queries/s")
    report = search_report(results)
    how = report["index"] if report["index"].startswith("none") else (
        f"index {report['index']} (nprobes {report['nprobes']}, refine x{report['refine_factor']})")
    print(f"searched {report['rows_searched']:,} of {report['table_rows']:,} rows with {how} "
          f"in {time.perf_counter() - started:.2f} s")
    if args.out:
        print(f"wrote {write_results(results, args.out)}")
    return 0


def run_serve(args) -> int:
    import threading

    import uvicorn

    from tessera_assets.explorer.access import check_exposure
    from tessera_assets.explorer.app import Explorer, create_app
    from tessera_assets.resources_by_deployment import build_resources

    access = check_exposure(args.host, args.tokens, args.read_only)  # before anything is opened
    resources = build_resources()
    explorer = Explorer(resources["storage"], resources["regions"], resources["vectors"], args.dagster_url)
    mode = (f"{len(set(access.tokens.values()))} users with tokens" if access.needs_token else "this machine only"
            if not access.read_only else "read-only") + (", read-only" if access.read_only and access.needs_token else "")
    print(f"tessera explorer on http://{args.host}:{args.port}/ ({len(explorer.partitions())} partitions; {mode})")
    threading.Thread(target=explorer.warm, daemon=True).start()
    uvicorn.run(create_app(explorer, args.host, access), host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="TESSERA embeddings on Dagster")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="materialise the demo pipeline end to end")
    demo.add_argument("--years", type=int, nargs="+", default=None, help="years to run (default: the demo years)")
    demo.add_argument("--regions", nargs="+", default=None, help="demo regions to run (default: all)")
    demo.add_argument("--verbose", action="store_true", help="every message of every run, live (always in the log files)")
    run = commands.add_parser("run", help="materialise the pipeline for regions and years, up to an asset or group")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--region", type=lambda v: [v], dest="regions", help="a region of the regions file")
    where.add_argument("--regions", type=lambda v: [r for r in v.split(",") if r],
                       help="comma-separated regions of the regions file, or all")
    run.add_argument("--years", required=True, type=lambda v: [int(y) for y in v.split(",")],
                     help="comma-separated, e.g. 2021,2022")
    run.add_argument("--until", default=None, help=(
        "an asset or group of the definitions and what it needs (raw, embeddings, table, maps, or e.g. "
        "embedding_table); default: every asset that needs no labels (and saved queries only if there are any)"))
    run.add_argument("--verbose", action="store_true", help="every message of every run, live (always in the log files)")
    run.add_argument("--refresh", action="store_true",
                     help="make unpartitioned assets that feed others (the encoder) again, even if materialised")
    export = commands.add_parser("export", help="write embeddings in the official geotessera layouts")
    export.add_argument("--format", choices=["tiles", "zarr", "tiff"], default="tiles",
                        help="tiles: .npy tiles, landmasks and registries (geotessera 0.7.5 and 0.11); zarr: the "
                             "0.11 Zarr store, one group per UTM zone; tiff: float32 128-band GeoTIFF tiles, "
                             "geotessera's --format tiff layout that TorchGeo's TesseraEmbeddings reads")
    export.add_argument("--year", type=int, required=True)
    export.add_argument("--region", required=True)
    export.add_argument("--out", required=True, help="tile root (geotessera's embeddings_dir) or Zarr store path")
    export.add_argument("--registry", help="tiles: where the registry files go (default OUT/registry), "
                                           "geotessera's registry_dir")
    classify = commands.add_parser("classify", help="train a few-shot classifier from labels and map a partition")
    classify.add_argument("labels", help="GeoJSON, GeoParquet or CSV (lon, lat, label[, year]) file or folder")
    classify.add_argument("--year", type=int, required=True)
    classify.add_argument("--region", required=True)
    classify.add_argument("--head", default="logistic", choices=["logistic", "ncm", "knn", "mlp", "forest"],
                          help="ncm: cosine nearest class mean")
    classify.add_argument("--validation", help="reference labels never used in training, for the area estimates")
    regress = commands.add_parser("regress", help="train a few-shot regressor from labels' values and map a partition")
    regress.add_argument("labels", help="GeoJSON, GeoParquet or CSV file or folder whose features carry a number")
    regress.add_argument("--field", required=True, help="the numeric property or column (e.g. biomass, height)")
    regress.add_argument("--year", type=int, required=True)
    regress.add_argument("--region", required=True)
    regress.add_argument("--head", default="ridge", choices=["ridge", "knn", "forest", "mlp"])
    changes = commands.add_parser("changes", help="map change since the year before, or find changes like one")
    changes.add_argument("--year", type=int, required=True)
    changes.add_argument("--region", required=True)
    changes.add_argument("--like", type=float, nargs=2, metavar=("LON", "LAT"),
                         help="rank the changed patches by how like the change at this point their change is")
    changes.add_argument("--regions", nargs="+", dest="search_regions", help="with --like: change maps to search")
    changes.add_argument("-k", type=int, default=10)
    search = commands.add_parser("search", help="find the pixels most like the pixel at a point (or at each of many)")
    search.add_argument("--lon", type=float)
    search.add_argument("--lat", type=float)
    search.add_argument("--points", help="a CSV (lon, lat columns) or GeoJSON file of query points, searched in one batch")
    search.add_argument("--year", type=int, required=True, help="year of the query pixels")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--within-m", type=float, default=None, help="only within this radius of the point")
    search.add_argument("--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"))
    search.add_argument("--years", type=int, nargs="+", help="years to search (default: the query's year)")
    search.add_argument("--regions", nargs="+", dest="search_regions")
    search.add_argument("--h3", nargs="+", default=[], help="H3 cells (any resolution) to search within")
    search.add_argument("--encoder-id", help="search the vectors of this encoder (needed when the table holds several)")
    search.add_argument("--out", help="write results.geojson or results.parquet")
    serve = commands.add_parser("serve", help="the map explorer: search by clicking, label and map classes")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--dagster-url", default="http://127.0.0.1:3000", help="the Dagster UI the page links to")
    serve.add_argument("--tokens", help="a YAML mapping of user name to access token; beyond loopback this or "
                                        "--read-only is required (each user labels and trains in their own file)")
    serve.add_argument("--read-only", action="store_true", help="share search and maps, with labelling and training off")
    regions = commands.add_parser("regions", help="list or add regions")
    region_commands = regions.add_subparsers(dest="regions_command", required=True)
    region_commands.add_parser("list")
    add = region_commands.add_parser("add")
    add.add_argument("name")
    add.add_argument("--bbox", type=float, nargs=4, metavar=("W", "S", "E", "N"), required=True)
    remove = region_commands.add_parser("remove", help="take a region out (its data stays unless --purge)")
    remove.add_argument("name")
    remove.add_argument("--purge", action="store_true", help="also delete its partitions' data and table rows")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "search":
            return run_search(args)
        if args.command == "serve":
            return run_serve(args)
        from tessera_assets.cli import commands
        from resources.regions import validate_year

        if args.command == "demo":
            from resources.scenes.demo_catalog import DEFAULT_YEARS

            return commands.run_demo([validate_year(y) for y in args.years or DEFAULT_YEARS], args.regions, args.verbose)
        if args.command == "run":
            return commands.run_region(args.regions, [validate_year(y) for y in args.years], args.until, args.refresh,
                                       args.verbose)
        if args.command == "classify":
            return commands.run_classify(args)
        if args.command == "regress":
            return commands.run_regress(args)
        if args.command == "changes":
            return commands.run_changes(args)
        if args.command == "export":
            return commands.run_export(args)
        return commands.run_regions(args)
    except (TesseraError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
