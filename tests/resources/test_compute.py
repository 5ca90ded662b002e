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


def test_cpu_workers_are_deterministic_and_agree_with_one_thread():
    import numpy as np
    import torch

    from model.encoder import TesseraEncoder
    from model.inference import prepare_for_inference

    rng = np.random.default_rng(0)
    n, t = 300, 20
    arrays = (rng.uniform(0, 6000, (n, t, 10)), np.arange(1, t + 1), rng.random((n, t)) < 0.6,
              rng.uniform(2000, 9000, (n, t, 2)), np.arange(1, t + 1), rng.uniform(2000, 9000, (n, t, 2)),
              np.arange(5, t + 5))
    encoder = prepare_for_inference(TesseraEncoder.from_preset("tessera-demo"), torch.device("cpu"), "fp32", threads=3)
    assert encoder.cpu_workers == 3
    first = encoder.embed_series(*arrays, batch_size=128)
    assert np.array_equal(first, encoder.embed_series(*arrays, batch_size=128)), "the same bytes every time"
    encoder.cpu_workers = 1
    assert np.abs(first - encoder.embed_series(*arrays, batch_size=128)).max() < 1e-5
