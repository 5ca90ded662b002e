"""encoder_checkpoint (load official weights, or pretrain) and embeddings[year, region]."""

import json
import resource
import shutil
import time
from typing import TYPE_CHECKING

import numpy as np
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from model.config import EMBEDDING_DIM, PRESETS, matryoshka_prefix, preset, preset_normalisation
from model.selection import resolve_mode
from model.quantise import dequantise, quantise
from model.series import PixelSeries
from resources.compute import ComputeDevice
from resources.errors import PartitionNotMaterialisedError
from resources.storage.pixel_series import sample_pixels
from resources.previews import embedding_preview, loss_curve
from resources.storage.data_root import ENCODER_FILE, EmbeddingPartition, EmbeddingWriter, TesseraStorage
from tessera_assets.embeddings.streaming import embed_block, stream_partition
from tessera_assets.metadata import explorer_url, preview_metadata
from tessera_assets.partitions import materialised_partitions, year_and_region, year_region_partitions

if TYPE_CHECKING:
    from model.encoder import TesseraEncoder


class EncoderConfig(Config):
    """Either load a checkpoint (any official TESSERA release, or our own) or pretrain a preset on the raw data."""

    checkpoint_path: str | None = Field(
        None, description="official TESSERA checkpoint (v1.0, v1.1, v2 student) or one of ours, loaded instead of training")
    data_source: str | None = Field(
        None, description="TESSERA v1.1 only: 'mpc' or 'aws', the normalisation its weights were trained with")
    trusted_checkpoint: bool = Field(False, description="allow pickled objects in the checkpoint file")
    preset: str = Field("tessera-demo", description=f"preset to pretrain: {', '.join(PRESETS)}")
    steps: int = 400  # with learning_rate 2e-3: bench/fewshot_margin.py, README (200 steps lost to the baseline)
    batch_size: int = 128
    learning_rate: float = 2e-3
    pixels_per_partition: int = 4000
    pool_clusters: int = Field(0, ge=0, description=(
        "0: the pool's pixels drawn uniformly; N: drawn from 4x as many candidates, evenly over N k-means "
        "groups of their seasonal band means (model.pretraining_pool)"))
    seed: int = 0


def _pool_of(storage: TesseraStorage, year: int, region: str, config: EncoderConfig,
             rng: np.random.Generator) -> PixelSeries:
    """One partition's share of the pretraining pool (`EncoderConfig.pool_clusters`)."""
    from model.pretraining_pool import cluster_balanced

    s2, s1 = storage.open_raw("s2", year, region), storage.open_raw("s1", year, region)
    if not config.pool_clusters:
        return sample_pixels(s2, s1, config.pixels_per_partition, rng)
    candidates = sample_pixels(s2, s1, 4 * config.pixels_per_partition, rng)
    return cluster_balanced(candidates, config.pixels_per_partition, config.pool_clusters, rng)


def _identity_metadata(encoder: "TesseraEncoder") -> dict:
    identity = encoder.identity
    return {"encoder_id": identity.id, "family": identity.family, "architecture": identity.architecture,
            "normalisation": identity.normalisation, "weights_sha256": identity.weights_sha256,
            "preset": encoder.config.name, "parameters": encoder.parameter_count()}


@asset(deps=[AssetKey("s2_raw"), AssetKey("s1_raw")], group_name="model", pool="gpu", kinds={"pytorch"},
       code_version="encoder-2")
