"""A backfill as a user launches one: 2 years x 3 regions through a real Dagster instance (the
webserver's GraphQL API, the daemon, the queued run coordinator and pools of deploy/dagster.yaml,
the multiprocess executor). One partition's Sentinel-1 files are unreadable at first: the backfill
completes with exactly that partition failed, and retrying the backfill from failure runs that
partition alone."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import BACKFILL_REGIONS, BACKFILL_YEARS, REPO_ROOT, backfill_home
from resources.testing.dagster_services import DagsterServices, run_partition
from resources.testing.explorer_server import free_port

ROOT = REPO_ROOT
YEARS, REGIONS = BACKFILL_YEARS, BACKFILL_REGIONS
BROKEN = ("tiny-north", 2021)
ASSETS = ("s2_raw", "s1_raw", "embeddings")
DEADLINE_S = 900


def _broken_files(catalog: Path) -> list[Path]:
    region, year = BROKEN
    return sorted(catalog.glob(f"sentinel-1-rtc/S1_DEMO_{region.replace('-', '_')}_*_{year}*/*.tif"))


def test_backfill_of_two_years_by_three_regions_through_the_daemon(tmp_path):
    home, env, catalog = backfill_home(tmp_path, ROOT / "deploy" / "dagster.yaml", {})
    broken = _broken_files(catalog)
    assert broken, "the demo catalog has Sentinel-1 files for the broken partition"
    for path in broken:
        path.rename(path.with_suffix(".away"))

    port = free_port()
    bin_dir = Path(sys.executable).parent
    instance = DagsterServices({  # as `make dev` runs them
        "webserver": [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"]}, ROOT, env, tmp_path, port)
    try:
        instance.wait_loaded()
        partitions = [f"{region}|{year}" for region in REGIONS for year in YEARS]
        started = time.monotonic()
        first = instance.launch_backfill(partitions, ASSETS, "2 years x 3 regions")
        done = instance.wait_backfill(first, DEADLINE_S)
        first_s = time.monotonic() - started
        by_partition = {run_partition(run): run["status"] for run in done["runs"]}
        assert sorted(by_partition) == sorted(partitions), "one run per partition"
        failed = [p for p, status in by_partition.items() if status != "SUCCESS"]
        assert failed == [f"{BROKEN[0]}|{BROKEN[1]}"], by_partition

        for path in broken:  # the cause is fixed; only the failed partition runs again
            path.with_suffix(".away").rename(path)
        started = time.monotonic()
        again = instance.wait_backfill(instance.retry_backfill(first), DEADLINE_S)
        retry_s = time.monotonic() - started
        assert [(run_partition(r), r["status"]) for r in again["runs"]] == [(failed[0], "SUCCESS")]
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
