"""A backfill as a user launches one: 2 years x 3 regions through a real Dagster instance (the
webserver's GraphQL API, the daemon, the queued run coordinator and pools of deploy/dagster.yaml,
the multiprocess executor). One partition's Sentinel-1 files are unreadable at first: the backfill
completes with exactly that partition failed, and retrying the backfill from failure runs that
partition alone."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from conftest import REPO_ROOT, TINY_BBOX
from resources.scenes.demo_catalog import ensure_demo_catalog
from resources.regions import RegionCatalog

ROOT = REPO_ROOT
YEARS = (2021, 2022)
# three tiny regions a few km apart, so no demo scene of one covers another
REGIONS = {"tiny": TINY_BBOX,
           "tiny-east": [TINY_BBOX[0] + 0.05, TINY_BBOX[1], TINY_BBOX[2] + 0.05, TINY_BBOX[3]],
           "tiny-north": [TINY_BBOX[0], TINY_BBOX[1] + 0.05, TINY_BBOX[2], TINY_BBOX[3] + 0.05]}
BROKEN = ("tiny-north", 2021)
ASSETS = ("s2_raw", "s1_raw", "embeddings")
DEADLINE_S = 900

LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
RETRY = """mutation($params: ReexecutionParams!) { reexecutePartitionBackfill(reexecutionParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status runs(limit: 100) { runId status tags { key value } } } } }"""
LOADED = """{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name } } } }"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    """The webserver and the daemon of one DAGSTER_HOME, as `make dev` runs them."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.processes = [
            subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml",
                              "-h", "127.0.0.1", "-p", str(self.port)], cwd=ROOT, env=env,
                             stdout=open(logs / "webserver.log", "w"), stderr=subprocess.STDOUT),
            subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
                             cwd=ROOT, env=env, stdout=open(logs / "daemon.log", "w"), stderr=subprocess.STDOUT)]

    def query(self, text: str, **variables) -> dict:
        response = httpx.post(self.url, json={"query": text, "variables": variables}, timeout=60)
        response.raise_for_status()
        return response.json()["data"]

    def wait_loaded(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if self.query(LOADED)["repositoriesOrError"]["__typename"] == "RepositoryConnection":
                    return
            except (httpx.HTTPError, KeyError, TypeError):
                pass
            time.sleep(1)
        raise AssertionError("the webserver did not load the code location")

    def wait_backfill(self, backfill_id: str) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            backfill = self.query(STATUS, id=backfill_id)["partitionBackfillOrError"]
            if backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"):
                return backfill
            time.sleep(2)
        raise AssertionError(f"backfill {backfill_id} did not finish in {DEADLINE_S} s")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _partition(run: dict) -> str:
    return next(t["value"] for t in run["tags"] if t["key"] == "dagster/partition")


def _launched(result: dict, field: str) -> str:
    launched = result[field]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _broken_files(catalog: Path) -> list[Path]:
    region, year = BROKEN
    return sorted(catalog.glob(f"sentinel-1-rtc/S1_DEMO_{region.replace('-', '_')}_*_{year}*/*.tif"))


def test_backfill_of_two_years_by_three_regions_through_the_daemon(tmp_path):
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    shutil.copyfile(ROOT / "deploy" / "dagster.yaml", home / "dagster" / "dagster.yaml")
    regions_file = home / "regions.yaml"
    regions_file.write_text(yaml.safe_dump({"regions": {n: {"bbox": b, "demo": True} for n, b in REGIONS.items()}}))
    catalog = ensure_demo_catalog(home / "data" / "demo_catalog", RegionCatalog(path=str(regions_file)).all()).parent
    env = {**os.environ, "TESSERA_HOME": str(home), "TESSERA_REGIONS": str(regions_file),
           "DAGSTER_HOME": str(home / "dagster"), "TESSERA_DEPLOYMENT": "local"}
    for variable in ("TESSERA_DATA_URI", "TESSERA_LANCEDB_URI", "TESSERA_EMBEDDINGS_TILES"):
        env.pop(variable, None)
    # an encoder to embed with (its quality is not what this test is about), and the region partitions
    # (loaded by encoder_checkpoint from a file, so the instance knows the current encoder)
    checkpoint = tmp_path / "encoder.pt"
    subprocess.run([sys.executable, "-c", (
        "from dagster import DagsterInstance, materialize; from model.encoder import TesseraEncoder; "
        "from tessera_assets.embeddings.assets import encoder_checkpoint; "
        "from tessera_assets.resources_by_deployment import build_resources; "
        f"TesseraEncoder.from_preset('tessera-demo').save({str(checkpoint)!r}); "
        "assert materialize([encoder_checkpoint], instance=DagsterInstance.get(), resources=build_resources(), "
        f"run_config={{'ops': {{'encoder_checkpoint': {{'config': {{'checkpoint_path': {str(checkpoint)!r}}}}}}}}}).success")],
        cwd=ROOT, env=env, check=True)
    subprocess.run([sys.executable, "-c", (
        "from dagster import DagsterInstance; i = DagsterInstance.get(); "
        f"i.add_dynamic_partitions('region', {list(REGIONS)!r})")], cwd=ROOT, env=env, check=True)
    broken = _broken_files(catalog)
    assert broken, "the demo catalog has Sentinel-1 files for the broken partition"
    for path in broken:
        path.rename(path.with_suffix(".away"))

    instance = Instance(env, tmp_path)
    try:
        instance.wait_loaded()
        partitions = [f"{region}|{year}" for region in REGIONS for year in YEARS]
        started = time.monotonic()
        first = _launched(instance.query(LAUNCH, params={
            "partitionNames": partitions, "assetSelection": [{"path": [a]} for a in ASSETS],
            "title": "2 years x 3 regions"}), "launchPartitionBackfill")
        done = instance.wait_backfill(first)
        first_s = time.monotonic() - started
        by_partition = {_partition(run): run["status"] for run in done["runs"]}
        assert sorted(by_partition) == sorted(partitions), "one run per partition"
        failed = [p for p, status in by_partition.items() if status != "SUCCESS"]
        assert failed == [f"{BROKEN[0]}|{BROKEN[1]}"], by_partition

        for path in broken:  # the cause is fixed; only the failed partition runs again
            path.with_suffix(".away").rename(path)
        started = time.monotonic()
        retry = _launched(instance.query(RETRY, params={"parentRunId": first, "strategy": "FROM_FAILURE"}),
                          "reexecutePartitionBackfill")
        again = instance.wait_backfill(retry)
        retry_s = time.monotonic() - started
        assert [(_partition(r), r["status"]) for r in again["runs"]] == [(failed[0], "SUCCESS")]
    finally:
        instance.stop()

    from resources.storage.data_root import TesseraStorage

    storage = TesseraStorage(root=str(home / "data"))
    expected = sorted((year, region) for region in REGIONS for year in YEARS)
    assert storage.partitions("embeddings") == expected
    assert storage.raw_partitions() == expected
    _assert_gpu_steps_never_overlapped(env)
    print(json.dumps({"backfill_s": round(first_s, 1), "retry_s": round(retry_s, 1), "partitions": len(partitions)}))


def _assert_gpu_steps_never_overlapped(env: dict[str, str]) -> None:
    """The `gpu` pool (limit 1): no two embeddings steps ran at once, across all runs."""
    script = (
        "import json; from dagster import DagsterInstance, DagsterEventType as T; i = DagsterInstance.get(); "
        "spans = []\n"
        "for run in i.get_runs():\n"
        "    times = {e.dagster_event.event_type: e.timestamp for e in i.all_logs(run.run_id) "
        "if e.dagster_event and e.dagster_event.step_key == 'embeddings'}\n"
        "    if T.STEP_START in times: spans.append((times[T.STEP_START], times.get(T.STEP_SUCCESS, times.get(T.STEP_FAILURE))))\n"
        "print(json.dumps(sorted(spans)))")
    spans = json.loads(subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1])
    assert len(spans) == len(REGIONS) * len(YEARS)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
