"""The model card renders for every encoder, with or without a training record."""

from __future__ import annotations

from model.model_card import model_card

IDENTITY = {"id": "v1.0-x", "family": "v1.0", "architecture": "v1.0-d128", "normalisation": "v1.0", "weights_sha256": "ab"}


def test_a_card_without_a_training_record_says_what_is_unknown():
    card = model_card(IDENTITY, {"embedding_dim": 128, "family": "v1.0"}, 1234, {}, "pretrained")
    assert "on ? pixels of the partitions (not recorded): ? steps" in card and "| parameters | 1,234 |" in card


def test_a_card_with_its_training_record():
    training = {"pixels": 12000, "partitions": ["demo|2022"], "steps": 400, "losses": [5.0] + [1.0] * 10,
                "pretrain": {"batch_size": 128, "learning_rate": 0.002, "seed": 0}, "device": "cpu", "seconds": 250}
    card = model_card(IDENTITY, {"embedding_dim": 128, "family": "v1.0"}, 1234, training, "pretrained")
    assert "on 12,000 pixels of the partitions demo|2022: 400 steps of batch 128" in card
    assert "loss 5.000 -> 1.000." in card
