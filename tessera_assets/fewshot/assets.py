"""Few-shot classification: labels joined with embeddings, an honestly evaluated classifier, class maps."""

import time

import numpy as np
import pyarrow.parquet as pq
import torch
from dagster import AssetExecutionContext, AssetKey, Config, DagsterEventType, MaterializeResult, MetadataValue, asset
from pydantic import Field

from model.fewshot import Classifier, kshot_curve
from resources.errors import EncoderMismatchError, PartitionNotMaterialisedError
from resources.labelled_samples import gather_samples
from resources.labels import LabelSource, LabelsError, labels_digest, read_labels
from resources.previews import class_map_png, learning_curve_png
from resources.regions import PartitionId
from resources.storage.data_root import TesseraStorage, write_class_map
from tessera_assets.fewshot.labels import labels
from tessera_assets.lineage import RAW_INPUTS
from tessera_assets.metadata import explorer_url, preview_metadata
from tessera_assets.partitions import materialised_partitions, year_and_region, year_region_partitions

SAMPLES_FILE = "samples.parquet"
CLASSIFIER_FILE = "classifier.pt"


class LabelsConfig(Config):
    labels_path: str | None = Field(None, description=(
        "read these labels files instead of the `labels` asset's (a file or folder, local or s3://...)"))
    year: int | None = Field(None, description="year of labels that carry none")
    encoder_id: str | None = Field(None, description="use the partitions of this encoder (needed when several made them)")


@asset(deps=[AssetKey("embeddings"), labels, *RAW_INPUTS], group_name="fewshot", kinds={"parquet"},
       code_version="samples-2")
def fewshot_samples(context: AssetExecutionContext, config: LabelsConfig, storage: TesseraStorage,
                    label_source: LabelSource) -> MaterializeResult:
    """Every labelled pixel of the materialised embeddings partitions with its embedding and, where
    the raw partitions exist, a raw-input baseline feature vector."""
    files = label_source.files(storage, config.labels_path)
    features = [f for file in files for f in read_labels(file, label_source.label_field)]
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
    return MaterializeResult(metadata={
        "samples": table.num_rows, "labels_read": len(features), "labels_files": len(files),
        "labels_sha256": labels_digest(files)[:16], "labels_outside_partitions": samples.labels_outside,
        "encoder_id": samples.encoder_id, "classes": MetadataValue.json(classes),
        "path": MetadataValue.path(storage.location(*parts) + f"/{SAMPLES_FILE}"),
    })


class ClassifierConfig(Config):
    head: str = Field("logistic", description="logistic, knn, mlp or forest")
    ks: list[str] = Field(["1", "2", "5", "10", "20", "all"], description="labels per class to evaluate")
    draws: int = 10
    seed: int = 0


@asset(deps=[fewshot_samples], group_name="fewshot", kinds={"pytorch"}, code_version="classifier-2")
def fewshot_classifier(context: AssetExecutionContext, config: ClassifierConfig, storage: TesseraStorage) -> MaterializeResult:
    """The k-shot protocol on embeddings and on the raw-input baseline, then the head fitted on every label."""
    started = time.perf_counter()
    table = pq.read_table(storage.fetch("fewshot", "samples", upstream_run(context, "fewshot_samples"), SAMPLES_FILE))
    y = np.array(table["label"].to_pylist())
    groups = np.array(table["group"].to_pylist())
    x_embedding = np.array(table["embedding"].to_pylist(), np.float32)
    ks = [k if k == "all" else int(k) for k in config.ks]
    curves = {"embeddings": kshot_curve(x_embedding, y, groups, ks, config.draws, config.head, config.seed)}
    if table["baseline"].null_count == 0:  # every sample has raw inputs (not so for imported embeddings)
        x_baseline = np.array(table["baseline"].to_pylist(), np.float32)
        curves["baseline"] = kshot_curve(x_baseline, y, groups, ks, config.draws, config.head, config.seed)
    for name, curve in curves.items():
        for point in curve:
            context.log.info(f"{name} k={point['k']}: macro-F1 {point['macro_f1']:.3f} ± {point['macro_f1_std']:.3f}")
    model = Classifier(config.head).fit(x_embedding, y, seed=config.seed)
    parts = ("fewshot", "classifiers", context.run_id)
    encoder_id = table.schema.metadata.get(b"encoder_id", b"unknown").decode()
    with storage.publish(*parts) as tmp:
        torch.save({"classifier": model, "curves": curves, "encoder_id": encoder_id}, tmp / CLASSIFIER_FILE)
        previews = preview_metadata("learning_curve", learning_curve_png(curves, tmp / "learning_curve.png", config.head),
                                    parts, "learning curve")
    baseline = curves.get("baseline") or [None] * len(curves["embeddings"])
    table_md = "| k | embeddings macro-F1 | baseline macro-F1 | embeddings accuracy |\n|---|---|---|---|\n" + "\n".join(
        f"| {e['k']} | {e['macro_f1']:.3f} ± {e['macro_f1_std']:.3f} | "
        + (f"{b['macro_f1']:.3f} ± {b['macro_f1_std']:.3f}" if b else "no raw inputs")
        + f" | {e['accuracy']:.3f} |" for e, b in zip(curves["embeddings"], baseline))
    return MaterializeResult(metadata={
        "head": config.head, "samples": len(y), "classes": len(np.unique(y)), "draws": config.draws,
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


def load_classifier(context: AssetExecutionContext, storage: TesseraStorage) -> tuple[Classifier, str]:
    """The fitted head and the encoder whose embeddings it was trained on."""
    run = upstream_run(context, "fewshot_classifier")
    saved = torch.load(storage.fetch("fewshot", "classifiers", run, CLASSIFIER_FILE), weights_only=False)
    return saved["classifier"], saved.get("encoder_id", "unknown")


@asset(partitions_def=year_region_partitions, deps=[AssetKey("embeddings"), fewshot_classifier],
       group_name="fewshot", kinds={"geotiff"}, code_version="land-cover-1")
def land_cover_map(context: AssetExecutionContext, storage: TesseraStorage) -> MaterializeResult:
    """The class and the classifier's confidence for every pixel, and the area of each class."""
    year, region = year_and_region(context)
    classifier, encoder_id = load_classifier(context, storage)
    embeddings = storage.open_embeddings(year, region)
    if embeddings.encoder_id != encoder_id:
        raise EncoderMismatchError(
            f"the classifier was trained on embeddings of encoder {encoder_id}, but {PartitionId(year, region)} was embedded by "
            f"{embeddings.encoder_id}: re-materialise the partition's embeddings or the few-shot assets")
    parts = ("land_cover", str(year), region)
    with storage.publish(*parts) as tmp:
        counts = write_class_map(embeddings, classifier.predict_proba, len(classifier.classes), tmp)
        previews = preview_metadata("map", class_map_png(tmp / "classes.tif", list(classifier.classes), tmp / "classes.png"),
                                    parts, "land cover")
    hectares = {str(c): round(float(n) * 0.01, 2) for c, n in zip(classifier.classes, counts)}
    return MaterializeResult(metadata={
        "class_area_ha": MetadataValue.json(hectares), "classified_pixels": int(sum(counts)), "encoder_id": encoder_id,
        **previews, "path": MetadataValue.path(storage.location(*parts)),
        "explorer": MetadataValue.url(explorer_url(year, region)),
    })
