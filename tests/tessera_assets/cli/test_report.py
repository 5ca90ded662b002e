"""What the terminal tells a person at the end of a run: layouts, inputs left out, failed checks."""

from __future__ import annotations

from types import SimpleNamespace

from tessera_assets.cli import report


def test_layouts_and_left_out_inputs_are_printed_by_partition(capsys):
    table = "| scene | reason |\n|---|---|\n| S2A_1 | no SCL asset |\n| S2A_2 | no SCL asset |\n| S2B_3 | cloudy |"
    results = {("s2_raw", "2022|tiny"): {"catalog_layout": "auto: earth-search (12 items)", "scenes_found": 15,
                                         "scenes_skipped": 3, "skipped_reasons": table},
               ("s1_raw", "2022|tiny"): {"catalog_layout": "demo (40 items)", "scenes_found": 40, "scenes_skipped": 0},
               ("s2_raw", "2021|tiny"): {"catalog_layout": "auto: earth-search (10 items), auto: cdse (1 item)",
                                         "scenes_found": 11, "scenes_skipped": 0}}
    report.inputs(results)
    out, err = capsys.readouterr()
    assert "catalog layouts: s1 demo (40 items); s2 auto: cdse (1 items), auto: earth-search (22 items)" in out
    assert "left out: s2_raw 2022|tiny: 3 of 15 scenes (no SCL asset; cloudy); the rest were used" in err


def test_the_last_line_counts_failed_checks(capsys):
    outcomes = [SimpleNamespace(failed_checks=[("s2_raw", "enough_observations", "2022|tiny")]),
                SimpleNamespace(failed_checks=[])]
    report.done(outcomes, 12.34)
    assert capsys.readouterr().out.strip() == "done in 12.3 s; 1 asset check FAILED (listed above)"
    report.done([SimpleNamespace(failed_checks=[])], 1.0, "; browse with: make dev")
    assert capsys.readouterr().out.strip() == "done in 1.0 s; browse with: make dev"


def test_each_stage_takes_from_its_first_run_start_to_its_last_run_end(capsys):
    from dagster import AssetKey

    from tessera_assets.cli.pipeline import RunOutcome, Stage

    raw = Stage((AssetKey("s2_raw"), AssetKey("s1_raw")), True)
    maps = Stage((AssetKey("change_map"), AssetKey("similarity_map")), True)
    only_similarity = Stage((AssetKey("similarity_map"),), True)
    outcomes = [RunOutcome(raw, None, "a", True, 10.0, started=100.0, planned=raw),
                RunOutcome(raw, None, "b", True, 12.0, started=101.0, planned=raw),
                RunOutcome(only_similarity, None, "c", True, 5.0, started=120.0, planned=maps),
                RunOutcome(maps, None, "d", True, 8.0, started=121.5, planned=maps)]
    report.stage_times(outcomes)
    lines = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert lines[0] == ["stage", "runs", "seconds"]
    assert lines[1] == ["s2_raw,", "s1_raw", "2", "13.0"]  # 100 -> 113
    assert lines[2] == ["change_map,", "similarity_map", "2", "9.5"]  # 120 -> 129.5, one run held fewer assets


def test_an_area_interval_of_zero_width_is_marked_as_no_error_seen(demo_env, capsys):
    """The demo's area table beside the true areas: a "± 0" row says the sample saw no error of that
    class, which is not proof that there is none."""
    from conftest import TINY_REGION, TINY_YEAR
    from resources.scenes.demo_truth import true_class_area_ha
    from tessera_assets.cli.report import headline

    truth = true_class_area_ha(demo_env.catalog_root, TINY_YEAR, TINY_REGION)
    first, second = sorted(truth)[:2]
    results = {("fewshot_classifier", ""): {"curves": {"embeddings": [
                   {"k": 1, "accuracy": 0.7, "head": "ncm"},
                   {"k": 2, "accuracy": 0.8, "head": "logistic", "self_trained": True}]}},
               ("land_cover_map", f"{TINY_REGION}|{TINY_YEAR}"): {
                   "class_area_ha": {first: truth[first], second: truth[second]},
                   "area_estimate_ha": {first: {"area_ha": truth[first] + 1.0, "ci95_ha": 0.0, "no_error_seen": True},
                                        second: {"area_ha": truth[second], "ci95_ha": 0.5, "no_error_seen": False}}}}
    headline(results, demo_env.resources["storage"], demo_env.catalog_root, TINY_REGION, TINY_YEAR)
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(first))
    assert row.endswith("no *") and next(line for line in lines if line.startswith(second)).endswith("yes")
    assert any("no error of this class in the reference sample" in line for line in lines)
    # the head of each few-shot row, and whether it self-trained there
    assert any(line.startswith("few-shot accuracy, k=1 (ncm head) ") for line in lines)
    assert any(line.startswith("few-shot accuracy, k=2 (logistic head, self-trained) ") for line in lines)
