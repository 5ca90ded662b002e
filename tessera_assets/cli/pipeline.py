"""Materialising from the command line: an asset selection and partition keys, handed to Dagster.

The command line knows no asset by name. It asks the code location's asset graph what a selection
holds and in which order it can run. Assets that share their upstream's partitioning run together in
one run per partition; where the partitioning changes (per-partition raw data -> the one unpartitioned
encoder -> per-partition embeddings) a stage ends, because a Dagster run covers one partition key.
Each run is a run of the code location's asset job, executed by its executor (the definitions' process
limit) on the persistent instance (its pools, so the `gpu` and `lancedb` steps of runs side by side
still go one at a time); the runs of a stage go side by side, up to the instance's
`max_concurrent_runs`. Adding an asset to the definitions adds it to `tessera demo` and `tessera run`.
"""

from __future__ import annotations

import importlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from dagster import AssetKey, DagsterInstance, Definitions, execute_job
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.reconstruct import ReconstructableRepository

from resources.regions import PartitionId

DEFINITIONS_MODULE = "tessera_assets.definitions"


@dataclass(frozen=True)
class CodeLocation:
    """The Definitions the commands run: `tessera_assets.definitions` (TESSERA_DEFINITIONS names
    another module with a `defs`, e.g. a deployment's own that adds assets)."""

    module: str = field(default_factory=lambda: os.environ.get("TESSERA_DEFINITIONS", DEFINITIONS_MODULE))
    attribute: str = "defs"

    def definitions(self) -> Definitions:
        """The definitions for this process's environment: built afresh where the module can
        (`build_definitions`), as the step processes, which import it anew, will see them."""
        module = importlib.import_module(self.module)
        build = getattr(module, "build_definitions", None) if self.module == DEFINITIONS_MODULE else None
        return build() if build else getattr(module, self.attribute)

    def asset_job(self):
        """The asset job, reconstructable in the executor's step processes."""
        repository = ReconstructableRepository.for_module(self.module, self.attribute, working_directory=os.getcwd())
        return repository.get_reconstructable_job(IMPLICIT_ASSET_JOB_NAME)


@dataclass(frozen=True)
class Stage:
    """Assets that can run together: one run per partition, or one run if unpartitioned."""

    assets: tuple[AssetKey, ...]
    partitioned: bool

    @property
    def names(self) -> list[str]:
        return [key.to_user_string() for key in self.assets]


def plan_stages(asset_graph, selected: set[AssetKey]) -> list[Stage]:
    """The selected assets in stages, in the order the graph allows. An asset's stage is the latest
    of its selected parents', one later where its partitioning differs from a parent's."""
    level: dict[AssetKey, int] = {}
    for key in asset_graph.toposorted_asset_keys:
        if key not in selected:
            continue
        partitioned = asset_graph.get(key).partitions_def is not None
        level[key] = max((level[p] + ((asset_graph.get(p).partitions_def is not None) != partitioned)
                          for p in asset_graph.get(key).parent_keys if p in level), default=0)
    stages: dict[tuple[int, bool], list[AssetKey]] = {}
    for key, at in level.items():
        stages.setdefault((at, asset_graph.get(key).partitions_def is not None), []).append(key)
    return [Stage(tuple(keys), partitioned) for (_, partitioned), keys in sorted(stages.items())]


@dataclass
class RunOutcome:
    """What one run of a stage did: its materialisations' metadata, failed checks, the error."""

    stage: Stage
    partition: PartitionId | None
    run_id: str
    success: bool
    seconds: float
    materialised: dict[tuple[str, str], dict] = field(default_factory=dict)
    failed_checks: list[tuple[str, str, str]] = field(default_factory=list)  # (asset, check, partition)
    error: str | None = None

    @property
    def label(self) -> str:
        return ", ".join(self.stage.names) + (f" {self.partition}" if self.partition else "")


def _error_message(result) -> str:
    """The last line of each failed step's error (the message our errors carry), by step."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.event_specific_data.error
        line = (error.cause or error).message.strip().splitlines()[-1]
        kind, sep, message = line.partition(": ")
        messages.append(f"{event.step_key}: {message if sep and '.' in kind else line}")  # without the class path
    if messages:
        return messages[0] if len(messages) == 1 else "\n  " + "\n  ".join(messages)
    failure = result.get_run_failure_event()
    return failure.message if failure else "the run failed"


def _run_config(stage: Stage, op_config: dict[str, dict], resource_config: dict[str, dict]) -> dict:
    ops = {name: {"config": op_config[name]} for name in stage.names if name in op_config}
    return {**({"ops": ops} if ops else {}),
            **({"resources": {k: {"config": v} for k, v in resource_config.items()}} if resource_config else {})}


def run_stage(location: CodeLocation, stage: Stage, partition: PartitionId | None, instance: DagsterInstance,
              op_config: dict[str, dict], resource_config: dict[str, dict], partitions_def=None) -> RunOutcome:
    """One run of a stage's assets for one partition (or none)."""
    started = time.perf_counter()
    tags = dict(partitions_def.get_tags_for_partition_key(str(partition))) if partition else {}
    with execute_job(location.asset_job(), instance, run_config=_run_config(stage, op_config, resource_config),
                     tags=tags, asset_selection=list(stage.assets), raise_on_error=False) as result:
        outcome = RunOutcome(stage, partition, result.run_id, result.success, time.perf_counter() - started)
        key = str(partition or "")
        for event in result.get_asset_materialization_events():
            m = event.event_specific_data.materialization
            outcome.materialised[(m.asset_key.to_user_string(), key)] = {k: v.value for k, v in m.metadata.items()}
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed:
                outcome.failed_checks.append((evaluation.asset_key.to_user_string(), evaluation.check_name, key))
        if not result.success:
            outcome.error = _error_message(result)
    return outcome


def max_concurrent_runs(instance: DagsterInstance) -> int:
    """The instance's run limit (deploy/dagster.yaml `concurrency.runs.max_concurrent_runs`)."""
    queue = instance.get_concurrency_config().run_queue_config
    return max(1, queue.max_concurrent_runs if queue and queue.max_concurrent_runs > 0 else 1)


def execute(location: CodeLocation, stages: list[Stage], partitions: list[PartitionId], instance: DagsterInstance,
            op_config: dict[str, dict] | None = None, resource_config: dict[str, dict] | None = None,
            on_run: Callable[[RunOutcome], None] = lambda outcome: None) -> list[RunOutcome]:
    """Every stage in order, its partitions' runs side by side; stops after a stage with a failed run
    (the runs of that stage all finish: one bad partition does not cancel the others)."""
    asset_graph = location.definitions().get_repository_def().asset_graph
    outcomes: list[RunOutcome] = []
    for stage in stages:
        if stage.partitioned:
            partitions_def = asset_graph.get(stage.assets[0]).partitions_def
            with ThreadPoolExecutor(max_workers=min(len(partitions), max_concurrent_runs(instance))) as pool:
                futures = [pool.submit(run_stage, location, stage, p, instance, op_config or {}, resource_config or {},
                                       partitions_def) for p in partitions]
                done = []
                for future in futures:
                    done.append(future.result())
                    on_run(done[-1])
        else:
            done = [run_stage(location, stage, None, instance, op_config or {}, resource_config or {})]
            on_run(done[-1])
        outcomes += done
        if not all(o.success for o in done):
            break
    return outcomes
