"""Few-shot regression: a continuous quantity (canopy height, biomass, yield) from the labels' value
field, evaluated honestly on embeddings and on the raw-input baseline, and mapped for every pixel."""

import time

import numpy as np
import rasterio
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from model.quantise import dequantise
from model.regression import DEFAULT_REGRESSION_HEAD, Regressor, nshot_regression_curve
from resources.errors import EncoderMismatchError, LabelsError
from resources.labels import LabelSource
from resources.previews import raster_png, regression_curve_png
from resources.regions import PartitionId
from resources.storage.data_root import TesseraStorage
from tessera_assets.fewshot.assets import feature_sets, fewshot_samples, read_samples, upstream_run
from tessera_assets.fewshot.saved_heads import load_head, save_head
from tessera_assets.metadata import explorer_url, preview_metadata
from tessera_assets.partitions import year_and_region, year_region_partitions

REGRESSOR_FILE = "regressor.pt"
STAT_SAMPLE_PER_BLOCK = 4096  # of a 256 x 256 block's values, for the map's percentiles


class RegressorConfig(Config):
    head: str = Field(DEFAULT_REGRESSION_HEAD, description="ridge, knn, forest or mlp")
    ns: list[str] = Field(["10", "20", "50", "100", "200", "all"], description="labelled pixels to evaluate")
    draws: int = 10
    seed: int = 0