def encoder_checkpoint(context: AssetExecutionContext, config: EncoderConfig, storage: TesseraStorage,
                       compute: ComputeDevice) -> MaterializeResult:
    """The encoder every embeddings partition uses. Kept under its identity (family, architecture,
    normalisation, weights digest), never overwritten; the identity is the data version, so the UI
    marks embeddings made by another encoder stale."""
    from model.encoder import TesseraEncoder  # torch: imported by the runs that need it, not by every run
    from model.pretrain import PretrainConfig, pretrain, training_precision

    started = time.perf_counter()
    if config.checkpoint_path:
        encoder = TesseraEncoder.from_checkpoint(config.checkpoint_path, data_source=config.data_source,
                                                 trusted=config.trusted_checkpoint)
        path = storage.publish_encoder(encoder, {"source": config.checkpoint_path})
        context.log.info(f"loaded {encoder.identity.family} encoder {encoder.identity.id} from {config.checkpoint_path}")
        return MaterializeResult(data_version=DataVersion(encoder.identity.id), metadata={
            **_identity_metadata(encoder), "source": config.checkpoint_path, "path": MetadataValue.path(path),
            "seconds": round(time.perf_counter() - started, 2),
        })
    both = set(materialised_partitions(context.instance, "s2_raw")) & set(materialised_partitions(context.instance, "s1_raw"))
    partitions = [(p.year, p.region) for p in sorted(both)]
    if not partitions:
        raise ValueError("no raw partitions with both s2_raw and s1_raw to pretrain on: materialise some first")
    rng = np.random.default_rng(config.seed)
    pool = PixelSeries.concat([_pool_of(storage, y, r, config, rng) for y, r in partitions])
    context.log.info(f"pretraining {config.preset} on {len(pool)} pixels from {len(partitions)} partitions")
    device, _ = compute.resolve()
    precision = training_precision(device, compute.precision)
    train = PretrainConfig(steps=config.steps, batch_size=config.batch_size, learning_rate=config.learning_rate,
                           warmup_steps=max(1, config.steps // 10), seed=config.seed, precision=precision)

    def progress(step: int, loss: float) -> None:
        if step % 10 == 0 or step == train.steps:  # a count the progress view shows as a bar
            context.log.info(f"step {step}/{train.steps}: loss {loss:.3f}")

    model_config = preset(config.preset)
    scratch = storage.local("pretrain")  # the resumable state, on this machine
    encoder = pretrain(pool, model_config, train, scratch / "state.pt", device, progress,
                       preset_normalisation(model_config, config.data_source))
    encoder.metadata["partitions"] = [str(p) for p in sorted(both)]
    losses = encoder.metadata["losses"]
    curve = loss_curve(losses, scratch / "loss.png", f"{config.preset} Barlow Twins loss")
    path = storage.publish_encoder(encoder, {"source": "pretrained"}, files={"loss.png": curve})
    previews = preview_metadata("loss_curve", curve, ("models", encoder.identity.id), "loss curve")
    shutil.rmtree(scratch)
    return MaterializeResult(data_version=DataVersion(encoder.identity.id), metadata={
        **_identity_metadata(encoder), "steps": len(losses),
        "pixels": len(pool), "partitions": len(partitions), "device": str(device), "precision": precision,
        "first_loss": round(losses[0], 3), "final_loss": round(float(np.mean(losses[-10:])), 3),
        "seconds": round(time.perf_counter() - started, 1), "path": MetadataValue.path(path), **previews,
    })


def current_encoder_id(instance) -> str:
    """The one current encoder: the one `encoder_checkpoint`'s latest materialisation recorded. The
    `models/current.json` pointer in the data root is written from the same materialisation, for
    readers without the instance (the explorer, a one-off search)."""
    event = instance.get_latest_materialization_event(AssetKey("encoder_checkpoint"))
    if event is None:
        raise PartitionNotMaterialisedError("no encoder yet: materialise encoder_checkpoint first")
    return str(event.asset_materialization.metadata["encoder_id"].value)


def _pointer_check(storage: TesseraStorage, current: str | None, context) -> dict:
    """The data root's encoder pointer is derived from encoder_checkpoint's materialisations; say if it
    disagrees with the instance's current encoder (e.g. another instance published since)."""
    if current is None:
        return {}
    try:
        pointer = storage.current_encoder_id()
    except PartitionNotMaterialisedError:
        pointer = "none"
    if pointer != current:
        context.log.warning(f"models/current.json names encoder {pointer}, the instance's current one is {current}: "
                            "embedding with the instance's; re-materialise encoder_checkpoint to align them")
        return {"encoder_pointer": f"disagrees: {pointer}"}
    return {"encoder_pointer": "matches"}


class EmbeddingsConfig(Config):
    sampling: str = Field("auto", description=(
        "auto: the encoder family's own selection (v1.1 and v2: every valid observation, in buckets; "
        "v1.0 weights: 40 evenly spaced valid steps); v1.0 weights also take 'random' (v1.0's seeded draws)"))
    seed: int = Field(0, description="seed of random sampling, per block")
    dimensions: int = Field(EMBEDDING_DIM, description=(
        "Matryoshka prefix to store: 16, 32, 64 or 128; below 128 only for v2 encoders, whose first dimensions "
        "are usable alone"))
    encoder_id: str | None = Field(None, description="embed with this kept encoder instead of the current one")


# a partition failing these must not reach the table: blocking stops downstream steps of the run
READBACK_CHECKS = [
    AssetCheckSpec("finite_where_valid", asset="embeddings", blocking=True, description="no NaN/inf in embedded pixels"),
    AssetCheckSpec("positive_scales", asset="embeddings", blocking=True, description="scale > 0 wherever there is data"),
]
EMBEDDING_CHECKS = READBACK_CHECKS + [
    AssetCheckSpec("reproducible", asset="embeddings",
                   description="re-embedding a block gives the stored bytes (any selection but random)"),
]


@asset(partitions_def=year_region_partitions, deps=[AssetKey("s2_raw"), AssetKey("s1_raw"), AssetKey("encoder_checkpoint")],
       group_name="embeddings", pool="gpu", check_specs=EMBEDDING_CHECKS, kinds={"pytorch", "geotiff"},
       code_version="embeddings-3")
def embeddings(context: AssetExecutionContext, config: EmbeddingsConfig, storage: TesseraStorage,
               compute: ComputeDevice) -> MaterializeResult:
    """128-d TESSERA embeddings of every pixel, int8 + per-pixel scale, on the region grid."""
    from model.checkpoints import matryoshka_dims
    from model.inference import prepare_for_inference

    year, region = year_and_region(context)
    s2, s1 = storage.open_raw("s2", year, region), storage.open_raw("s1", year, region)
    device, precision = compute.resolve()
    encoder_id = config.encoder_id or current_encoder_id(context.instance)
    pointer = _pointer_check(storage, encoder_id if not config.encoder_id else None, context)
    encoder = prepare_for_inference(storage.load_encoder(encoder_id), device, precision, compute.threads)
    dims = matryoshka_prefix(encoder.config, config.dimensions, matryoshka_dims(encoder.metadata, encoder.config))
    grid = s2.grid
    batch, readers = compute.batch_for(device), compute.readers_for(device)
    parts = ("embeddings", str(year), region)
    with storage.publish(*parts) as tmp:
        writer = EmbeddingWriter(tmp, grid, dims)
        try:
            stats = stream_partition(encoder, s2, s1, writer, compute.block_size, config.sampling, config.seed,
                                     batch, precision, progress=context.log.info, readers=readers, dims=dims)
        finally:
            writer.close()
        (tmp / ENCODER_FILE).write_text(json.dumps(encoder.identity.to_dict() | {
            "preset": encoder.config.name, "dimensions": dims, "sampling": resolve_mode(encoder.config, config.sampling),
        }, indent=1))
        previews = preview_metadata("pca_preview", embedding_preview(tmp, tmp / "preview.png"),
                                    parts, "PCA of embeddings")
        checks = _checks(EmbeddingPartition(tmp), encoder, s2, s1, config, compute.block_size, batch, precision, dims)
    return MaterializeResult(
        metadata={
            "pixels": stats.pixels, "pixels_embedded": stats.embedded,
            "no_data_fraction": round(stats.no_data_fraction, 4),
            "pixels_per_second": round(stats.embedded / max(stats.seconds, 1e-9), 1),
            "forward_pixels_per_second": round(stats.embedded / max(stats.forward_seconds, 1e-9), 1),
            "end_to_end_over_forward": round(stats.forward_seconds / max(stats.seconds, 1e-9), 3),
            "seconds": round(stats.seconds, 2), "device": str(device), "precision": precision,
            "batch_size": batch, "readers": readers,
            **_identity_metadata(encoder), "dimensions": dims, **pointer,
            "sampling": resolve_mode(encoder.config, config.sampling),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "path": MetadataValue.path(storage.location(*parts)), "explorer": MetadataValue.url(explorer_url(year, region)),
            **previews,
        },
        check_results=checks,
    )


def readback_checks(partition: EmbeddingPartition) -> list[AssetCheckResult]:
    """Finite vectors and positive scales wherever there is data, read back block by block (memory
    stays bounded): what every embeddings partition must satisfy, however it was made."""
    valid_pixels, finite, positive = 0, True, True
    for window in partition.grid.blocks(256):
        q, scales = partition.read(window)
        valid = np.isfinite(scales)
        valid_pixels += int(valid.sum())
        finite &= bool(np.isfinite(dequantise(q[valid], scales[valid])).all())
        positive &= bool((scales[valid] > 0).all())
    return [AssetCheckResult(check_name="finite_where_valid", passed=finite, metadata={"valid_pixels": valid_pixels}),
            AssetCheckResult(check_name="positive_scales", passed=positive)]


def _checks(partition: EmbeddingPartition, encoder, s2, s1, config: EmbeddingsConfig, block: int, batch: int,
            precision, dims: int) -> list[AssetCheckResult]:
    """The read-back checks, and the first block re-embedded with the same block and batch sizes
    (GPU kernels may pick other algorithms for other shapes)."""
    window = partition.grid.blocks(block)[0]
    q_again, scales_again = quantise(
        embed_block(encoder, s2, s1, window, 0, config.sampling, config.seed, batch, precision)[..., :dims]
    )
    q_stored, scales_stored = partition.read(window)
    same = bool(np.array_equal(q_again, q_stored) and np.array_equal(scales_again, scales_stored, equal_nan=True))
    return readback_checks(partition) + [
        AssetCheckResult(check_name="reproducible", passed=same, severity=AssetCheckSeverity.WARN,
                         metadata={"sampling": config.sampling, "block": str(window)}),
    ]
