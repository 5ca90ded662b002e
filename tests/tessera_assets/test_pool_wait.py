"""A run whose step waits for a pool slot stays idle (tessera_assets.pool_wait), and Dagster's own
executors still spin while waiting (when this half fails, Dagster fixed it: drop pool_wait)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from conftest import REPO_ROOT

JOB = textwrap.dedent("""
    import os
    from dagster import Definitions, asset, define_asset_job, multiprocess_executor
    if os.environ["FIXED"] == "1":
        from tessera_assets import pool_wait
        pool_wait.apply()

    @asset(pool="gpu")
    def on_the_gpu() -> int:
        return 1

    defs = Definitions(assets=[on_the_gpu], jobs=[define_asset_job("wait", executor_def=multiprocess_executor)])
""")
WATCH_S = 4.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _waiting_run_cpu(tmp_path: Path, fixed: bool) -> float:
    """CPU seconds a run waiting for the `gpu` slot (held by another run) uses over WATCH_S; the run
    then gets the slot when it is freed, and succeeds."""
    home = tmp_path / ("fixed" if fixed else "upstream")
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\ntelemetry:\n  enabled: false\n")
    (home / "job.py").write_text(JOB)
    instance = DagsterInstance.from_config(str(home))
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    assert instance.event_log_storage.claim_concurrency_slot("gpu", "another-run", "its-step").is_claimed
    env = dict(os.environ, DAGSTER_HOME=str(home), FIXED="1" if fixed else "0",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    dagster = Path(sys.executable).with_name("dagster")
    process = subprocess.Popen([str(dagster), "job", "execute", "-f", str(home / "job.py"), "-j", "wait"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        time.sleep(2.0)  # past start-up: the step is waiting for its claim
        before = _cpu_seconds(process.pid)
        time.sleep(WATCH_S)
        used = _cpu_seconds(process.pid) - before
        assert process.poll() is None, "the run did not wait for the slot"
        instance.event_log_storage.free_concurrency_slots_for_run("another-run")
        assert process.wait(120) == 0, process.stdout.read().decode()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
        instance.dispose()
    (run,) = DagsterInstance.from_config(str(home)).get_runs()
    assert run.status == DagsterRunStatus.SUCCESS
    return used


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_a_run_waiting_for_a_pool_slot_is_idle_and_still_gets_it(tmp_path):
    fixed = _waiting_run_cpu(tmp_path, fixed=True)
    upstream = _waiting_run_cpu(tmp_path, fixed=False)
    print(f"CPU seconds of a run waiting {WATCH_S} s for a pool slot: {fixed:.2f} with pool_wait, {upstream:.2f} without")
    assert fixed < 0.15 * WATCH_S, f"a waiting run used {fixed:.2f} s of CPU in {WATCH_S} s"
    # Dagster 1.13's multiprocess executor spins meanwhile; if this fails, it no longer does: drop pool_wait
    assert upstream > 2 * fixed + 0.2 * WATCH_S, (upstream, fixed)
