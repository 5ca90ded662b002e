"""Planning from the asset graph, and the progress view the runs feed."""

from __future__ import annotations

import io

from dagster import AssetKey
from rich.console import Console

from tessera_assets.cli.commands import select_assets
from tessera_assets.cli.pipeline import free_slots_of_ended_runs, plan_stages, runnable, stage_run_limit
from tessera_assets.cli.progress import PipelineView
from tessera_assets.definitions import build_definitions


def _names(stages) -> list[tuple[list[str], bool]]:
    return [(sorted(stage.names), stage.partitioned) for stage in stages]


def test_stages_follow_the_graph_where_partitioning_changes():
    """Raw data per partition, then the one encoder, then embeddings and their table rows per
    partition, then what is unpartitioned downstream (the labels observed just before the samples
    are made), then the maps: the class and value maps read the few-shot heads, and the change maps
    (which read the year before) and the similarity maps (which read query vectors from every
    partition of the table) read nothing the few-shot stage makes, but join that last stage's runs
    rather than start runs of their own."""
    graph = build_definitions().get_repository_def().asset_graph
    stages = plan_stages(graph, select_assets(graph))
    assert _names(stages) == [
        (["s1_raw", "s2_raw"], True),
        (["encoder_checkpoint"], False),
        (["embedding_table", "embeddings"], True),
        (["embedding_index", "fewshot_classifier", "fewshot_regressor", "fewshot_samples", "labels"], False),
        (["change_map", "land_cover_map", "similarity_map", "value_map"], True),
    ]
    keys = select_assets(graph, until="table", unmet_needs=set())
    assert AssetKey("embedding_index") in keys and AssetKey("fewshot_samples") not in keys
    without_labels = select_assets(graph, unmet_needs={"labels", "queries"})
    assert {k.to_user_string() for k in without_labels} == {
        "s1_raw", "s2_raw", "encoder_checkpoint", "embeddings", "embedding_table", "embedding_index", "change_map"}
    classification = select_assets(graph, until="fewshot", unmet_needs={"values"})
    assert AssetKey("land_cover_map") in classification and AssetKey("fewshot_regressor") not in classification


def test_a_partition_runs_only_the_assets_whose_inputs_exist():
    """The change map of the first year reads embeddings of a year never made: that partition's run
    leaves it out and says why, and keeps the other maps (the similarity map reads whatever exists);
    the second year runs them all."""
    from dagster import AssetMaterialization, DagsterInstance

    from resources.regions import PartitionId
    from tessera_assets.partitions import year_region_key

    graph = build_definitions().get_repository_def().asset_graph
    stage = next(s for s in plan_stages(graph, select_assets(graph)) if "change_map" in s.names)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("region", ["r"])
    for year in (2021, 2022):
        for asset in ("s2_raw", "s1_raw", "embeddings", "embedding_table"):
            instance.report_runless_asset_event(AssetMaterialization(asset, partition=year_region_key(year, "r")))
    notes = []

    class View:
        def note(self, text):
            notes.append(text)

    runs = runnable(graph, stage, [PartitionId(2021, "r"), PartitionId(2022, "r")], instance, View())
    assert [(sorted(s.names), str(p)) for s, p in runs] == [
        (["land_cover_map", "similarity_map", "value_map"], "r|2021"),
        (["change_map", "land_cover_map", "similarity_map", "value_map"], "r|2022")]
    assert len(notes) == 1 and notes[0] == "change_map r|2021: not run, it reads r|2020 (embeddings, s1_raw, s2_raw: not materialised)"


def test_no_stage_starts_more_runs_than_its_pools_admit(tmp_path, monkeypatch):
    """Under the deployment's instance file (pools of one, four runs), the encoder's stage (a `gpu`
    step) starts one run at a time, the embeddings' (a `gpu` and a `lancedb` step) two, one in each
    pool, the others four; a pool's own limit, once set, counts, up to the run limit."""
    from tessera_assets.cli.commands import dagster_instance

    graph = build_definitions().get_repository_def().asset_graph
    stages = {tuple(sorted(s.names)): s for s in plan_stages(graph, select_assets(graph))}
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with dagster_instance() as instance:
        limits = {names: stage_run_limit(graph, stage, instance) for names, stage in stages.items()}
        assert limits[("s1_raw", "s2_raw")] == 4 and limits[("change_map", "land_cover_map", "similarity_map", "value_map")] == 4
        assert limits[("embedding_table", "embeddings")] == 2 and limits[("encoder_checkpoint",)] == 1
        instance.event_log_storage.set_concurrency_slots("gpu", 2)
        assert stage_run_limit(graph, stages[("embedding_table", "embeddings")], instance) == 3
        assert stage_run_limit(graph, stages[("encoder_checkpoint",)], instance) == 2
        instance.event_log_storage.set_concurrency_slots("lancedb", 3)
        assert stage_run_limit(graph, stages[("embedding_table", "embeddings")], instance) == 4  # the run limit


def test_the_slot_of_a_run_killed_mid_step_is_given_back_and_a_running_one_keeps_its_own(tmp_path, monkeypatch):
    """A run whose process died holding the `gpu` slot has ended (failed) but still holds it: the
    commands free it before they start runs; a run still going keeps its slot."""
    from dagster import DagsterRunStatus

    from tessera_assets.cli.commands import dagster_instance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with dagster_instance() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        dead = instance.create_run_for_job(build_definitions().resolve_job_def("embed"), status=DagsterRunStatus.FAILURE)
        assert storage.claim_concurrency_slot("gpu", dead.run_id, "embeddings").is_claimed
        alive = instance.create_run_for_job(build_definitions().resolve_job_def("embed"), status=DagsterRunStatus.STARTED)
        assert not storage.claim_concurrency_slot("gpu", alive.run_id, "embeddings").is_claimed, "the slot is taken"
        assert free_slots_of_ended_runs(instance) == 1
        assert storage.claim_concurrency_slot("gpu", alive.run_id, "embeddings").is_claimed
        assert free_slots_of_ended_runs(instance) == 0, "the running run keeps its slot"


def test_the_view_shows_a_runs_own_count_and_each_finished_run():
    out, err = io.StringIO(), io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    view = PipelineView(2, console=console)
    view.errors = Console(file=err, width=160, color_system=None)
    with view:
        view.stage(1, 1, ["s1_raw", "s2_raw"], 2)
        view.run_started("r1", "s1_raw, s2_raw demo|2022")
        view.run_step("r1", "s2_raw")
        view.run_message("r1", "s2_raw", "s2: 30/64 observations written")
        assert view.progress.tasks[1].completed == 30 and view.progress.tasks[1].total == 64
        view.run_finished("r1", True, 12.5, None, "/logs/r1.log")
        view.run_started("r2", "s1_raw, s2_raw demo|2021")
        view.run_finished("r2", False, 3.0, "s1_raw: no usable scenes", "/logs/r2.log")
    text, errors = out.getvalue(), err.getvalue()
    assert "s1_raw, s2_raw demo|2022: done in 12.5 s" in text and "demo|2021: FAILED in 3.0 s" in text
    assert "FAILED s1_raw, s2_raw demo|2021: s1_raw: no usable scenes" in errors and "full log: /logs/r2.log" in errors
