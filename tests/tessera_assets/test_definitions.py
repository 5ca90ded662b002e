import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from dagster import Definitions

from tessera_assets.definitions import defs

from conftest import REPO_ROOT

ROOT = REPO_ROOT


def test_definitions_load_and_validate():
    Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"s2_raw", "s1_raw"} <= keys


def test_raw_job_is_partitioned_by_year_and_region():
    job = defs.resolve_job_def("raw_ingest")
    dims = {d.name for d in job.partitions_def.partitions_defs}
    assert dims == {"year", "region"}


def test_workspace_points_at_the_definitions_module():
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    target = workspace["load_from"][0]["python_module"]
    assert target["module_name"] == "tessera_assets.definitions"
    assert target["attribute"] == "defs"


def test_seed_regions_are_valid_and_include_the_demo():
    from resources.regions import RegionCatalog

    regions = RegionCatalog(path=str(ROOT / "regions.yaml")).all()
    demo = {r.name: r for r in regions if r.demo}
    assert "demo" in demo
    grid = demo["demo"].grid
    assert 240 <= grid.width <= 290 and 240 <= grid.height <= 290


def test_the_dagster_cli_loads_the_workspace(tmp_path):
    """What `dagster dev -w workspace.yaml` does first: load and validate the code location."""
    dagster = Path(sys.executable).with_name("dagster")
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path))  # a fresh instance, whatever the caller set
    out = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "All code locations passed validation" in out.stderr + out.stdout


def test_dg_loads_the_same_definitions(tmp_path):
    """Dagster's `dg` command line, configured in pyproject.toml ([tool.dg]), sees the same assets."""
    dg = Path(sys.executable).with_name("dg")
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path))
    out = subprocess.run([str(dg), "list", "defs", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = {asset["asset_key"] for asset in json.loads(out.stdout)["assets"]}
    assert listed == {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "warning" not in out.stderr.lower(), out.stderr[-2000:]


def test_the_cli_and_make_dev_share_one_instance_config_with_pools(tmp_path, monkeypatch):
    """`tessera` and `make dev` put deploy/dagster.yaml into a fresh DAGSTER_HOME: runs queue, and
    each pool (gpu, lancedb) runs one step at a time."""
    from tessera_assets.cli.commands import INSTANCE_FILE, dagster_instance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    instance = dagster_instance()
    assert (tmp_path / "home" / "dagster.yaml").read_text() == INSTANCE_FILE.read_text()
    config = instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 1 and config.run_queue_config.max_concurrent_runs == 4
    assert "cp -n deploy/dagster.yaml $(DAGSTER_HOME)/dagster.yaml" in (ROOT / "Makefile").read_text()


def test_assets_carry_code_versions_and_bad_partitions_block_downstream():
    graph = defs.resolve_asset_graph()
    unversioned = [k.to_user_string() for k in graph.get_all_asset_keys()
                   if graph.get(k).is_materializable and graph.get(k).code_version is None]
    assert unversioned == []
    specs = [graph.get_check_spec(key) for key in graph.asset_check_keys]
    blocking = {(spec.asset_key.to_user_string(), spec.name) for spec in specs if spec.blocking}
    assert {("s2_raw", "physical_range"), ("embeddings", "finite_where_valid"),
            ("embedding_table", "rows_match_embedded_pixels")} <= blocking


def test_the_code_location_loads_without_torch():
    """Every Dagster run's process loads the code location first: torch (seconds to import) comes
    only with the assets that use it, so a run of any other asset starts without it."""
    code = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"torch imported while loading the code location: {name}", name=name)

sys.meta_path.insert(0, NoTorch())
from tessera_assets.definitions import defs
defs.resolve_asset_graph()
print("loaded")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr[-3000:]
