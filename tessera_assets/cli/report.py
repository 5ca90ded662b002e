"""What the materialising commands print when runs end: the partitions' figures, failed checks, an
example search and the few-shot scores."""

from __future__ import annotations

import re
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


def done(outcomes, seconds: float, then: str = "") -> None:
    """The last line of a materialising command: its time, and how many checks failed (each is
    listed where the runs ended), so a run that "finished" with failed checks never looks clean."""
    failed = sum(len(o.failed_checks) for o in outcomes)
    print(f"\ndone in {seconds:.1f} s" + (f"; {failed} asset check{'s' * (failed != 1)} FAILED (listed above)"
                                          if failed else "") + then)


def stage_times(outcomes) -> None:
    """Each planned stage's wall time (its runs side by side) and its runs' count, in the order run."""
    stages: dict[tuple[str, ...], list] = {}
    for outcome in outcomes:
        stages.setdefault(tuple((outcome.planned or outcome.stage).names), []).append(outcome)
    print(f"\n{'stage':<72} {'runs':>4} {'seconds':>8}")
    for names, runs in stages.items():
        wall = max(r.started + r.seconds for r in runs) - min(r.started for r in runs)
        print(f"{', '.join(names):<72} {len(runs):>4} {wall:>8.1f}")


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
    inputs(results)


def _reasons(table: str) -> list[str]:
    """The reasons of a `| scene | reason |` metadata table, most frequent first."""
    rows = [line.split("|")[2].strip() for line in str(table).splitlines()[2:] if line.count("|") >= 3]
    return sorted(set(rows), key=lambda r: (-rows.count(r), r))


def inputs(results: dict[tuple[str, str], dict]) -> None:
    """Which item layout each catalog's items were read by, and every input left out, by partition:
    what a person must know to trust the figures above."""
    layouts: dict[str, dict[str, int]] = {}  # sensor -> layout -> items, over every partition
    for (asset, _), meta in results.items():
        for part in str(meta.get("catalog_layout", "")).split(", ") if "catalog_layout" in meta else []:
            found = re.match(r"^(.*) \((\d+) items?\)$", part)
            if found:
                sensor = layouts.setdefault(asset[:2], {})
                sensor[found.group(1)] = sensor.get(found.group(1), 0) + int(found.group(2))
    if layouts:
        print("catalog layouts: " + "; ".join(f"{sensor} " + ", ".join(f"{name} ({n} items)" for name, n in sorted(kinds.items()))
                                              for sensor, kinds in sorted(layouts.items())))
    for (asset, key), meta in sorted(results.items()):
        skipped = meta.get("scenes_skipped", 0) if asset in ("s2_raw", "s1_raw") else 0
        if skipped:
            reasons = _reasons(meta.get("skipped_reasons", ""))
            print(f"left out: {asset} {key}: {skipped} of {meta['scenes_found']} scenes ({'; '.join(reasons[:3])}"
                  f"{'; ...' if len(reasons) > 3 else ''}); the rest were used", file=sys.stderr)


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


def area_estimates(land_cover: dict) -> None:
    """The stratified area estimates of a land-cover map beside its pixel counts."""
    if "area_estimates" in land_cover:
        print("\narea estimates (Olofsson et al. 2014; 95% confidence intervals):")
        print(land_cover["area_estimates"])


def regression(results: dict, storage, partition) -> None:
    regressor = results.get(("fewshot_regressor", ""))
    if not regressor:
        return
    print(f"\nfew-shot regression of {regressor['value_field']} ({regressor['head']} head, {regressor['samples']} "
          f"labelled pixels, {regressor['draws']} draws an n):")
    print(regressor["scores"])
    values = results.get(("value_map", str(partition)), {})
    if values:
        print(f"{regressor['value_field']} map {partition}: mean {values.get('mean')}, p10 {values.get('p10')}, "
              f"p90 {values.get('p90')}; {storage.location('value_map', partition.year, partition.region)}/values.png")


def change(meta: dict, storage, partition) -> None:
    if meta:
        print(f"change {partition} since {meta['reference_year']}: {meta['changed_area_ha']} ha changed in "
              f"{meta['patches']} patches (threshold score {meta['threshold_score']}, false-alarm rate "
              f"{meta['false_alarm_rate']}); {storage.location('change', partition.year, partition.region)}/patches.geojson")


