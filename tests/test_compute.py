"""The compute resource follows the CPUs a process is actually granted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, torch
os.sched_setaffinity(0, {next(iter(os.sched_getaffinity(0)))})
from resources.compute import ComputeDevice
from model.inference import available_cpus
ComputeDevice(device="cpu").resolve()
print(available_cpus(), torch.get_num_threads())
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_threads_follow_the_affinity_mask():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_explicit_thread_count_wins():
    import torch

    from resources.compute import ComputeDevice

    before = torch.get_num_threads()
    try:
        ComputeDevice(device="cpu", threads=1).resolve()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_thread_tuner_runs_the_fastest_and_keeps_exploring():
    from model.inference import ThreadTuner

    tuner = ThreadTuner(4, explore_every=4)
    assert tuner.candidates == [4, 2, 1]
    tried = []
    for _ in range(3):  # every candidate is timed first
        tried.append(tuner.choose())
        tuner.rates[tried[-1]] = {4: 100.0, 2: 300.0, 1: 150.0}[tried[-1]]
        tuner.batches += 1
    assert tried == [4, 2, 1] and tuner.best == 2
    chosen = []
    for _ in range(8):
        chosen.append(tuner.choose())
        tuner.batches += 1
    assert chosen.count(2) == 6 and set(chosen) - {2}, "mostly the fastest, now and then another"
