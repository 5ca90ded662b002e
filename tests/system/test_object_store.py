"""Every product on an object store: a local S3 API (moto's server), configured the way a user
configures real S3 (TESSERA_DATA_URI and the AWS_* variables), runs one demo partition end to end;
and the publish protocol (versions and pointers) under re-runs, races and killed writers."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from dagster import instance_for_test, materialize

from conftest import TINY_REGION, TINY_YEAR
from resources.storage.object_store import POINTERS, ObjectRoot, new_version
from tessera_assets.partitions import year_region_key

KEY_ID, SECRET = "AKIATESSERAE2ETEST", "tessera-e2e-secret-Zq8w"  # must never show in metadata or logs


@pytest.fixture()
def bucket(s3_endpoint):
    return ObjectRoot("s3://tessera/protocol", {"aws_endpoint": s3_endpoint.url, "aws_region": "us-east-1",
                                                 "aws_access_key_id": "test", "aws_secret_access_key": "test",
                                                 "allow_http": "true"})


def _folder(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / text
    (folder / "obs").mkdir(parents=True)
    (folder / "index.json").write_text(json.dumps({"run": text}))
    (folder / "obs" / "a.tif").write_bytes(text.encode() * 100)
    return folder


def test_publish_replaces_by_pointer_and_cleans_up_what_is_no_longer_pointed_at(bucket, tmp_path):
    key = "raw/s2/2022/demo"
    assert bucket.published(key) is None
    first, second, third = new_version(), new_version(), new_version()
    assert first < second < third, "versions sort by start time"
    assert bucket.publish(_folder(tmp_path, "one"), key, first)
    assert bucket.get(f"{bucket.published(key)}/index.json") == b'{"run": "one"}'
    bucket.upload(_folder(tmp_path, "killed"), f"{key}/{second}")  # a writer killed before its pointer write
    assert bucket.published(key) == f"{key}/{first}", "an upload nobody published is never read"
    assert bucket.publish(_folder(tmp_path, "three"), key, third)
    assert bucket.get(f"{bucket.published(key)}/index.json") == b'{"run": "three"}'
    assert bucket.children(key) == [first, third], "the replaced version stays one publish longer for late readers"
    fourth = new_version()
    assert bucket.publish(_folder(tmp_path, "four"), key, fourth)
    assert bucket.children(key) == [third, fourth], "the killed writer's upload and older versions are gone"
    assert bucket.published_keys("raw") == [key]
    assert bucket.unpublish(key) == 4 and bucket.published(key) is None and bucket.keys(key) == []


def test_a_run_that_started_earlier_never_replaces_a_later_one(bucket, tmp_path):
    key = "embeddings/2022/demo"
    early, late = new_version(), new_version()
    assert bucket.publish(_folder(tmp_path, "late"), key, late)
    assert not bucket.publish(_folder(tmp_path, "early"), key, early), "the older run finished last: it loses"
    assert bucket.get(f"{bucket.published(key)}/index.json") == b'{"run": "late"}'
    assert bucket.children(key) == [late], "the losing upload is removed"


def test_racing_publishers_leave_one_whole_version(bucket, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    key = "embeddings/2021/demo"
    folders = [_folder(tmp_path, f"w{i}") for i in range(6)]
    versions = [new_version() for _ in folders]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: bucket.publish(folders[i], key, versions[i]), range(6)))
    assert bucket.published(key) == f"{key}/{versions[-1]}", "the last run to start wins"
    assert bucket.get(f"{key}/{versions[-1]}/index.json") == b'{"run": "w5"}'
    assert len(bucket.keys(f"{key}/{versions[-1]}")) == 2


@pytest.fixture()
def s3_user_env(embedded_env, s3_endpoint, monkeypatch, tmp_path):
    """What a user sets for real S3 (here pointing at the local server), and a fresh TESSERA_HOME
    holding only the demo catalog: a pod's view of the world."""
    env, _, _, _ = embedded_env
    home = tmp_path / "home"
    shutil.copytree(env.catalog_root, home / "data" / "demo_catalog")
    for name, value in {"TESSERA_HOME": str(home), "TESSERA_REGIONS": str(env.root / "regions.yaml"),
                        "TESSERA_DATA_URI": "s3://tessera/prod", "TESSERA_DEPLOYMENT": "local",
                        "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": s3_endpoint.url, "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(name, value)
    from tessera_assets.resources_by_deployment import build_resources

    resources = build_resources() | {"compute": env.resources["compute"]}
    return env, home, resources


def test_a_demo_partition_end_to_end_on_s3(s3_user_env, s3_endpoint):
    from tessera_assets.embeddings.assets import embeddings, encoder_checkpoint
    from tessera_assets.fewshot.assets import fewshot_classifier, fewshot_samples, land_cover_map
    from tessera_assets.raw.assets import s1_raw, s2_raw
    from tessera_assets.vectors.assets import embedding_table

    env, home, resources = s3_user_env
    storage, local = resources["storage"], env.resources["storage"]
    assert storage.root == "s3://tessera/prod" and resources["vectors"].uri == "s3://tessera/prod/lancedb"
    key = year_region_key(TINY_YEAR, TINY_REGION)
    labels = env.catalog_root / "ground_truth" / TINY_REGION / "labels.geojson"
    s3_endpoint.client.upload_file(str(labels), "tessera", "inputs/labels/tiny.geojson")
    checkpoint = local.encoder_checkpoint(local.current_encoder_id())  # the same weights as the local run
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [TINY_REGION])
        load = {"ops": {"encoder_checkpoint": {"config": {"checkpoint_path": str(checkpoint)}}}}
        fewshot = {"ops": {
            "fewshot_samples": {"config": {"labels_path": "s3://tessera/inputs/labels", "year": TINY_YEAR}},
            "fewshot_classifier": {"config": {"ks": ["1", "all"], "draws": 2}}}}
        assert materialize([encoder_checkpoint], instance=instance, resources=resources, run_config=load).success
        partitioned = materialize([s2_raw, s1_raw, embeddings, embedding_table], partition_key=key, instance=instance,
                                  resources=resources)
        assert partitioned.success
        assert materialize([fewshot_samples, fewshot_classifier], instance=instance, resources=resources,
                           run_config=fewshot).success
        assert materialize([land_cover_map], partition_key=key, instance=instance, resources=resources).success
        logs = json.dumps([str(e) for e in instance.all_logs(partitioned.run_id)])

    # the products are on S3, and equal to the ones the same code wrote on a local disk
    for sensor in ("s2", "s1"):
        remote, here = storage.open_raw(sensor, TINY_YEAR, TINY_REGION), local.open_raw(sensor, TINY_YEAR, TINY_REGION)
        assert str(storage.folder("raw", sensor, TINY_YEAR, TINY_REGION)).startswith(f"s3://tessera/prod/raw/{sensor}/")
        assert str(remote.folder).startswith(str(home / "cache")), "raw partitions are read from a local copy"
        assert remote.index["observations"] == here.index["observations"]
        for got, want in zip(remote.read_block(remote.grid.blocks(24)[0]), here.read_block(here.grid.blocks(24)[0])):
            np.testing.assert_array_equal(got, want)
    remote, here = storage.open_embeddings(TINY_YEAR, TINY_REGION), local.open_embeddings(TINY_YEAR, TINY_REGION)
    assert remote.encoder_id == here.encoder_id
    for got, want in zip(remote.read(), here.read()):
        np.testing.assert_array_equal(got, want)
    assert resources["vectors"].table().count_rows() == remote.valid_pixels()
    keys = storage.remote.keys("")
    for product in ("raw/s2", "raw/s1", "embeddings", "land_cover"):
        assert f"{POINTERS}/{product}/{TINY_YEAR}/{TINY_REGION}.json" in keys, product
    assert storage.kept_encoders() == [here.encoder_id]
    # the STAC catalog and the xarray API work on the object store as on a folder
    from tessera_assets.products import open_embeddings

    catalog = json.loads(storage.remote.get("catalog.json"))
    assert "./embeddings/collection.json" in [link["href"] for link in catalog["links"]]
    collection = json.loads(storage.remote.get("embeddings/collection.json"))
    version = storage.folder("embeddings", TINY_YEAR, TINY_REGION).key[len("embeddings/"):]
    assert [link["href"] for link in collection["links"] if link["rel"] == "item"] == [f"./{version}/item.json"]
    opened = open_embeddings(TINY_YEAR, TINY_REGION, root="s3://tessera/prod")
    np.testing.assert_array_equal(opened.embeddings.values, np.moveaxis(here.read()[0], -1, 0))
    assert storage.read_file(f"embeddings/{TINY_YEAR}/{TINY_REGION}/preview.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert storage.read_file(f"land_cover/{TINY_YEAR}/{TINY_REGION}/classes.png")[:4] == b"\x89PNG"
    # nothing but the demo catalog (a source) and caches on the local disk; no secret anywhere
    assert sorted(p.name for p in (home / "data").iterdir()) == [".demo_catalog.lock", "demo_catalog"]
    metadata = json.dumps([str(e.event_specific_data.materialization.metadata)
                           for e in partitioned.get_asset_materialization_events()])
    assert "s3://tessera/prod/embeddings/2022/tiny/v" in metadata
    assert SECRET not in metadata + logs and KEY_ID not in metadata + logs

    # a re-run publishes a new version; readers see one whole partition throughout
    first = storage.folder("embeddings", TINY_YEAR, TINY_REGION).key
    started = time.perf_counter()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [TINY_REGION])
        assert materialize([embeddings], partition_key=key, instance=instance, resources=resources,
                           run_config={"ops": {"embeddings": {"config": {"encoder_id": here.encoder_id}}}}).success
    second = storage.folder("embeddings", TINY_YEAR, TINY_REGION).key
    assert second != first and storage.remote.children(f"embeddings/{TINY_YEAR}/{TINY_REGION}") == \
        sorted([first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]])
    for got, want in zip(storage.open_embeddings(TINY_YEAR, TINY_REGION).read(), here.read()):
        np.testing.assert_array_equal(got, want)
    assert time.perf_counter() - started < 600