# where each product of a partition is, by asset: (folder under the data root, its main file)
PRODUCTS = (("embeddings", "embeddings", "embeddings.tif"), ("land_cover_map", "land_cover", "classes.tif"),
            ("value_map", "value_map", "values.tif"), ("change_map", "change", "patches.geojson"),
            ("similarity_map", "similarity", ""))


def products(storage, year: int, region: str) -> None:
    """Where the partition's products are on disk (or on the object store)."""
    print(f"\nproducts of {region} {year}:")
    for asset, folder, name in PRODUCTS:
        if storage.folder(folder, year, region) is not None:
            print(f"  {asset:<15} {storage.location(folder, year, region)}/{name}")


def next_commands(queries: dict, year: int) -> None:
    """The three commands to try next."""
    print("next:\n  make dev        # the Dagster UI on this instance: assets, previews, checks, lineage\n"
          "  make serve      # the map explorer: search by clicking, label, train, suggested labels")
    if queries:
        name, spec = next(iter(sorted(queries.items())))
        print(f"  .venv/bin/tessera search --lon {spec['lon']} --lat {spec['lat']} --year {year}   # pixels like '{name}'")


def _point(curve: list[dict], key: str, at) -> dict | None:
    return next((p for p in curve if str(p[key]) == str(at)), None)


def headline(results: dict, storage, catalog_root: Path, region: str, year: int) -> None:
    """The demo's figures in one table, embeddings beside the raw-input baseline: few-shot accuracy
    at k = 1, 2, 5, 10, regression R², change F1 against the true changes, and how close the
    area estimates come to the true areas."""
    from resources.regions import PartitionId
    from resources.scenes.demo_truth import change_scores, true_class_area_ha

    key = str(PartitionId(year, region))

    rows = []
    curves = (results.get(("fewshot_classifier", "")) or {}).get("curves", {})
    for k in (1, 2, 5, 10):
        e, b = _point(curves.get("embeddings", []), "k", k), _point(curves.get("baseline", []), "k", k)
        if e:
            head = f"{e.get('head', '')} head" + (", self-trained" if e.get("self_trained") else "")
            rows.append((f"few-shot accuracy, k={k} ({head})", f"{e['accuracy']:.3f}",
                         f"{b['accuracy']:.3f}" if b else "-"))
    curves = (results.get(("fewshot_regressor", "")) or {}).get("curves", {})
    for n in (20, 100):
        e, b = _point(curves.get("embeddings", []), "n", n), _point(curves.get("baseline", []), "n", n)
        if e:
            rows.append((f"biomass R², n={n} (class mean alone {e.get('class_mean_r2', float('nan')):.3f})",
                         f"{e['r2']:.3f}", f"{b['r2']:.3f}" if b else "-"))
    if ("change_map", key) in results:
        scores = change_scores(storage, catalog_root, year, region)
        e, b = scores.get("embeddings"), scores.get("baseline")
        if e:
            since = results[("change_map", key)].get("reference_year", year - 1)
            rows.append((f"change F1 {since}->{year} (precision {e['precision']:.2f}, recall {e['recall']:.2f})",
                         f"{e['f1']:.3f}", f"{b['f1']:.3f}" if b else "-"))
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    print(f"\n{'demo ' + region + ' ' + str(year):<{width}}  {'embeddings':>10}  {'baseline':>8}")
    for name, e, b in rows:
        print(f"{name:<{width}}  {e:>10}  {b:>8}")
    land_cover = results.get(("land_cover_map", key))
    if land_cover and "area_estimate_ha" in land_cover:
        truth = true_class_area_ha(catalog_root, year, region)
        print(f"\n{'class':<14} {'true ha':>8} {'pixel count ha':>14} {'estimate ha ± 95% CI':>22}  inside")
        unseen = []
        for name, est in land_cover["area_estimate_ha"].items():
            true, mapped = truth.get(name, 0.0), land_cover["class_area_ha"].get(name, 0.0)
            inside = abs(est["area_ha"] - true) <= est["ci95_ha"]
            if est.get("no_error_seen"):  # AreaEstimate.no_error_seen, as the asset recorded it
                unseen.append(name)
            print(f"{name:<14} {true:>8.1f} {mapped:>14.1f} {est['area_ha']:>12.1f} ± {est['ci95_ha']:<7.1f}  "
                  f"{'yes' if inside else 'no'}{' *' if name in unseen else ''}")
        if unseen:
            print("  * no error of this class in the reference sample, hence ± 0: the sample was too small to see "
                  "its errors, not proof that there are none")
