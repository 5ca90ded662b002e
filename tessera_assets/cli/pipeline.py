"""Materialising from the command line: an asset selection and partition keys, handed to Dagster.

The command line knows no asset by name. It asks the code location's asset graph what a selection
holds and in which order it can run. Assets that share their upstream's partitioning run together in
one run per partition; where the partitioning changes (per-partition raw data -> the one unpartitioned
encoder -> per-partition embeddings), or where an asset reads other partitions of its upstream (the
similarity maps read every partition of the table), a stage ends: a Dagster run covers one partition key.
Each run is a run of the code location's asset job, created in the persistent instance and executed in
a process of its own, as Dagster's run launcher starts it (`dagster api execute_run`); the runs of a
stage go side by side, up to the instance's `max_concurrent_runs` and no more than the stage's pools
keep busy (`stage_run_limit`: one at a time for the encoder's `gpu` step, two for the embeddings and
their table rows, one in each pool), so no run is started only to wait for a slot. A run alone in
its stage uses the definitions' multiprocess executor (the raw stage's S2 and S1 side by side); runs
side by side execute their steps in their own process, since the runs already fill the cores. (Runs
cannot share one process: Dagster reconfigures logging per run, which deadlocks across threads.)
Adding an asset to the definitions adds it to `tessera demo` and `tessera run`.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dagster import (AllPartitionMapping, AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, Definitions, IdentityPartitionMapping,
                     JobDefinition, RunsFilter)
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster._grpc.types import ExecuteRunArgs

from resources.regions import PartitionId

DEFINITIONS_MODULE = "tessera_assets.definitions"
# how often running runs are looked at: often enough for a live bar, rarely enough to cost the
# runs next to it nothing measurable (the event log is read since a cursor)
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class CodeLocation:
    """The Definitions the commands run: `tessera_assets.definitions` (TESSERA_DEFINITIONS names
    another module with a `defs`, e.g. a deployment's own that adds assets)."""

    module: str = field(default_factory=lambda: os.environ.get("TESSERA_DEFINITIONS", DEFINITIONS_MODULE))
    attribute: str = "defs"

    def definitions(self) -> Definitions:
        """The definitions for this process's environment, built once per command: afresh where the
        module can (`build_definitions`), as the run processes, which import it anew, will see them."""
        return self._definitions

    @functools.cached_property
    def _definitions(self) -> Definitions:
        module = importlib.import_module(self.module)
        build = getattr(module, "build_definitions", None) if self.module == DEFINITIONS_MODULE else None
        return build() if build else getattr(module, self.attribute)

    @functools.cached_property
    def asset_job(self) -> JobDefinition:
        """The asset job of `definitions()`: what a run is planned from."""
        return self.definitions().get_repository_def().get_job(IMPLICIT_ASSET_JOB_NAME)

    @functools.cached_property
    def job_origin(self):
        """Where a run's own process loads the asset job from (this module, in this working directory)."""
        repository = ReconstructableRepository.for_module(self.module, self.attribute, working_directory=os.getcwd())
        return repository.get_reconstructable_job(IMPLICIT_ASSET_JOB_NAME).get_python_origin()


@dataclass(frozen=True)
class Stage:
    """Assets that can run together: one run per partition, or one run if unpartitioned."""

    assets: tuple[AssetKey, ...]
    partitioned: bool

    @property
    def names(self) -> list[str]:
        return [key.to_user_string() for key in self.assets]

    def label(self, partition: PartitionId | None) -> str:
        """How a run of this stage is named for people: its assets and partition."""
        return ", ".join(self.names) + (f" {partition}" if partition else "")


def _boundary(asset_graph, child: AssetKey, parent: AssetKey) -> int:
    """1 where a child cannot run in its parent's run: their partitioning differs, or the child reads
    other partitions of the parent than its own (e.g. every partition of the table); else 0."""
    child_def, parent_def = asset_graph.get(child).partitions_def, asset_graph.get(parent).partitions_def
    if (child_def is None) != (parent_def is None):
        return 1
    if child_def is None:
        return 0
    return 0 if isinstance(asset_graph.get_partition_mapping(child, parent), IdentityPartitionMapping) else 1


def plan_stages(asset_graph, selected: set[AssetKey]) -> list[Stage]:
    """The selected assets in stages, in the order the graph allows. An asset's stage is the latest
    of its selected parents', one later where it cannot run in a parent's run (`_boundary`); an asset
    with no selected parent (the labels source) joins the stage of its first child instead, so it
    costs no run of its own and is read just before it is used; a stage of nothing but assets no
    selected asset reads (the change and similarity maps) joins the last stage of its partitioning,
    in the runs that stage starts anyway (each run is a process to start and a code location to load)."""
    level: dict[AssetKey, int] = {}
    for key in asset_graph.toposorted_asset_keys:
        if key not in selected:
            continue
        level[key] = max((level[p] + _boundary(asset_graph, key, p) for p in asset_graph.get(key).parent_keys
                          if p in level), default=0)
    for key in reversed(asset_graph.toposorted_asset_keys):  # a root runs as late as its children allow
        if key in level and not any(p in level for p in asset_graph.get(key).parent_keys):
            children = [level[c] - _boundary(asset_graph, c, key) for c in asset_graph.get(key).child_keys if c in level]
            level[key] = min(children, default=level[key])

    def stage_of(key: AssetKey) -> tuple[int, bool]:
        return level[key], asset_graph.get(key).partitions_def is not None

    def sink(key: AssetKey) -> bool:
        node = asset_graph.get(key)
        return any(p in level for p in node.parent_keys) and not any(c in level for c in node.child_keys)

    latest: dict[bool, int] = {}  # the last stage of each partitioning
    for at, partitioned in map(stage_of, level):
        latest[partitioned] = max(latest.get(partitioned, at), at)
    # a stage of nothing but what no selected asset reads joins its partitioning's last stage: its runs,
    # not runs of its own (a sink sharing a stage with other assets stays in their runs)
    lone = {stage_of(k) for k in level} - {stage_of(k) for k in level if not sink(k)}
    for key in [k for k in level if stage_of(k) in lone]:
        level[key] = latest[stage_of(key)[1]]
    stages: dict[tuple[int, bool], list[AssetKey]] = {}
    for key in level:
        stages.setdefault(stage_of(key), []).append(key)
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
    started: float = 0.0  # time.perf_counter() when the run was launched
    planned: Stage | None = None  # the planned stage it belongs to (`stage` may hold fewer of its assets)

    @property
    def label(self) -> str:
        return self.stage.label(self.partition)


def _error_message(failures: list[tuple]) -> str:
    """The last line of each failed step's error (the message our errors carry), by step; or the
    run's failure message."""
    messages = []
    for step, error, *message in failures:
        if error is None:
            messages.append(message[0] if message else "the run failed")
            continue
        line = (error.cause or error).message.strip().splitlines()[-1]
        kind, sep, text = line.partition(": ")
        messages.append(f"{step}: {text if sep and '.' in kind else line}")  # without the class path
    return messages[0] if len(messages) == 1 else "\n  " + "\n  ".join(messages)


def _run_config(stage: Stage, op_config: dict[str, dict], resource_config: dict[str, dict]) -> dict:
    ops = {name: {"config": op_config[name]} for name in stage.names if name in op_config}
    return {**({"ops": ops} if ops else {}),
            **({"resources": {k: {"config": v} for k, v in resource_config.items()}} if resource_config else {})}


@dataclass
class LaunchedRun:
    """A run created in the instance and executing in its own process (`dagster api execute_run`,
    what Dagster's default run launcher starts), its output in a log file."""

    stage: Stage
    partition: PartitionId | None
    run_id: str
    process: subprocess.Popen
    started: float
    cursor: str | None = None  # of the run's events the view has seen

    @property
    def label(self) -> str:
        return self.stage.label(self.partition)


def launch(location: CodeLocation, stage: Stage, partition: PartitionId | None, instance: DagsterInstance,
           run_config: dict, partitions_def, logs: Path) -> LaunchedRun:
    """One run of a stage's assets for one partition (or none), started in a new process."""
    tags = dict(partitions_def.get_tags_for_partition_key(str(partition))) if partition else {}
    run = instance.create_run_for_job(job_def=location.asset_job, run_config=run_config, tags=tags,
                                      asset_selection=frozenset(stage.assets), job_code_origin=location.job_origin)
    args = ExecuteRunArgs(job_origin=location.job_origin, run_id=run.run_id, instance_ref=instance.get_ref())
    command = [sys.executable, "-m", "dagster", *args.get_command_args()[-3:]]  # api execute_run ARGS, this Python
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{run.run_id}.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return LaunchedRun(stage, partition, run.run_id, process, time.perf_counter())


def outcome_of(launched: LaunchedRun, instance: DagsterInstance) -> RunOutcome:
    """What a finished run did, read back from the instance's event log."""
    launched.process.wait()
    run = instance.get_run_by_id(launched.run_id)
    success = run is not None and run.status == DagsterRunStatus.SUCCESS
    outcome = RunOutcome(launched.stage, launched.partition, launched.run_id, success,
                         time.perf_counter() - launched.started, started=launched.started)
    key = str(launched.partition or "")
    failures = []
    for record in instance.all_logs(launched.run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            m = event.event_specific_data.materialization
            outcome.materialised[(m.asset_key.to_user_string(), key)] = {k: v.value for k, v in m.metadata.items()}
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed:
                outcome.failed_checks.append((evaluation.asset_key.to_user_string(), evaluation.check_name, key))
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            failures.append((event.step_key, event.event_specific_data.error))
        elif event.event_type == DagsterEventType.RUN_FAILURE and not failures:
            failures.append((None, None, record.message))
    if not success:
        outcome.error = _error_message(failures) or f"the run ended {run.status.value.lower() if run else 'unknown'}"
    return outcome


def max_concurrent_runs(instance: DagsterInstance) -> int:
    """The instance's run limit (deploy/dagster.yaml `concurrency.runs.max_concurrent_runs`)."""
    queue = instance.get_concurrency_config().run_queue_config
    return max(1, queue.max_concurrent_runs if queue and queue.max_concurrent_runs > 0 else 1)


def free_slots_of_ended_runs(instance: DagsterInstance) -> int:
    """Give back the pool slots that runs which have ended still hold (a run whose process was killed
    mid-step never frees its own): what the daemon's run monitoring does under `make dev`
    (`free_slots_after_run_end_seconds`), done by the commands, which run without a daemon. A leaked
    `gpu` slot would otherwise keep every later embeddings step waiting. Returns how many ended runs
    held slots."""
    storage = instance.event_log_storage
    holders = list(storage.get_concurrency_run_ids())
    if not holders:
        return 0
    ended = instance.get_run_records(RunsFilter(run_ids=holders, statuses=list(FINISHED_STATUSES)))
    for record in ended:
        storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
    return len(ended)


def pool_limit(instance: DagsterInstance, pool: str) -> int | None:
    """Steps of `pool` the instance lets run at once: its set limit (`dagster instance concurrency
    set`), else the instance's `pools.default_limit`; None where neither limits it."""
    storage = instance.event_log_storage
    if pool in storage.get_concurrency_keys():
        return max(1, storage.get_concurrency_info(pool).slot_count)
    return instance.get_concurrency_config().pool_config.default_pool_limit


def stage_run_limit(asset_graph, stage: Stage, instance: DagsterInstance) -> int:
    """Runs of a stage to start at once: as many as its pools keep busy, and no more than the
    instance's run limit. A stage whose steps are in pools runs the sum of their limits: the
    embeddings stage (one `gpu` slot, one `lancedb`) runs two, one embedding while the other writes
    its rows or starts up (the demo's embeddings stage, two at once against one: 180 against 247 s
    on a 2-core Xeon, 136 against 151 s on a 2-core EPYC). A run started beyond that only waits in
    its step for a slot, holding a process of some 400 MB (and before `pool_wait` mended Dagster
    1.13's executors, spinning a core). A stage in no pool, or with a pool without a limit, has the
    instance's limit."""
    pools = dict.fromkeys(pool for key in stage.assets for pool in (asset_graph.get(key).pools or ()))
    limits = [pool_limit(instance, pool) for pool in pools]
    runs = max_concurrent_runs(instance)
    return runs if not limits or None in limits else min(runs, sum(limits))


def _follow(launched: LaunchedRun, instance: DagsterInstance, view) -> None:
    """The run's events since the last look, to the view: the step it is in, its log messages."""
    connection = instance.get_records_for_run(launched.run_id, cursor=launched.cursor)
    launched.cursor = connection.cursor
    for record in connection.records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None:
            view.run_message(launched.run_id, entry.step_key, entry.user_message)
        elif event.event_type == DagsterEventType.STEP_START:
            view.run_step(launched.run_id, event.step_key)


def missing_inputs(asset_graph, asset: AssetKey, within: tuple[AssetKey, ...], partition: PartitionId,
                   instance: DagsterInstance, materialised: dict[AssetKey, set[str]] | None = None) -> list[str]:
    """The partitions outside its run (`within`) that `asset` would read for `partition` and the
    instance has not materialised (a change map of the first year reads the embeddings of the year
    before): that asset is left out of the partition's run, and the terminal says why.
    `materialised` keeps each parent's materialised partitions across calls (one query a parent)."""
    materialised = {} if materialised is None else materialised
    from dagster._core.definitions.partitions.context import partition_loading_context

    from tessera_assets.partitions import year_region_key

    key = year_region_key(partition.year, partition.region)
    missing = []
    with partition_loading_context(dynamic_partitions_store=instance):
        for parent in asset_graph.get(asset).parent_keys:
            node = asset_graph.get(parent)
            if parent in within or node.partitions_def is None or not node.is_materializable:
                continue
            if isinstance(asset_graph.get_partition_mapping(asset, parent), AllPartitionMapping):
                continue  # it reads whichever partitions exist (the similarity map: every partition of the table)
            wanted = asset_graph.get_parent_partition_keys_for_child(key, parent, asset).partitions_subset
            if parent not in materialised:
                materialised[parent] = instance.get_materialized_partitions(parent)
            have = materialised[parent]
            missing += [(str(PartitionId.parse(k)), parent.to_user_string()) for k in wanted.get_partition_keys()
                        if k not in have]
    by_partition: dict[str, list[str]] = {}
    for other, parent in sorted(set(missing)):
        by_partition.setdefault(other, []).append(parent)
    return [f"{other} ({', '.join(parents)}: not materialised)" for other, parents in by_partition.items()]


def runnable(asset_graph, stage: Stage, partitions: list[PartitionId], instance: DagsterInstance,
             view=None) -> list[tuple[Stage, PartitionId]]:
    """Each partition's run of the stage, with only the assets whose inputs outside the run exist."""
    runs = []
    materialised: dict[AssetKey, set[str]] = {}  # asked of the instance once a parent, not once a partition
    for partition in partitions:
        ready: list[AssetKey] = []
        for asset in stage.assets:  # in the graph's order: an asset left out leaves out what reads it in the run
            missing = missing_inputs(asset_graph, asset, stage.assets, partition, instance, materialised)
            missing += [f"{p.to_user_string()} {partition}, left out" for p in asset_graph.get(asset).parent_keys
                        if p in stage.assets and p not in ready]
            if missing and view:
                view.note(f"{asset.to_user_string()} {partition}: not run, it reads {', '.join(missing)}")
            if not missing:
                ready.append(asset)
        if ready:
            runs.append((Stage(tuple(ready), True), partition))
    return runs


def execute(location: CodeLocation, stages: list[Stage], partitions: list[PartitionId], instance: DagsterInstance,
            op_config: dict[str, dict] | None = None, resource_config: dict[str, dict] | None = None,
            view=None, logs: Path | None = None) -> list[RunOutcome]:
    """Every stage in order, the runs of its partitions side by side (at most `stage_run_limit`
    at once); stops after a stage with a failed run (the stage's other runs all
    finish: one bad partition does not cancel the others). Each run's output goes to
    `logs/<run id>.log`; `view` (a `PipelineView`) is told as runs start, log and end."""
    asset_graph = location.definitions().get_repository_def().asset_graph
    logs = logs or Path(instance.root_directory) / "logs"
    free_slots_of_ended_runs(instance)
    outcomes: list[RunOutcome] = []
    for number, stage in enumerate(stages, 1):
        # the first stage's inputs are outside the plan (its runs say what is missing); later ones were planned
        waiting: list[tuple[Stage, PartitionId | None]] = (
            [(stage, None)] if not stage.partitioned else [(stage, p) for p in partitions] if number == 1
            else runnable(asset_graph, stage, list(partitions), instance, view))
        partitions_def = asset_graph.get(stage.assets[0]).partitions_def
        side_by_side = stage.partitioned and len(waiting) > 1  # the runs are the parallelism: one process each
        if view:
            view.stage(number, len(stages), stage.names, len(waiting))
        limit = stage_run_limit(asset_graph, stage, instance)
        running: list[LaunchedRun] = []
        done: list[RunOutcome] = []
        while waiting or running:
            while waiting and len(running) < limit:
                run_stage, partition = waiting.pop(0)
                config = _run_config(run_stage, op_config or {}, resource_config or {})
                if side_by_side:
                    config["execution"] = {"config": {"in_process": {}}}
                running.append(launch(location, run_stage, partition, instance, config, partitions_def, logs))
                if view:
                    view.run_started(running[-1].run_id, running[-1].label)
            if view:
                for launched in running:
                    _follow(launched, instance, view)
            finished = next((r for r in running if r.process.poll() is not None), None)
            if finished is None:
                time.sleep(POLL_SECONDS)
                continue
            running.remove(finished)
            done.append(outcome_of(finished, instance))
            done[-1].planned = stage
            if view:
                view.run_finished(finished.run_id, done[-1].success, done[-1].seconds, done[-1].error,
                                  str(logs / f"{finished.run_id}.log"))
        outcomes += sorted(done, key=lambda o: str(o.partition or ""))
        if not all(o.success for o in done):
            break
    return outcomes
