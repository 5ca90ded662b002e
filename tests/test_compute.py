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
