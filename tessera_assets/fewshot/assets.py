"""Few-shot classification: labels joined with embeddings, an honestly evaluated classifier, class maps."""

import json
import time

import numpy as np
import pyarrow.parquet as pq
import rasterio
from dagster import AssetExecutionContext, AssetKey, Config, DagsterEventType, MaterializeResult, MetadataValue, asset
from pydantic import Field

from model.area_estimate import stratified_estimate
from model.errors import HeldOutError
from model.fewshot import DEFAULT_HEAD, Classifier, grouped_cross_predictions, kshot_curve
from resources.errors import EncoderMismatchError, PartitionNotMaterialisedError
from resources.labelled_samples import gather_samples
from resources.labels import LabelSource, LabelsError, labelled_pixels, labels_digest, read_labels
from resources.previews import class_map_png, learning_curve_png
from resources.regions import PIXEL_AREA_HA, PartitionId
from resources.storage.data_root import TesseraStorage, write_class_map
from tessera_assets.fewshot.labels import labels
from tessera_assets.fewshot.saved_heads import load_head, save_head
from tessera_assets.lineage import RAW_INPUTS
from tessera_assets.metadata import explorer_url, preview_metadata
from tessera_assets.partitions import materialised_partitions, year_and_region, year_region_partitions

SAMPLES_FILE = "samples.parquet"
UNLABELLED_FILE = "unlabelled.parquet"  # pixels drawn beside the labels, without labels (self-training)
CLASSIFIER_FILE = "classifier.pt"


class LabelsConfig(Config):
    labels_path: str | None = Field(None, description=(
        "read these labels files instead of the `labels` asset's (a file or folder, local or s3://...)"))
    year: int | None = Field(None, description="year of labels that carry none")
    encoder_id: str | None = Field(None, description="use the partitions of this encoder (needed when several made them)")


@asset(deps=[AssetKey("embeddings"), labels, *RAW_INPUTS], group_name="fewshot", kinds={"parquet"},
       code_version="samples-3")
def fewshot_samples(context: AssetExecutionContext, config: LabelsConfig, storage: TesseraStorage,
                    label_source: LabelSource) -> MaterializeResult:
    """Every labelled pixel of the materialised embeddings partitions with its embedding and, where
    the raw partitions exist, a raw-input baseline feature vector; and about 2,000 unlabelled pixels
    beside them (`unlabelled.parquet`), which the head self-trains on where labels are few."""
    files = label_source.files(storage, config.labels_path)
    features = [f for file in files for f in label_source.read(file)]
    partitions = {(p.year, p.region): storage.open_embeddings(p.year, p.region)
                  for p in materialised_partitions(context.instance, "embeddings")}

    def raw(year: int, region: str):
        try:
            return storage.open_raw("s2", year, region), storage.open_raw("s1", year, region)
        except PartitionNotMaterialisedError:  # embeddings from official tiles: no raw-input baseline
            return None

    samples = gather_samples(features, partitions, config.year, raw, config.encoder_id)
    if not samples.columns["label"]:
        raise LabelsError(f"none of the {len(features)} labels falls in a materialised embeddings partition "
                          f"({', '.join(str(PartitionId(*p)) for p in partitions) or 'none materialised'})")
    classes = samples.class_counts()
    scarce = [f"{label} ({n})" for label, n in classes.items() if n < 2]
    if scarce:
        raise LabelsError(f"classes with fewer than 2 labelled pixels: {', '.join(scarce)}")
    table = samples.to_table()
    parts = ("fewshot", "samples", context.run_id)
    with storage.publish(*parts) as tmp:
        pq.write_table(table, tmp / SAMPLES_FILE)
        pq.write_table(samples.unlabelled_table(), tmp / UNLABELLED_FILE)
    return MaterializeResult(metadata={
        "samples": table.num_rows, "unlabelled_pixels": len(samples.unlabelled["row"]), "labels_read": len(features),
        "labels_files": len(files),
        "labels_sha256": labels_digest(files)[:16], "labels_outside_partitions": samples.labels_outside,
        "encoder_id": samples.encoder_id, "classes": MetadataValue.json(classes),
        "path": MetadataValue.path(storage.location(*parts) + f"/{SAMPLES_FILE}"),
    })


