"""Shared fixtures: a tiny demo environment (regions file, data root, demo catalog) built once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, instance_for_test

from resources.compute import ComputeDevice
from resources.demo_catalog import ensure_demo_catalog
from resources.regions import RegionCatalog
from resources.stac import StacCatalog
from resources.storage import TesseraStorage

TINY_REGION = "tiny"
TINY_BBOX = [5.05, 51.216, 5.0557, 51.2196]  # about 40 x 40 px near Mol, Belgium
TINY_YEAR = 2022


def fixtures_dir() -> Path:
    """The shared real-data fixtures, wherever the checkout sits beside them."""
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "fixtures", Path("/work/shared/fixtures")):
        if candidate.exists():
            return candidate
    pytest.skip("../shared/fixtures is not available")


@dataclass
class DemoEnv:
    root: Path
    resources: dict

    @property
    def catalog_root(self) -> Path:
        return Path(self.resources["s2_catalog"].url).parent


def make_env(root: Path) -> DemoEnv:
    regions_file = root / "regions.yaml"
    regions_file.write_text(yaml.safe_dump({"regions": {
        TINY_REGION: {"bbox": TINY_BBOX, "demo": True},
        "nowhere": {"bbox": [10.0, 45.0, 10.005, 45.004]},
    }}))
    catalog = StacCatalog(url=str(root / "data" / "demo_catalog" / "catalog.json"), provider="demo")
    resources = {
        "storage": TesseraStorage(root=str(root / "data")),
        "regions": RegionCatalog(path=str(regions_file)),
        "s2_catalog": catalog,
        "s1_catalog": catalog,
        # small blocks so that the tiny region streams through several of them
        "compute": ComputeDevice(device="cpu", precision="fp32", block_size=24),
    }
    ensure_demo_catalog(Path(catalog.url).parent, [r for r in resources["regions"].all() if r.demo])
    return DemoEnv(root, resources)


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory) -> DemoEnv:
    return make_env(tmp_path_factory.mktemp("demo"))


@pytest.fixture()
def instance() -> DagsterInstance:
    with instance_for_test() as inst:
        yield inst
