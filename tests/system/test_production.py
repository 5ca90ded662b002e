"""The production instance under faults: deploy/compose's dagster.yaml on a real PostgreSQL (Debian's
server, started here in a temporary folder on a free loopback port), and the very commands the compose
file and the image run: the gRPC code server (the Dockerfile's CMD), the webserver, the daemon and the
explorer, with only their ports, paths and host names moved onto this machine.

A backfill of 2 years x 3 regions (raw data, embeddings, table rows) is launched through the
webserver's GraphQL API, and while it runs: a run's worker and its step process are killed with
SIGKILL in the middle of the embeddings step, the daemon is restarted, and the Postgres server is
restarted (every connection dropped). The backfill completes; every asset partition is materialised
exactly once; the table holds exactly one row per embedded pixel; the UI's partition counts and the
explorer agree with storage. The data root is a local folder here (the object-store path is tested
by test_object_store.py)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from conftest import BACKFILL_REGIONS, BACKFILL_YEARS, REPO_ROOT, backfill_home
from resources.testing.dagster_services import DagsterServices
from resources.testing.explorer_server import ExplorerServer, free_port
from resources.testing.postgres_server import PostgresServer, postgres_bindir

pytestmark = pytest.mark.skipif(postgres_bindir() is None, reason="PostgreSQL's server is not installed")

ROOT = REPO_ROOT
COMPOSE = ROOT / "deploy" / "compose"
ASSETS = ("s2_raw", "s1_raw", "embeddings", "embedding_table")
PARTITIONS = [f"{region}|{year}" for region in BACKFILL_REGIONS for year in BACKFILL_YEARS]
DEADLINE_S = 1200
RUN_WORKER = "Executing steps using multiprocess executor: parent process (pid:"  # the run worker's own line
TOKEN = "a-token-for-this-test-only-0123456789"


def _container_commands(ports: dict[str, int], workspace: Path, tokens: Path) -> dict[str, list[str]]:
    """What the compose services run (the code service runs the image's CMD), moved onto loopback
    ports and this checkout's paths; executables from this environment."""
    services = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())["services"]
    cmd = next(line for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    commands = {"code": yaml.safe_load(cmd[4:])} | {name: list(services[name]["command"])
                                                   for name in ("webserver", "daemon", "explorer")}
    moved = {"0.0.0.0": "127.0.0.1", "4000": str(ports["code"]), "3000": str(ports["webserver"]),
             "8765": str(ports["explorer"]), "/opt/dagster/home/workspace.yaml": str(workspace),
             "http://localhost:3000": f"http://127.0.0.1:{ports['webserver']}", "/run/secrets/explorer_tokens": str(tokens)}
    bin_dir = Path(sys.executable).parent
    return {name: [str(bin_dir / argv[0]), *[moved.get(arg, arg) for arg in argv[1:]]] for name, argv in commands.items()}


def _container_env(home: Path, postgres: PostgresServer) -> dict[str, str]:
    """The compose file's environment for the tessera services, on this machine."""
    compose = yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text())
    # compose's interpolation of ${NAME:-default}, from an environment without NAME
    env = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v))
           for k, v in compose["services"]["webserver"]["environment"].items()}
    assert not [v for v in env.values() if "$" in v], env
    env |= {"DAGSTER_HOME": str(home / "dagster"), "TESSERA_HOME": str(home), **postgres.env}
    for variable in ("TESSERA_DATA_URI", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_REGION"):  # a local data root
        env.pop(variable)
    return env


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL a run worker and every process under it, as when its pod or machine dies."""
    for victim in [pid, *_descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Faults:
    """Injects the three faults in order as the backfill reaches each point, polled from the event log."""

    def __init__(self, instance, services: DagsterServices, postgres: PostgresServer):
        self.instance, self.services, self.postgres = instance, services, postgres
        self.backfill_id: str | None = None
        self.killed_run: str | None = None
        self.daemon_restarted_at: float | None = None
        self.postgres_restarted = False

    def _running_embeddings(self):
        """(run id, run worker pid, its events, when its embeddings step started) of each started run
        whose embeddings step has begun."""
        from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

        for record in self.instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
            logs = self.instance.all_logs(record.dagster_run.run_id)
            started = [e for e in logs if e.dagster_event and e.dagster_event.step_key == "embeddings"
                       and e.dagster_event.event_type == DagsterEventType.STEP_START]
            pid = next((int(e.user_message.rsplit("pid: ", 1)[1].rstrip(").")) for e in logs
                        if e.user_message.startswith(RUN_WORKER)), None)
            if started and pid:
                yield record.dagster_run.run_id, pid, logs, started[0].timestamp

    def __call__(self) -> None:
        """One poll (the backfill's wait calls it every half second)."""
        try:
            self._step()
        except Exception as error:  # the test's own reads while Postgres restarts: try again next poll
            if "connection" not in str(error).lower() and "server closed" not in str(error).lower():
                raise

    def _step(self) -> None:
        if self.killed_run is None:
            for run_id, pid, logs, _ in self._running_embeddings():
                if any(e.step_key == "embeddings" and e.user_message.startswith("block ") for e in logs):
                    _kill_tree(pid)  # blocks written, the partition not yet checked nor published
                    self.killed_run = run_id
                    return
        elif self.daemon_restarted_at is None:
            from dagster import DagsterRunStatus, RunsFilter

            done = RunsFilter(statuses=[DagsterRunStatus.SUCCESS], tags={"dagster/backfill": self.backfill_id})
            if self.instance.get_runs_count(done) >= 1:
                self.services.restart("daemon")
                self.daemon_restarted_at = time.time()
        elif not self.postgres_restarted:
            if any(start > self.daemon_restarted_at for *_, start in self._running_embeddings()):
                self.postgres.restart()
                self.postgres_restarted = True


def _pixels_embedded(storage, year: int, region: str) -> int:
    with rasterio.open(storage.path("embeddings", str(year), region) / "scales.tif") as scales:
        return int(np.isfinite(scales.read(1)).sum())


def test_a_backfill_survives_a_killed_run_a_daemon_restart_and_a_database_restart(tmp_path, monkeypatch):
    postgres = PostgresServer(tmp_path / "postgres").start()
    try:
        _backfill_under_faults(tmp_path, postgres, monkeypatch)
    finally:
        postgres.stop()


def _backfill_under_faults(tmp_path: Path, postgres: PostgresServer, monkeypatch) -> None:
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

    for name, value in postgres.env.items():  # this process reads the instance too
        monkeypatch.setenv(name, value)
    home, env, _ = backfill_home(tmp_path, COMPOSE / "dagster.yaml", postgres.env)
    env = {**env, **_container_env(home, postgres)}
    ports = {name: free_port() for name in ("code", "webserver", "explorer")}
    workspace = yaml.safe_load((COMPOSE / "workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"] |= {"host": "127.0.0.1", "port": ports["code"]}
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    tokens = home / "explorer-tokens.yaml"
    tokens.write_text(yaml.safe_dump({"alice": TOKEN}))
    commands = _container_commands(ports, home / "workspace.yaml", tokens)
    explorer = commands.pop("explorer")

    services = DagsterServices(commands, ROOT, env, tmp_path, ports["webserver"], code_port=ports["code"])
    instance = DagsterInstance.from_config(str(home / "dagster"))
    try:
        services.wait_loaded()
        faults = Faults(instance, services, postgres)
        backfill_id = faults.backfill_id = services.launch_backfill(PARTITIONS, ASSETS, "2 years x 3 regions, under faults")
        done = services.wait_backfill(backfill_id, DEADLINE_S, while_waiting=faults)
        assert faults.killed_run and faults.daemon_restarted_at and faults.postgres_restarted, "every fault happened"
        assert done["status"] == "COMPLETED_SUCCESS", done
        stats = {asset: services.partition_stats(asset) for asset in ASSETS}
    finally:
        services.stop()

    # the killed run failed and was run again, from its failed step, by the daemon's run retries
    killed = instance.get_run_by_id(faults.killed_run)
    assert killed.status == DagsterRunStatus.FAILURE
    retries = instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": faults.killed_run}))
    assert [r.status for r in retries] == [DagsterRunStatus.SUCCESS], retries
    # runs ran side by side (the queue admits 4), and no two embeddings steps at once (the gpu pool)
    records = [r for r in instance.get_run_records() if r.start_time and r.end_time]
    spans = sorted((r.start_time, r.end_time) for r in records)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "two runs at once"
    # every asset partition materialised exactly once, and the UI counts them so
    for asset in ASSETS:
        events = instance.fetch_materializations(AssetKey(asset), limit=1000).records
        keys = sorted(e.partition_key for e in events)
        assert keys == sorted(PARTITIONS), f"{asset}: {keys}"
        assert stats[asset]["numMaterialized"] == len(PARTITIONS) and stats[asset]["numFailed"] == 0, (asset, stats)

    from resources.storage.data_root import TesseraStorage
    from resources.table.vector_store import VectorStore

    storage = TesseraStorage(root=str(home / "data"))
    expected = sorted((year, region) for region in BACKFILL_REGIONS for year in BACKFILL_YEARS)
    assert storage.partitions("embeddings") == expected
    table = VectorStore(uri=str(home / "data" / "lancedb")).table()
    for year, region in expected:
        rows = table.count_rows(f"year = {year} AND region = '{region}'")
        assert rows == _pixels_embedded(storage, year, region) > 0, (year, region, rows)
    keys = table.search().select(["key"]).limit(None).to_arrow()["key"].to_pylist()
    assert len(keys) == len(set(keys)) == table.count_rows(), "no row twice"

    _check_the_explorer(explorer, env, ports["explorer"], expected, tmp_path)
    instance.dispose()


def _check_the_explorer(command: list[str], env: dict[str, str], port: int, expected, logs: Path) -> None:
    """The compose file's explorer (bound to every interface, with a tokens file) lists what storage
    holds to a user with a token, and nothing to a request without one."""
    with ExplorerServer(command, env, port, logs / "explorer.log", ready_status=401) as explorer:
        assert explorer.client.get("/api/partitions").status_code == 401
        listed = explorer.client.get("/api/partitions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert listed.status_code == 200, listed.text
        assert TOKEN not in explorer.log.read_text()
        assert sorted((p["year"], p["region"]) for p in listed.json()) == expected, listed.json()
