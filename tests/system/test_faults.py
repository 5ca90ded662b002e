"""Faults with real processes: a materialisation killed with SIGKILL while it writes raw data,
embeddings or table rows leaves nothing partial visible and the previous result whole, and a re-run
gives exactly the expected result; four partitions written into one table at once lose and
duplicate no row."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from dagster import instance_for_test, materialize

from conftest import TINY_REGION, TINY_YEAR
from resources.testing.synthetic_table import clustered, synthetic_rows
from tessera_assets.partitions import year_region_key

RUN_ONE = textwrap.dedent("""
    import sys
    from dagster import instance_for_test, materialize
    from tessera_assets.embeddings.assets import embeddings
    from tessera_assets.partitions import year_region_key
    from tessera_assets.raw.assets import s2_raw
    from tessera_assets.resources_by_deployment import build_resources
    from tessera_assets.vectors.assets import embedding_table

    asset = {"s2_raw": s2_raw, "embeddings": embeddings, "embedding_table": embedding_table}[sys.argv[1]]
    resources = build_resources()
    # a throwaway instance has no encoder_checkpoint materialisation: name the kept encoder
    config = {"ops": {"embeddings": {"config": {"encoder_id": resources["storage"].current_encoder_id()}}}} \
        if sys.argv[1] == "embeddings" else {}
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [sys.argv[3]])
        print("started", flush=True)
        materialize([asset], partition_key=year_region_key(sys.argv[2], sys.argv[3]), instance=instance,
                    resources=resources, run_config=config)
""")


@pytest.fixture()
def work(embedded_env, tmp_path, monkeypatch):
    """A copy of the embedded tiny environment, so killing writers never harms the shared one."""
    env, _, _, _ = embedded_env
    root = tmp_path / "root"
    shutil.copytree(env.root, root, ignore=shutil.ignore_patterns("lancedb"))
    for name, value in {"TESSERA_HOME": root, "TESSERA_REGIONS": root / "regions.yaml", "TESSERA_DEPLOYMENT": "local",
                        "TESSERA_LANCEDB_URI": root / "data" / "lancedb"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("TESSERA_EMBEDDINGS_TILES", raising=False)
    from tessera_assets.resources_by_deployment import build_resources

    # the compute settings that made the partitions, so a re-run is comparable byte for byte
    return root, dict(build_resources(), compute=env.resources["compute"])


def _kill_when(asset: str, ready, timeout: float = 240) -> None:
    """Start a materialisation of the tiny partition in its own process and SIGKILL it as soon as
    `ready()` says it is in the middle of writing."""
    process = subprocess.Popen([sys.executable, "-c", RUN_ONE, asset, str(TINY_YEAR), TINY_REGION],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if ready():
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                assert process.returncode == -signal.SIGKILL
                return
            if process.poll() is not None:
                pytest.fail(f"{asset} finished before it could be killed:\n{process.stdout.read().decode()[-2000:]}")
            time.sleep(0.005)
        pytest.fail(f"{asset} never reached the point to kill it")
    finally:
        if process.poll() is None:
            process.kill()


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): rasterio.open(p).read() for p in sorted(folder.rglob("*.tif"))}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def _in_progress(parent: Path, name: str, pattern: str):
    """Whether a hidden in-progress folder of the partition holds files matching `pattern`."""
    return lambda: any(any(tmp.glob(pattern)) for tmp in parent.glob(f".{name}-tmp-*"))


def test_killed_raw_and_embeddings_writers_leave_the_partition_whole(work):
    root, resources = work
    storage = resources["storage"]
    from tessera_assets.embeddings.assets import embeddings
    from tessera_assets.raw.assets import s2_raw

    for asset, folder, pattern, definition in (
            ("s2_raw", storage.path("raw", "s2", str(TINY_YEAR), TINY_REGION), "obs/*.tif", s2_raw),
            ("embeddings", storage.path("embeddings", str(TINY_YEAR), TINY_REGION), "scales.tif", embeddings)):
        before = _arrays(folder)
        _kill_when(asset, _in_progress(folder.parent, folder.name, pattern))
        assert _same(_arrays(folder), before), f"{asset}: the published partition is untouched by the killed run"
        product = ("raw", "s2") if asset == "s2_raw" else ("embeddings",)
        assert storage.partitions(*product) == sorted({(TINY_YEAR - 1, TINY_REGION), (TINY_YEAR, TINY_REGION)}), \
            "the killed run's folder is never listed"
        assert list(folder.parent.glob(f".{folder.name}-tmp-*")), "the killed run did leave its hidden folder"
        with instance_for_test() as instance:
            instance.add_dynamic_partitions("region", [TINY_REGION])
            config = {"ops": {"embeddings": {"config": {"encoder_id": storage.current_encoder_id()}}}} \
                if asset == "embeddings" else {}
            assert materialize([definition], partition_key=year_region_key(TINY_YEAR, TINY_REGION), instance=instance,
                               resources=resources, run_config=config).success
        assert _same(_arrays(folder), before), f"{asset}: the re-run writes exactly the expected partition"
        assert not list(folder.parent.glob(f".{folder.name}-*")), "the re-run removed what the killed run left"


def test_a_killed_table_write_commits_nothing_and_the_rerun_is_exact(work):
    root, resources = work
    from tessera_assets.vectors.assets import embedding_table

    key = year_region_key(TINY_YEAR, TINY_REGION)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [TINY_REGION])
        assert materialize([embedding_table], partition_key=key, instance=instance, resources=resources).success
    store = resources["vectors"]
    where = f"year = {TINY_YEAR} AND region = '{TINY_REGION}'"
    expected = store.table().count_rows(where)
    data = root / "data" / "lancedb" / "embeddings.lance" / "data"
    known = set(data.iterdir())
    _kill_when("embedding_table", lambda: bool(set(data.iterdir()) - known))  # rows being written, not committed
    table = store.table()
    assert table.count_rows(where) == expected, "all of the partition's rows or none, never part"
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [TINY_REGION])
        assert materialize([embedding_table], partition_key=key, instance=instance, resources=resources).success
    keys = table.search().where(where).select(["key"]).limit(None).to_arrow()["key"].to_pylist()
    assert len(keys) == len(set(keys)) == expected


def _write(uri: str, region: str, n: int) -> int:
    from resources.table.vector_store import VectorStore

    rows = synthetic_rows(clustered(n, np.random.default_rng(int(region[1:]))), year=2022, region=region)
    return VectorStore(uri=uri).write_partition(2022, region, rows.to_batches(max_chunksize=2000), 128).rows


def test_four_partitions_written_into_one_table_at_once(tmp_path):
    from resources.table.vector_store import VectorStore

    uri = str(tmp_path / "lancedb")
    VectorStore(uri=uri).table(128)
    with multiprocessing.get_context("spawn").Pool(4) as pool:  # LanceDB wants spawned, not forked, workers
        written = pool.starmap(_write, [(uri, f"r{i}", 20000) for i in range(4)])
    table = VectorStore(uri=uri).table()
    keys = table.search().select(["key"]).limit(None).to_arrow()["key"].to_pylist()
    assert written == [20000] * 4 and table.count_rows() == len(set(keys)) == 80000
