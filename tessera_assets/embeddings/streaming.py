"""Streams a (year, region) through the encoder block by block, with reading and sampling of the
next block and quantising and writing of the previous one running beside the forward pass, so the
encoder is the only thing on the critical path and memory is bounded by the block, not the region."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from model.quantise import quantise
from model.selection import EncoderInputs, select_inputs
from resources.storage.pixel_series import read_window
from resources.storage.data_root import EmbeddingWriter, RawPartition

if TYPE_CHECKING:  # annotations only: torch comes with the encoder the caller loaded
    from model.encoder import TesseraEncoder
    from model.inference import Precision


@dataclass
class StreamStats:
    pixels: int = 0
    embedded: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0

    @property
    def no_data_fraction(self) -> float:
        return 1 - self.embedded / self.pixels if self.pixels else 0.0


def block_rng(seed: int, block_index: int) -> np.random.Generator:
    """Random sampling seeded per block, so results do not depend on thread timing or block order."""
    return np.random.default_rng([seed, block_index])


def block_inputs(encoder: TesseraEncoder, s2: RawPartition, s1: RawPartition, window: Window, index: int,
                 mode: str, seed: int) -> EncoderInputs:
    """The selected encoder inputs of one block, the same whether streamed or re-embedded by a check."""
    return select_inputs(read_window(s2, s1, window), encoder.config, encoder.normalisation, mode,
                         block_rng(seed, index))


def embed_block(encoder: TesseraEncoder, s2: RawPartition, s1: RawPartition, window: Window, index: int,
                mode: str, seed: int, batch_size: int, precision: Precision) -> np.ndarray:
    """One block's float32 embeddings (h, w, dim), NaN where there is no data; used by checks."""
    vectors = encoder.embed_inputs(block_inputs(encoder, s2, s1, window, index, mode, seed), batch_size, precision)
    return vectors.reshape(int(window.height), int(window.width), -1)


def stream_partition(encoder: TesseraEncoder, s2: RawPartition, s1: RawPartition, writer: EmbeddingWriter,
                     block: int, mode: str, seed: int, batch_size: int, precision: Precision,
                     progress: Callable[[str], None] | None = None, windows: list[Window] | None = None,
                     readers: int = 1, dims: int | None = None) -> StreamStats:
    """Embed every block of the grid (or the given windows, which the benchmark uses).

    `readers` blocks are read and sampled ahead at once, on as many threads: one keeps up with a
    CPU forward pass, a GPU's needs several (memory grows by one block per reader). `dims` keeps a
    Matryoshka prefix, quantised on its own (the scale is that of the stored dimensions)."""
    windows = windows or s2.grid.blocks(block)
    stats = StreamStats()
    started = time.perf_counter()

    def load(i: int) -> EncoderInputs:
        return block_inputs(encoder, s2, s1, windows[i], i, mode, seed)

    def store(window: Window, vectors: np.ndarray) -> None:
        q, scales = quantise(vectors[:, :dims])
        h, w = int(window.height), int(window.width)
        writer.write(window, q.reshape(h, w, -1), scales.reshape(h, w))

    with ThreadPoolExecutor(readers, thread_name_prefix="read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="write") as out:
        upcoming = deque(reader.submit(load, i) for i in range(min(readers, len(windows))))
        written = None
        for i, window in enumerate(windows):
            inputs = upcoming.popleft().result()
            if i + readers < len(windows):
                upcoming.append(reader.submit(load, i + readers))
            t0 = time.perf_counter()
            vectors = encoder.embed_inputs(inputs, batch_size, precision)
            stats.forward_seconds += time.perf_counter() - t0
            stats.pixels += inputs.count
            stats.embedded += len(inputs.index)
            if written is not None:
                written.result()
            written = out.submit(store, window, vectors)
            if progress and (i % 10 == 9 or i + 1 == len(windows)):
                rate = stats.embedded / max(stats.forward_seconds, 1e-9)
                progress(f"block {i + 1}/{len(windows)}: {stats.embedded} px embedded, {rate:,.0f} px/s forward")
        if written is not None:
            written.result()
    stats.seconds = time.perf_counter() - started
    return stats
