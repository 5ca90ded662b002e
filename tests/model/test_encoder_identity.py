"""Vectors of different encoders are different embedding spaces: search and few-shot never mix them."""

from __future__ import annotations

import numpy as np
import pytest

from resources.errors import EncoderMismatchError, single_encoder
from resources.table.similarity import SearchFilter, Similarity
from resources.table.vector_store import VectorStore
from resources.testing.synthetic_table import synthetic_rows

ENCODERS = ("v2-d128-l2-h4-f256-o128.v2.aaaaaaaaaaaa", "v1.0-d512-l4-h4-f4096-o128.v1.0.bbbbbbbbbbbb")


def test_search_refuses_a_table_of_two_encoders_unless_one_is_named(tmp_path):
    rng = np.random.default_rng(0)
    store = VectorStore(uri=str(tmp_path / "db"))
    table = store.table(128)
    table.add(synthetic_rows(rng.standard_normal((60, 128)), encoder_id=ENCODERS[0]))
    query = rng.standard_normal(128).astype(np.float32)
    assert len(Similarity(store).search(query, k=5)) == 5  # one encoder: no question
    table.add(synthetic_rows(rng.standard_normal((60, 128)), encoder_id=ENCODERS[1], first=1000))
    similarity = Similarity(store)
    with pytest.raises(EncoderMismatchError) as info:
        similarity.search(query, k=5)
    assert ENCODERS[0] in str(info.value) and ENCODERS[1] in str(info.value)
    for encoder_id in ENCODERS:
        hits = similarity.search(query, k=5, filters=SearchFilter(encoder_id=encoder_id))
        assert len(hits) == 5 and set(hits["encoder_id"].to_pylist()) == {encoder_id}


def test_one_encoder_is_chosen_or_the_mix_is_named():
    assert single_encoder({"a"}, None, "x") == "a"
    assert single_encoder({"a", "b"}, "b", "x") == "b"
    with pytest.raises(EncoderMismatchError, match=r"x mixes vectors of several encoders \(a and b\)"):
        single_encoder(["b", "a"], None, "x")
    with pytest.raises(EncoderMismatchError, match="holds no vectors of encoder 'c'"):
        single_encoder({"a"}, "c", "x")
