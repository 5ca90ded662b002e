"""A model card for every encoder we keep: what it is, what it was trained on and how, what its
embeddings are fit for and where they are not, in the shape the Geo-Embeddings Sprint's example
model card uses (geoembeddings.org/model-card.html), as Markdown beside the checkpoint."""

from __future__ import annotations

from typing import Any

from model.config import MATRYOSHKA_DIMS

PAPER = "Feng et al. 2025, TESSERA: Temporal Embeddings of Surface Spectra for Earth Representation and Analysis, arXiv:2506.20380"


def model_card(identity: dict[str, Any], config: dict[str, Any], parameters: int, training: dict[str, Any],
               source: str) -> str:
    """The card's Markdown. `identity` is the encoder identity, `config` its ModelConfig as a
    dict, `training` what pretraining recorded (empty for a loaded checkpoint), `source` where
    the weights came from ("pretrained" or the checkpoint's path)."""
    pretrained = source == "pretrained"
    losses = training.get("losses") or []
    prefixes = training.get("matryoshka_dims") or ([d for d in MATRYOSHKA_DIMS if d <= config.get("embedding_dim", 128)]
                                                    if config.get("family") == "v2" else [])
    rows = [
        ("encoder id", identity["id"]), ("family", f"TESSERA {identity['family']}"),
        ("architecture", identity["architecture"]), ("parameters", f"{parameters:,}"),
        ("input normalisation", identity["normalisation"]), ("weights sha256", identity["weights_sha256"]),
        ("embedding", f"{config.get('embedding_dim', 128)} dimensions a 10 m pixel a year"
                      + (f"; usable prefixes {', '.join(map(str, prefixes))}" if prefixes else "")),
        ("storage", "int8 per dimension x a float32 scale per pixel (TESSERA's format)"),
        ("weights", "pretrained by this platform (below)" if pretrained else f"loaded from {source}"),
    ]
    card = ["# Model card: " + identity["id"], "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    card += ["## Inputs", "",
             "A year of Sentinel-2 L2A (10 bands, SCL-masked, baseline offset removed) and Sentinel-1 RTC "
             "(VV, VH in TESSERA units, both orbit directions) observations of one pixel, with their days of year; "
             "no spatial context (each pixel is embedded alone).", ""]
    if pretrained:
        pretrain = training.get("pretrain", {})
        card += ["## Training", "",
                 f"Self-supervised (Barlow Twins on two temporal views of each pixel, with mixup) on "
                 f"{_count(training.get('pixels'))} pixels of the partitions "
                 f"{', '.join(training.get('partitions', [])) or '(not recorded)'}: {training.get('steps', '?')} steps "
                 f"of batch {pretrain.get('batch_size', '?')}, learning rate {pretrain.get('learning_rate', '?')}, seed "
                 f"{pretrain.get('seed', '?')}, on {training.get('device', '?')} in {training.get('seconds', '?')} s"
                 + (f"; loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f}." if losses else "."), ""]
    card += ["## Fit for use", "",
             "Few-shot classification and regression, similarity search and change between years, within the "
             "regions and years its training covered" + (" (a few demo regions: a demonstration, not a general "
                                                           "model; load an official TESSERA checkpoint for real work)"
                                                           if pretrained else "") + ".", "",
             "## Limitations", "",
             "- Embeddings of different encoders are different spaces: compare or search only within one encoder id.",
             "- Pixels with few valid observations (clouds, gaps) embed less reliably; see each partition's "
             "`enough_observations` check.",
             "- One vector a year: changes within the year are summarised, not located in time.", "",
             "## Citation", "", PAPER, ""]
    return "\n".join(card)


def _count(value: Any) -> str:
    """A count with thousands separators, or "?" where training did not record it."""
    return f"{value:,}" if isinstance(value, int) else "?"
