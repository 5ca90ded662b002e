"""One CPU-bound competitor beside a measurement, as another tenant's process on a shared machine."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2147483648


@contextlib.contextmanager
def one_busy_process() -> Iterator[None]:
    """A process spinning one core for as long as the block runs."""
    stop = multiprocessing.Event()
    competitor = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    competitor.start()
    try:
        yield
    finally:
        stop.set()
        competitor.join()