def test_the_regions_file_on_the_object_store_takes_concurrent_edits(s3_endpoint, monkeypatch):
    """Every pod reads one regions file; edits from several machines at once all land (conditional
    writes, retried), and a bad edit changes nothing."""
    from concurrent.futures import ThreadPoolExecutor

    from resources.errors import InvalidRegionNameError
    from resources.regions import RegionCatalog

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": s3_endpoint.url, "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(name, value)
    catalog = RegionCatalog(path="s3://tessera/config/regions.yaml")
    assert catalog.all() == []
    bboxes = {f"field-{i}": [5.0 + 0.01 * i, 51.2, 5.005 + 0.01 * i, 51.204] for i in range(6)}
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda item: catalog.add(*item), bboxes.items()))
    assert [r.name for r in catalog.all()] == sorted(bboxes), "no concurrent edit is lost"
    before = s3_endpoint.client.get_object(Bucket="tessera", Key="config/regions.yaml")["Body"].read()
    with pytest.raises(InvalidRegionNameError, match="already exists"):
        catalog.add("field-1", bboxes["field-1"])
    assert s3_endpoint.client.get_object(Bucket="tessera", Key="config/regions.yaml")["Body"].read() == before
    catalog.remove("field-0")
    assert catalog.get("field-5").bbox == tuple(bboxes["field-5"]) and len(catalog.all()) == 5


