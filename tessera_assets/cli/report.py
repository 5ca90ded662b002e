"""What the materialising commands print when runs end: the partitions' figures, failed checks, an
example search and the few-shot scores."""

from __future__ import annotations

import sys
from pathlib import Path

from tessera_assets.resources_by_deployment import tessera_home

# what a failed check means for the results, by check name
CHECK_MEANINGS = {
    "enough_observations": "too few valid observations over much of the region: its embeddings are noisier",
    "physical_range": "values outside the physical range: the partition was not embedded",
    "finite_where_valid": "non-finite embeddings: the partition was not added to the table",
    "positive_scales": "scales of zero or less: the partition was not added to the table",
    "reproducible": "re-embedding a block gave other bytes: embeddings differ from run to run",
    "rows_match_embedded_pixels": "the table does not hold one row per embedded pixel",
}


def failed_checks(outcomes) -> None:
    """Every failed asset check of the runs, with its partition and what it means."""
    for outcome in outcomes:
        for asset, check, partition in outcome.failed_checks:
            meaning = CHECK_MEANINGS.get(check, "see the check's metadata in the Dagster UI")
            print(f"check failed: {asset} {check} {partition}: {meaning}", file=sys.stderr)


def summary(results: dict[tuple[str, str], dict]) -> None:
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


def example_search(resources: dict, year: int) -> None:
    """The first saved query, searched in its own year: what a user would try first."""
    from resources.table.similarity import SearchFilter, Similarity, format_results, write_results
    from tessera_assets.vectors.assets import load_queries

    queries = load_queries("queries.yaml")
    if not queries:
        return
    name, spec = next(iter(sorted(queries.items())))
    similarity = Similarity(resources["vectors"])
    query, origin = similarity.vector_at(spec["lon"], spec["lat"], spec["year"])
    results = similarity.search(query, k=10, filters=SearchFilter(years=[year]))
    print(f"\nexample search: the 10 pixels of {year} most like '{name}' ({spec['lon']}, {spec['lat']}, {spec['year']})")
    print(format_results(results))
    written = write_results(results, str(Path(tessera_home()) / f"search_{name}.geojson"))
    png = resources["storage"].location("similarity", year, origin["region"]) + f"/{name}.png"
    print(f"results: {written}; similarity map: {png}")


def fewshot(results: dict, storage, region: str, year: int) -> None:
    classifier = results.get(("fewshot_classifier", ""))
    if not classifier:
        return
    print(f"\nfew-shot ({classifier['head']} head, {classifier['samples']} labelled pixels, {classifier['draws']} draws a k):")
    print(classifier["scores"])
    print(f"class map: {storage.location('land_cover', year, region)}/classes.png")
