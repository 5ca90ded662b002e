"""Shared fixtures: a tiny demo environment (regions file, data root, demo catalog) built once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, instance_for_test

from resources.compute import ComputeDevice
from resources.scenes.demo_catalog import ensure_demo_catalog
from resources.labels import LabelSource
from resources.regions import RegionCatalog
from resources.scenes.stac import StacCatalog
from resources.storage.data_root import TesseraStorage
from resources.table.vector_store import VectorStore

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_REGION = "tiny"
TINY_BBOX = [5.05, 51.216, 5.0557, 51.2196]  # about 40 x 40 px near Mol, Belgium
TINY_YEAR = 2022


def pytest_collection_modifyitems(items) -> None:
    """Everything under tests/system is a slow system test (`-m "not system"` leaves them out)."""
    system = REPO_ROOT / "tests" / "system"
    for item in items:
        if Path(item.fspath).is_relative_to(system):
            item.add_marker(pytest.mark.system)


def fixtures_dir() -> Path:
    """The shared real-data fixtures, wherever the checkout sits beside them."""
    for candidate in (REPO_ROOT.parent / "shared" / "fixtures", Path("/work/shared/fixtures")):
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
        "vectors": VectorStore(uri=str(root / "data" / "lancedb")),
        "label_source": LabelSource(path=str(root / "labels")),
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


TRAIN_RUN_CONFIG = {"ops": {"encoder_checkpoint": {"config": {
    "steps": 40, "batch_size": 64, "pixels_per_partition": 800, "learning_rate": 2e-3}}}}


@pytest.fixture(scope="session")
def embedded_env(demo_env):
    """The tiny region ingested for two years, a small encoder pretrained on it, both years embedded."""
    from dagster import materialize

    from tessera_assets.embeddings.assets import embeddings, encoder_checkpoint
    from tessera_assets.partitions import year_region_key
    from tessera_assets.raw.assets import s1_raw, s2_raw

    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [TINY_REGION])
        keys = [year_region_key(year, TINY_REGION) for year in (TINY_YEAR - 1, TINY_YEAR)]
        for key in keys:  # in this instance: which partitions exist is what the instance recorded
            assert materialize([s2_raw, s1_raw], partition_key=key, instance=instance, resources=demo_env.resources).success
        trained = materialize([encoder_checkpoint], instance=instance, resources=demo_env.resources,
                              run_config=TRAIN_RUN_CONFIG)
        results = {key: materialize([embeddings], partition_key=key, instance=instance, resources=demo_env.resources)
                   for key in keys}
        yield demo_env, instance, trained, results[keys[-1]]


BACKFILL_YEARS = (2021, 2022)
# three tiny regions a few km apart, so no demo scene of one covers another
BACKFILL_REGIONS = {"tiny": TINY_BBOX,
                    "tiny-east": [TINY_BBOX[0] + 0.05, TINY_BBOX[1], TINY_BBOX[2] + 0.05, TINY_BBOX[3]],
                    "tiny-north": [TINY_BBOX[0], TINY_BBOX[1] + 0.05, TINY_BBOX[2], TINY_BBOX[3] + 0.05]}


def backfill_home(tmp_path: Path, instance_file: Path, env: dict[str, str]) -> tuple[Path, dict[str, str], Path]:
    """A TESSERA_HOME for the backfill tests: the three tiny regions and their demo catalog, a
    DAGSTER_HOME holding `instance_file`, an encoder registered through `encoder_checkpoint` (its quality
    is not what these tests are about) and the region partitions added, each in a process of its own as a
    user's commands would. Returns the home, the environment of every process, and the demo catalog."""
    import os
    import shutil
    import subprocess
    import sys

    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copyfile(instance_file, home / "dagster" / "dagster.yaml")
    regions_file = home / "regions.yaml"
    regions_file.write_text(yaml.safe_dump({"regions": {n: {"bbox": b, "demo": True} for n, b in BACKFILL_REGIONS.items()}}))
    catalog = ensure_demo_catalog(home / "data" / "demo_catalog", RegionCatalog(path=str(regions_file)).all()).parent
    env = {**os.environ, "TESSERA_HOME": str(home), "TESSERA_REGIONS": str(regions_file),
           "DAGSTER_HOME": str(home / "dagster"), "TESSERA_DEPLOYMENT": "local", **env}
    for variable in ("TESSERA_DATA_URI", "TESSERA_LANCEDB_URI", "TESSERA_EMBEDDINGS_TILES"):
        env.pop(variable, None)
    checkpoint = tmp_path / "encoder.pt"
    subprocess.run([sys.executable, "-c", (
        "from dagster import DagsterInstance, materialize; from model.encoder import TesseraEncoder; "
        "from tessera_assets.embeddings.assets import encoder_checkpoint; "
        "from tessera_assets.resources_by_deployment import build_resources; "
        f"TesseraEncoder.from_preset('tessera-demo').save({str(checkpoint)!r}); "
        "assert materialize([encoder_checkpoint], instance=DagsterInstance.get(), resources=build_resources(), "
        f"run_config={{'ops': {{'encoder_checkpoint': {{'config': {{'checkpoint_path': {str(checkpoint)!r}}}}}}}}}).success")],
        cwd=REPO_ROOT, env=env, check=True)
    subprocess.run([sys.executable, "-c", (
        "from dagster import DagsterInstance; i = DagsterInstance.get(); "
        f"i.add_dynamic_partitions('region', {list(BACKFILL_REGIONS)!r})")], cwd=REPO_ROOT, env=env, check=True)
    return home, env, catalog


@dataclass
class S3Endpoint:
    """A local S3 API (moto's server) with one bucket, `tessera`, and the keys it was made with."""

    url: str
    client: object
    key_id: str = "test"
    secret: str = "test"


@pytest.fixture()
def s3_endpoint():
    boto3 = pytest.importorskip("boto3")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    client.create_bucket(Bucket="tessera")
    yield S3Endpoint(url, client)
    server.stop()