def _curve_table(curves: dict[str, list[dict]], unit: str) -> str:
    rows = []
    baseline = curves.get("baseline") or [None] * len(curves["embeddings"])
    for e, b in zip(curves["embeddings"], baseline):
        rows.append(f"| {e['n']} | {e['r2']:.3f} ± {e['r2_std']:.3f} | "
                    + (f"{b['r2']:.3f} ± {b['r2_std']:.3f}" if b else "no raw inputs")
                    + f" | {e.get('class_mean_r2', float('nan')):.3f} | {e['rmse']:.3g} | {e['mae']:.3g} |")
    return (f"| n | embeddings R² | baseline R² | class mean R² | embeddings RMSE ({unit}) | MAE ({unit}) |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))


# needs a value field in the labels (label_source.value_field), which classification does not
@asset(deps=[fewshot_samples], group_name="fewshot", kinds={"scikitlearn"}, code_version="regressor-1",
       tags={"tessera/needs": "values"})
def fewshot_regressor(context: AssetExecutionContext, config: RegressorConfig, storage: TesseraStorage,
                      label_source: LabelSource) -> MaterializeResult:
    """The n-shot protocol on the labels' values (R², RMSE, MAE over draws, on embeddings and on
    the raw-input baseline, beside what each sample's class alone predicts), then the head fitted
    on every labelled pixel."""
    started = time.perf_counter()
    table = read_samples(storage, upstream_run(context, "fewshot_samples"))
    if "value" not in table.column_names or table["value"].null_count == table.num_rows:
        raise LabelsError("the labels carry no values to regress: set `value_field` of the label_source resource "
                          "to their numeric property (e.g. biomass), then materialise fewshot_samples again")
    y = np.array(table["value"].to_pylist(), np.float64)
    groups = np.array(table["group"].to_pylist())
    classes = np.array(table["label"].to_pylist())
    features = feature_sets(table)
    x_embedding = features["embeddings"]
    ns = [n if n == "all" else int(n) for n in config.ns]
    # the class-mean reference is the same for both feature sets: it is scored with the embeddings' draws
    curves = {name: nshot_regression_curve(x, y, groups, ns, config.draws, config.head, config.seed,
                                           classes if name == "embeddings" else None) for name, x in features.items()}
    for name, curve in curves.items():
        for point in curve:
            context.log.info(f"{name} n={point['n']}: R² {point['r2']:.3f} ± {point['r2_std']:.3f}")
    model = Regressor(config.head).fit(x_embedding, y, seed=config.seed)
    unit = label_source.value_field or "value"
    encoder_id = table.schema.metadata.get(b"encoder_id", b"unknown").decode()
    parts = ("fewshot", "regressors", context.run_id)
    with storage.publish(*parts) as tmp:
        save_head({"regressor": model, "curves": curves, "encoder_id": encoder_id, "unit": unit,
                   "range": [float(y.min()), float(y.max())]}, tmp / REGRESSOR_FILE)
        png = regression_curve_png(curves, tmp / "learning_curve.png", config.head, unit)
        previews = preview_metadata("learning_curve", png, parts, "regression learning curve")
    return MaterializeResult(metadata={
        "head": config.head, "samples": len(y), "value_field": unit, "draws": config.draws, "encoder_id": encoder_id,
        "value_mean": round(float(y.mean()), 3), "value_std": round(float(y.std()), 3),
        **previews, "scores": MetadataValue.md(_curve_table(curves, unit)), "curves": MetadataValue.json(curves),
        "seconds": round(time.perf_counter() - started, 1),
        "path": MetadataValue.path(storage.location(*parts) + f"/{REGRESSOR_FILE}"),
    })


@asset(partitions_def=year_region_partitions, deps=[AssetKey("embeddings"), fewshot_regressor],
       group_name="fewshot", kinds={"geotiff"}, code_version="value-map-1")
def value_map(context: AssetExecutionContext, storage: TesseraStorage) -> MaterializeResult:
    """The regressed value of every pixel (float32 GeoTIFF, NaN: no data), a PNG with a colour bar,
    and its summary statistics."""
    year, region = year_and_region(context)
    saved = load_head(storage.fetch("fewshot", "regressors", upstream_run(context, "fewshot_regressor"), REGRESSOR_FILE))
    embeddings = storage.open_embeddings(year, region)
    if embeddings.encoder_id != saved["encoder_id"]:
        raise EncoderMismatchError(
            f"the regressor was trained on embeddings of encoder {saved['encoder_id']}, but {PartitionId(year, region)} "
            f"was embedded by {embeddings.encoder_id}: re-materialise the partition's embeddings or the few-shot assets")
    grid, model, unit = embeddings.grid, saved["regressor"], saved["unit"]
    parts = ("value_map", str(year), region)
    # the statistics from every pixel's running sums and a bounded random sample for the percentiles
    rng = np.random.default_rng(0)
    total, count, sample = 0.0, 0, []
    with storage.publish(*parts) as tmp:
        profile = grid.geotiff_profile(count=1, dtype="float32", nodata=float("nan"))
        with rasterio.open(tmp / "values.tif", "w", **profile) as dst:
            dst.set_band_description(1, unit)
            for window in grid.blocks(256):
                q, scales = embeddings.read(window)
                out = np.full(scales.shape, np.nan, np.float32)
                valid = np.isfinite(scales)
                if valid.any():
                    out[valid] = model.predict(dequantise(q[valid], scales[valid]))
                    total, count = total + float(out[valid].sum()), count + int(valid.sum())
                    sample.append(rng.choice(out[valid], min(int(valid.sum()), STAT_SAMPLE_PER_BLOCK), replace=False))
                dst.write(out[None], window=window)
        low, high = saved["range"]
        previews = preview_metadata("map", raster_png(tmp / "values.tif", tmp / "values.png", "viridis", unit, low, high),
                                    parts, f"{unit} map")
    every = np.concatenate(sample) if sample else np.zeros(0, np.float32)
    stats = {"mean": total / count, "p10": float(np.percentile(every, 10)), "median": float(np.median(every)),
             "p90": float(np.percentile(every, 90))} if count else {}
    return MaterializeResult(metadata={
        "value_field": unit, "pixels": count, **{k: round(v, 3) for k, v in stats.items()},
        "outside_label_range": round(float(np.mean((every < low) | (every > high))), 4) if count else 0.0,
        **previews, "path": MetadataValue.path(storage.location(*parts)),
        "explorer": MetadataValue.url(explorer_url(year, region)),
    })