def test_classify_on_an_s3_data_root_publishes_its_report(s3_user_env, s3_endpoint, tmp_path, monkeypatch, capsys):
    """`tessera classify` with every product on S3: the few-shot assets run through Dagster, and the
    report is published beside the class map by the same protocol as every product (no local path)."""
    from dagster import DagsterInstance

    from tessera_assets.cli import main
    from tessera_assets.embeddings.assets import embeddings, encoder_checkpoint
    from tessera_assets.raw.assets import s1_raw, s2_raw

    env, home, resources = s3_user_env
    storage, local = resources["storage"], env.resources["storage"]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    checkpoint = local.encoder_checkpoint(local.current_encoder_id())
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("region", [TINY_REGION])
    assert materialize([encoder_checkpoint], instance=instance, resources=resources, run_config={
        "ops": {"encoder_checkpoint": {"config": {"checkpoint_path": str(checkpoint)}}}}).success
    assert materialize([s2_raw, s1_raw, embeddings], partition_key=year_region_key(TINY_YEAR, TINY_REGION),
                       instance=instance, resources=resources).success
    labels = env.catalog_root / "ground_truth" / TINY_REGION / "labels.geojson"
    assert main(["classify", str(labels), "--year", str(TINY_YEAR), "--region", TINY_REGION]) == 0
    out = capsys.readouterr().out
    assert f"report: s3://tessera/prod/land_cover/{TINY_YEAR}/{TINY_REGION}/v" in out
    report = json.loads(storage.read_file(f"land_cover/{TINY_YEAR}/{TINY_REGION}/report.json"))
    assert report["region"] == TINY_REGION and report["curves"]["embeddings"][-1]["macro_f1"] > 0.5
    assert storage.read_file(f"land_cover/{TINY_YEAR}/{TINY_REGION}/classes.png")[:4] == b"\x89PNG", \
        "the class map is still there: the partition was published again whole"
    assert sorted(p.name for p in (home / "data").iterdir()) == [".demo_catalog.lock", "demo_catalog"]
