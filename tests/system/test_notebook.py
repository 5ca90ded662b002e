"""examples/quickstart.ipynb, executed top to bottom on a real data root, so it never goes stale."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import materialize

from conftest import TINY_REGION, TINY_YEAR

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_on_a_data_root(embedded_env, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from tessera_assets.fewshot.assets import fewshot_classifier, fewshot_samples, land_cover_map
    from tessera_assets.partitions import year_region_key
    from tessera_assets.vectors.assets import embedding_table

    env, instance, _, _ = embedded_env
    key = year_region_key(TINY_YEAR, TINY_REGION)
    labels = env.catalog_root / "ground_truth" / TINY_REGION / "labels.geojson"
    assert materialize([embedding_table], partition_key=key, instance=instance, resources=env.resources).success
    config = {"ops": {"fewshot_samples": {"config": {"labels_path": str(labels), "year": TINY_YEAR}},
                      "fewshot_classifier": {"config": {"ks": ["1", "all"], "draws": 2}}}}
    assert materialize([fewshot_samples, fewshot_classifier], instance=instance, resources=env.resources,
                       run_config=config).success
    assert materialize([land_cover_map], partition_key=key, instance=instance, resources=env.resources).success
    for name, value in {"TESSERA_DATA_URI": str(env.root / "data"), "TESSERA_EXAMPLE_YEAR": str(TINY_YEAR),
                        "TESSERA_EXAMPLE_REGION": TINY_REGION}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "the PCA picture, the similarity map and the class map"
    tables = " ".join(o["data"].get("text/plain", "") for o in outputs if o.get("output_type") == "execute_result")
    assert "similarity" in tables and "area_ci95_ha" in tables and TINY_REGION in tables
