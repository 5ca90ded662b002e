"""Dagster's long-running services as real processes (webserver, daemon, and where a deployment has
one, a gRPC code server), and the webserver's GraphQL API as a user's script drives it: launch a
backfill, retry it, wait for it. Each service can be restarted alone, as an operator or a crashed pod
restarts it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
RETRY = """mutation($params: ReexecutionParams!) { reexecutePartitionBackfill(reexecutionParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status runs(limit: 100) { runId status tags { key value } } } } }"""
LOADED = """{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name } } } }"""
PARTITION_STATS = """query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
  __typename ... on AssetNode { partitionStats { numMaterialized numFailed numMaterializing } } } }"""
FINISHED = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")


class DagsterServices:
    """Named service processes, started in the order given, their output in `<logs>/<name>.log`, and
    the webserver at `port`. A gRPC code server (`code_port`) is started first and waited for, as a
    deployment's health check would, so that the webserver and daemon find it serving."""

    def __init__(self, commands: dict[str, list[str]], cwd: Path, env: dict[str, str], logs: Path, port: int,
                 code_port: int | None = None):
        self.commands, self.cwd, self.env, self.logs = commands, cwd, env, logs
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.processes: dict[str, subprocess.Popen] = {}
        for name in commands:
            self.start(name)
            if name == "code" and code_port is not None:
                self._wait_grpc(code_port)

    def _wait_grpc(self, port: int, timeout_s: float = 300) -> None:
        dagster = Path(self.commands["code"][0]).with_name("dagster")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            check = subprocess.run([str(dagster), "api", "grpc-health-check", "--port", str(port)], env=self.env,
                                   capture_output=True, timeout=60)
            if check.returncode == 0:
                return
            if self.processes["code"].poll() is not None:
                raise AssertionError(f"the code server exited: see {self.logs / 'code.log'}")
            time.sleep(1)
        raise AssertionError(f"the code server did not serve on port {port} in {timeout_s:.0f} s")

    def start(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "a")
        self.processes[name] = subprocess.Popen(self.commands[name], cwd=self.cwd, env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT)

    def restart(self, name: str) -> None:
        """Stop the service (SIGTERM, then SIGKILL after 30 s) and start it again."""
        self._stop(self.processes[name])
        self.start(name)

    def query(self, text: str, **variables) -> dict:
        """One GraphQL request. A 5xx is tried again twice, a second apart, as the UI does: after a
        database restart the webserver's pooled connections fail once each (SQLAlchemy then drops them)."""
        for _ in range(3):
            response = httpx.post(self.url, json={"query": text, "variables": variables}, timeout=60)
            if response.status_code < 500:
                break
            time.sleep(1)
        if response.status_code >= 400:
            raise AssertionError(f"GraphQL {response.status_code}: {response.text[:2000]}")
        body = response.json()
        if "errors" in body:
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_loaded(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                loaded = self.query(LOADED)["repositoriesOrError"]
                if loaded["__typename"] == "RepositoryConnection" and loaded["nodes"]:
                    return
            except (httpx.HTTPError, KeyError, TypeError, AssertionError):
                pass  # not serving yet
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited ({process.returncode}): see {self.logs / (name + '.log')}")
            time.sleep(1)
        raise AssertionError("the webserver did not load the code location")

    def launch_backfill(self, partitions: list[str], assets: tuple[str, ...], title: str) -> str:
        launched = self.query(LAUNCH, params={"partitionNames": partitions, "title": title,
                                              "assetSelection": [{"path": [a]} for a in assets]})
        return _backfill_id(launched["launchPartitionBackfill"])

    def retry_backfill(self, backfill_id: str) -> str:
        launched = self.query(RETRY, params={"parentRunId": backfill_id, "strategy": "FROM_FAILURE"})
        return _backfill_id(launched["reexecutePartitionBackfill"])

    def backfill(self, backfill_id: str) -> dict:
        return self.query(STATUS, id=backfill_id)["partitionBackfillOrError"]

    def wait_backfill(self, backfill_id: str, timeout_s: float, while_waiting=None) -> dict:
        """The backfill once it has finished; `while_waiting()` is called every poll (0.5 s) until then."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                backfill = self.backfill(backfill_id)
            except (httpx.HTTPError, AssertionError):  # a webserver being restarted, a database failed over
                backfill = {"status": None}
            if backfill["status"] in FINISHED:
                return backfill
            if while_waiting is not None:
                while_waiting()
            time.sleep(0.5)
        raise AssertionError(f"backfill {backfill_id} did not finish in {timeout_s:.0f} s")

    def partition_stats(self, asset: str) -> dict:
        return self.query(PARTITION_STATS, path=[asset])["assetNodeOrError"]["partitionStats"]

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            self._stop(process)


def _backfill_id(launched: dict) -> str:
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def run_partition(run: dict) -> str:
    """The partition key of a run as the GraphQL API lists it ("tiny|2021")."""
    return next(t["value"] for t in run["tags"] if t["key"] == "dagster/partition")
