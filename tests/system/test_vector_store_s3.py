"""The embedding table on an object store: the same VectorStore configuration with an s3:// URI,
against a local S3 endpoint (moto's server, started by the test)."""

from __future__ import annotations

import numpy as np
import pytest
from dagster import materialize

from conftest import TINY_REGION, TINY_YEAR
from resources.table.similarity import Similarity
from resources.table.vector_store import VectorStore
from tessera_assets.partitions import year_region_key
from tessera_assets.vectors.assets import embedding_table


@pytest.fixture()
def s3_store(s3_endpoint):
    return VectorStore(uri="s3://tessera/lancedb", storage_options={
        "aws_endpoint": s3_endpoint.url, "aws_region": "us-east-1", "allow_http": "true",
        "aws_access_key_id": s3_endpoint.key_id, "aws_secret_access_key": s3_endpoint.secret})


def test_embedding_table_on_s3(embedded_env, s3_store):
    env, instance, _, _ = embedded_env
    resources = dict(env.resources, vectors=s3_store)
    key = year_region_key(TINY_YEAR, TINY_REGION)
    for _ in range(2):
        assert materialize([embedding_table], partition_key=key, instance=instance, resources=resources).success
    table = s3_store.table()
    embedded = env.resources["storage"].open_embeddings(TINY_YEAR, TINY_REGION).read()[1]
    assert table.count_rows() == int(np.isfinite(embedded).sum()), "re-running on S3 never duplicates"
    report = s3_store.refresh_index()  # scalar indexes and compaction on the object store
    assert report.table_rows == table.count_rows() and report.type == "none (exact search)"
    assert {ix.columns[0] for ix in table.list_indices()} >= {"key", "h3_r7", "year", "region", "encoder_id"}
    similarity = Similarity(s3_store)
    row = table.search().limit(1).to_arrow().to_pylist()[0]
    found = similarity.search(np.asarray(row["vector"], np.float32), k=3)
    assert found["key"][0].as_py() == row["key"]
