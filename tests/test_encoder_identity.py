"""Vectors of different encoders are different embedding spaces: search and few-shot never mix them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from resources.errors import EncoderMismatchError, single_encoder
from resources.similarity import SearchFilter, Similarity
from resources.vector_store import VectorStore, table_schema

ENCODERS = ("v2-d128-l2-h4-f256-o128.v2.aaaaaaaaaaaa", "v1.0-d512-l4-h4-f4096-o128.v1.0.bbbbbbbbbbbb")


def _rows(encoder_id: str, start: int, count: int, rng) -> pa.Table:
    vectors = rng.standard_normal((count, 128)).astype(np.float32)
    n = count
    return pa.table({
        "key": [f"2022-{start + i:x}" for i in range(n)], "year": pa.array([2022] * n, pa.int32()),
        "region": ["r"] * n, "row": pa.array(np.arange(n), pa.int32()), "col": pa.array(np.zeros(n), pa.int32()),
        "lon": np.linspace(0.1, 0.2, n), "lat": np.linspace(52.1, 52.2, n),
        "h3_r13": pa.array(np.arange(n), pa.int64()), "h3_r9": pa.array(np.arange(n), pa.int64()),
        "h3_r7": pa.array(np.arange(n), pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 128),
        "s2_obs": pa.array(np.ones(n), pa.int16()), "s1_obs": pa.array(np.ones(n), pa.int16()),
        "encoder_id": [encoder_id] * n,
    }, schema=table_schema(128))


@pytest.mark.parametrize("engine", ["lancedb", "memory"])
def test_search_refuses_a_table_of_two_encoders_unless_one_is_named(tmp_path, engine):
    rng = np.random.default_rng(0)
    store = VectorStore(uri=str(tmp_path / "db"))
    table = store.table(128)
    table.add(_rows(ENCODERS[0], 0, 60, rng))
    query = rng.standard_normal(128).astype(np.float32)
    assert len(Similarity(store, engine=engine).search(query, k=5)) == 5  # one encoder: no question
    table.add(_rows(ENCODERS[1], 1000, 60, rng))
    similarity = Similarity(store, engine=engine)
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
