"""The code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

from __future__ import annotations

from dagster import Definitions, define_asset_job, load_assets_from_modules, multiprocess_executor

from tessera_assets.partitions import year_region_partitions
from tessera_assets.embeddings import assets as embedding_assets
from tessera_assets.fewshot import assets as fewshot_assets
from tessera_assets.raw import assets as raw_assets
from tessera_assets.vectors import assets as vector_assets
from tessera_assets.resources_by_deployment import build_resources
from tessera_assets.sensors import region_partitions_sensor

all_assets = load_assets_from_modules([raw_assets, embedding_assets, vector_assets, fewshot_assets])

raw_job = define_asset_job("raw_ingest", selection=["s2_raw", "s1_raw"], partitions_def=year_region_partitions)
embeddings_job = define_asset_job("embed", selection=["embeddings"], partitions_def=year_region_partitions)

defs = Definitions(
    assets=all_assets,
    jobs=[raw_job, embeddings_job],
    sensors=[region_partitions_sensor, vector_assets.index_after_writes],
    resources=build_resources(),
    executor=multiprocess_executor.configured({"max_concurrent": 2}),
)