def feature_sets(table) -> dict[str, np.ndarray]:
    """The samples' embeddings and, where every sample has raw inputs (not so for imported
    embeddings), their raw-input baseline features: what each protocol compares."""
    sets = {"embeddings": np.array(table["embedding"].to_pylist(), np.float32)}
    if table["baseline"].null_count == 0:
        sets["baseline"] = np.array(table["baseline"].to_pylist(), np.float32)
    return sets


class ClassifierConfig(Config):
    head: str = Field(DEFAULT_HEAD, description="logistic, ncm (cosine nearest class mean), knn, mlp or forest")
    ks: list[str] = Field(["1", "2", "5", "10", "20", "all"], description="labels per class to evaluate")
    draws: int = 10
    seed: int = 0


def read_samples(storage: TesseraStorage, run: str, name: str = SAMPLES_FILE):
    """The samples table (or the unlabelled pixels' table) that run `run` of `fewshot_samples` made."""
    return pq.read_table(storage.fetch("fewshot", "samples", run, name))


@asset(deps=[fewshot_samples], group_name="fewshot", kinds={"scikitlearn"}, code_version="classifier-4")
def fewshot_classifier(context: AssetExecutionContext, config: ClassifierConfig, storage: TesseraStorage) -> MaterializeResult:
    """The k-shot protocol on embeddings and on the raw-input baseline, then the head fitted on every
    label; each with the unlabelled pixels drawn beside the labels, its own features of them."""
    started = time.perf_counter()
    run = upstream_run(context, "fewshot_samples")
    table = read_samples(storage, run)
    y = np.array(table["label"].to_pylist())
    groups = np.array(table["group"].to_pylist())
    features = feature_sets(table)
    try:
        unlabelled = feature_sets(read_samples(storage, run, UNLABELLED_FILE))
    except PartitionNotMaterialisedError:
        context.log.warning("the samples were made before unlabelled pixels were drawn beside them, so the head does "
                            "not self-train where labels are few: materialise fewshot_samples again for that")
        unlabelled = {}
    x_embedding = features["embeddings"]
    ks = [k if k == "all" else int(k) for k in config.ks]
    curves = {name: kshot_curve(x, y, groups, ks, config.draws, config.head, config.seed, unlabelled.get(name))
              for name, x in features.items()}
    for name, curve in curves.items():
        for point in curve:
            context.log.info(f"{name} k={point['k']}: macro-F1 {point['macro_f1']:.3f} ± {point['macro_f1_std']:.3f}")
    model = Classifier(config.head).fit(x_embedding, y, seed=config.seed, unlabelled=unlabelled.get("embeddings"))
    # reference labels for the maps' area estimates: each label predicted by a head that never saw its group
    try:
        heldout = {"reference": y.tolist(), "year": table["year"].to_pylist(), "region": table["region"].to_pylist(),
                   "predicted": grouped_cross_predictions(x_embedding, y, groups, config.head, seed=config.seed,
                                                          unlabelled=unlabelled.get("embeddings")).tolist()}
    except HeldOutError as exc:  # one group of labels: maps get no area estimates from them
        context.log.warning(f"no held-out predictions for area estimates: {exc}")
        heldout = None
    parts = ("fewshot", "classifiers", context.run_id)
    encoder_id = table.schema.metadata.get(b"encoder_id", b"unknown").decode()
    with storage.publish(*parts) as tmp:
        save_head({"classifier": model, "curves": curves, "encoder_id": encoder_id, "heldout": heldout},
                  tmp / CLASSIFIER_FILE)
        previews = preview_metadata("learning_curve", learning_curve_png(curves, tmp / "learning_curve.png", config.head),
                                    parts, "learning curve")
    baseline = curves.get("baseline") or [None] * len(curves["embeddings"])
    table_md = "| k | embeddings macro-F1 | baseline macro-F1 | embeddings accuracy |\n|---|---|---|---|\n" + "\n".join(
        f"| {e['k']} | {e['macro_f1']:.3f} ± {e['macro_f1_std']:.3f} | "
        + (f"{b['macro_f1']:.3f} ± {b['macro_f1_std']:.3f}" if b else "no raw inputs")
        + f" | {e['accuracy']:.3f} |" for e, b in zip(curves["embeddings"], baseline))
    return MaterializeResult(metadata={
        "head": config.head, "samples": len(y), "classes": len(np.unique(y)),
        "draws": config.draws,
        **({"heldout_accuracy": round(float(np.mean(np.array(heldout["predicted"]) == y)), 4)} if heldout else {}),
        "encoder_id": encoder_id,
        **previews, "scores": MetadataValue.md(table_md),
        "curves": MetadataValue.json(curves), "seconds": round(time.perf_counter() - started, 1),
        "path": MetadataValue.path(storage.location(*parts) + f"/{CLASSIFIER_FILE}"),
    })


