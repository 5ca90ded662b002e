"""The newcomer's path: a fresh clone, the README's two commands, a summary that shows the point,
and nothing on the terminal that looks broken (no warning, no traceback)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# what a terminal must never show a newcomer: our packaging's or code's warnings and tracebacks
BROKEN = re.compile(r"warning|traceback|deprecat", re.IGNORECASE)


def _newcomer_environment(home: Path) -> dict[str, str]:
    """The caller's environment without anything of ours (instance, data root, a virtualenv), so
    the clone runs as on a machine that never saw tessera; package caches stay, as CI has them."""
    ours = ("TESSERA_", "DAGSTER_", "VIRTUAL_ENV", "PYTHONPATH", "PYTEST_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env | {"TERM": "dumb", "COLUMNS": "120"}


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the project's git checkout to clone")
def test_a_fresh_clone_runs_the_readmes_two_commands(tmp_path):
    clone = tmp_path / "tessera"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = _newcomer_environment(tmp_path)
    started = time.perf_counter()
    demo = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    terminal = demo.stdout + demo.stderr
    assert demo.returncode == 0, terminal[-4000:]
    for expected in ("few-shot accuracy, k=1", "few-shot accuracy, k=10", "biomass R²",
                     "change F1", "estimate ha ± 95% CI", "example search", "products of demo", "catalog layouts:",
                     "done in", "make dev", "make serve", "tessera search"):
        assert expected in terminal, (expected, terminal[-4000:])
    assert not [line for line in terminal.splitlines() if BROKEN.search(line)], terminal[-4000:]
    assert (clone / ".tessera" / "data" / "catalog.json").exists() and (clone / ".tessera" / "dagster").is_dir()
    # the README's other command: in the clone it installs nothing more and collects every test
    # (this run of the suite is the one that executes them)
    # (the Makefile's own -q lists the tests and ends with "N tests collected"; a second -q would not)
    collected = subprocess.run(["make", "test"], cwd=clone, env=env | {"PYTEST_ADDOPTS": "--collect-only"},
                               capture_output=True, text=True, timeout=600)
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    assert re.search(r"\d+ tests collected", collected.stdout), collected.stdout[-2000:]
    print(f"make demo in a fresh clone: {seconds:.0f} s")
