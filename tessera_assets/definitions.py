"""The code location: `dagster dev -w workspace.yaml` loads `defs` from here; `tessera` commands build
the same definitions with `build_definitions`, for the environment they run in."""

from __future__ import annotations

from dagster import Definitions, define_asset_job, load_assets_from_modules, multi_or_in_process_executor

from tessera_assets.change import assets as change_assets
from tessera_assets.embeddings import assets as embedding_assets
from tessera_assets.embeddings import imported
from tessera_assets.fewshot import assets as fewshot_assets
from tessera_assets.fewshot import labels
from tessera_assets.fewshot import regression as regression_assets
from tessera_assets.lineage import embeddings_imported, without_raw_inputs
from tessera_assets import pool_wait
from tessera_assets.raw import assets as raw_assets
from tessera_assets.resources_by_deployment import build_resources
from tessera_assets.sensors import region_partitions_sensor
from tessera_assets.vectors import assets as vector_assets

pool_wait.apply()  # every run worker loads this module: runs waiting for a pool slot sleep, not spin

# on Kubernetes (deploy/helm) the run pods of `embed` ask for a GPU and are counted by the run queue
GPU_RUN_TAGS = {"tessera/gpu": "1", "dagster-k8s/config": {"container_config": {"resources": {
    "limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}}}}


def build_definitions() -> Definitions:
    """The assets, jobs, sensors and resources of this deployment (TESSERA_* variables)."""
    downstream = load_assets_from_modules([vector_assets, fewshot_assets, regression_assets, change_assets, labels])
    if not embeddings_imported():  # embeddings computed from raw partitions by our encoder
        assets = load_assets_from_modules([raw_assets, embedding_assets]) + downstream
        jobs = [define_asset_job("raw_ingest", selection=["s2_raw", "s1_raw"]),
                define_asset_job("embed", selection=["embeddings"], tags=GPU_RUN_TAGS)]
    else:  # embeddings read from official tiles: no raw data, no encoder, no GPU
        assets = [imported.geotessera_tiles, imported.imported_embeddings] + without_raw_inputs(downstream)
        jobs = [define_asset_job("embed", selection=["embeddings"])]
    return Definitions(
        assets=assets,
        jobs=jobs,
        sensors=[region_partitions_sensor, vector_assets.index_after_writes, labels.labels_observed],
        resources=build_resources(),
        # multiprocess by default (one process per step, as many at once as CPUs); a run may choose
        # in_process in its run config, as `tessera` commands do for runs side by side
        executor=multi_or_in_process_executor,
    )


defs = build_definitions()