def upstream_run(context: AssetExecutionContext, asset: str) -> str:
    """The run whose output of an upstream unpartitioned asset to read: this run when it made one,
    else its latest materialisation. Each run writes under its own id, so two few-shot runs at once
    never read each other's samples or classifier."""
    key = AssetKey(asset)
    here = [e for e in context.instance.all_logs(context.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
            if e.asset_materialization.asset_key == key]
    latest = here[-1] if here else context.instance.get_latest_materialization_event(key)
    if latest is None:
        raise PartitionNotMaterialisedError(f"{asset} is not materialised: materialise it first")
    return latest.run_id


def load_classifier(context: AssetExecutionContext, storage: TesseraStorage) -> dict:
    """The fitted head (`classifier`), the encoder whose embeddings it was trained on (`encoder_id`)
    and its labels' held-out predictions (`heldout`)."""
    run = upstream_run(context, "fewshot_classifier")
    return load_head(storage.fetch("fewshot", "classifiers", run, CLASSIFIER_FILE))


class LandCoverConfig(Config):
    validation_labels: str | None = Field(None, description=(
        "a labels file of reference pixels never used in training (ideally a stratified random sample of the "
        "map's classes) for the area estimates; default: the training labels, each predicted by a head that "
        "never saw its group"))


def reference_sample(saved: dict, year: int, region: str, config: LandCoverConfig, storage: TesseraStorage,
                     label_source: LabelSource, grid, classes_tif) -> tuple[np.ndarray, np.ndarray, str]:
    """(map class, reference class) of each reference pixel, and where they come from."""
    if config.validation_labels:
        features = [f for file in label_source.files(storage, config.validation_labels)
                    for f in read_labels(file, label_source.label_field)]
        pixels, _ = labelled_pixels([f for f in features if f.year in (None, year)], grid, str(PartitionId(year, region)))
        if not pixels:
            raise LabelsError(f"none of the {len(features)} validation labels in {config.validation_labels} falls in "
                              f"{PartitionId(year, region)}")
        unknown = sorted({f.label for _, _, f in pixels} - set(saved["classifier"].classes))
        if unknown:
            raise LabelsError(f"validation labels name classes the classifier does not know: {', '.join(unknown)}")
        with rasterio.open(classes_tif) as src:
            mapped = src.read(1)[[r for r, _, _ in pixels], [c for _, c, _ in pixels]]
        names = np.array(list(saved["classifier"].classes) + [""])
        keep = mapped > 0  # a reference pixel without data is not a sample of the map
        return (names[mapped[keep].astype(int) - 1], np.array([f.label for _, _, f in pixels])[keep],
                f"{int(keep.sum())} validation labels ({config.validation_labels})")
    held = saved.get("heldout")
    if held is None:
        raise LabelsError("the classifier has no held-out predictions (its labels form a single group, or it was made "
                          "before area estimates existed): give validation_labels, or re-materialise fewshot_classifier")
    here = (np.array(held["year"]) == year) & (np.array(held["region"]) == region)
    source = "held-out training labels of this partition" if here.any() else \
        "held-out training labels of every partition (none lies in this one)"
    here = here if here.any() else np.ones(len(held["reference"]), bool)
    return np.array(held["predicted"])[here], np.array(held["reference"])[here], source


@asset(partitions_def=year_region_partitions, deps=[AssetKey("embeddings"), fewshot_classifier],
       group_name="fewshot", kinds={"geotiff"}, code_version="land-cover-2")
def land_cover_map(context: AssetExecutionContext, config: LandCoverConfig, storage: TesseraStorage,
                   label_source: LabelSource) -> MaterializeResult:
    """The class and the classifier's confidence for every pixel, each class's mapped area, and its
    area estimated from reference labels with a 95% confidence interval (Olofsson et al. 2014)."""
    year, region = year_and_region(context)
    saved = load_classifier(context, storage)
    classifier, encoder_id = saved["classifier"], saved.get("encoder_id", "unknown")
    embeddings = storage.open_embeddings(year, region)
    if embeddings.encoder_id != encoder_id:
        raise EncoderMismatchError(
            f"the classifier was trained on embeddings of encoder {encoder_id}, but {PartitionId(year, region)} was embedded by "
            f"{embeddings.encoder_id}: re-materialise the partition's embeddings or the few-shot assets")
    parts = ("land_cover", str(year), region)
    with storage.publish(*parts) as tmp:
        counts = write_class_map(embeddings, classifier.predict_proba, list(classifier.classes), tmp)
        previews = preview_metadata("map", class_map_png(tmp / "classes.tif", list(classifier.classes), tmp / "classes.png"),
                                    parts, "land cover")
        classes = [str(c) for c in classifier.classes]
        mapped, reference, source = reference_sample(saved, year, region, config, storage, label_source,
                                                     embeddings.grid, tmp / "classes.tif")
        # a reference pixel whose predicted class this map never shows has no stratum here (weight 0)
        in_map = np.isin(mapped, [c for c, n in zip(classes, counts) if n > 0])
        if not in_map.any():
            raise LabelsError(f"no reference pixel ({source}) falls in a class this map shows: no area estimate")
        estimate = stratified_estimate(mapped[in_map], reference[in_map], counts, classes, PIXEL_AREA_HA)
        report = {"reference": source, "samples_outside_map_strata": int((~in_map).sum()), **estimate.as_dict()}
        (tmp / "area_estimates.json").write_text(json.dumps(report, indent=1))
    hectares = {c: round(float(n) * PIXEL_AREA_HA, 2) for c, n in zip(classes, counts)}
    return MaterializeResult(metadata={
        "class_area_ha": MetadataValue.json(hectares), "classified_pixels": int(sum(counts)), "encoder_id": encoder_id,
        "area_estimates": MetadataValue.md(f"reference: {source}\n\n" + estimate.markdown()),
        "area_estimate_ha": MetadataValue.json({c: {"area_ha": round(float(a), 2), "ci95_ha": round(float(h), 2),
                                                    "no_error_seen": c in estimate.no_error_seen}
                                                for c, a, h in zip(classes, estimate.area_ha, estimate.area_ci95_ha)}),
        "overall_accuracy": round(estimate.overall_accuracy, 4), "reference_samples": estimate.n_samples,
        **previews, "path": MetadataValue.path(storage.location(*parts)),
        "explorer": MetadataValue.url(explorer_url(year, region)),
    })
