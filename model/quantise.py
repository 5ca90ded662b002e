"""TESSERA's storage format: int8 with one float32 scale per pixel.

`scale = max|x| / 127`, `q = round(x / scale)`, dequantised as `q * scale`; a NaN scale means no data.
"""

from __future__ import annotations

import numpy as np


def quantise(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., D) float -> int8 (..., D) and float32 scales (...). Rows that are NaN get scale NaN."""
    x = np.asarray(embeddings, dtype=np.float32)
    scale = np.abs(x).max(axis=-1) / 127.0
    missing = ~np.isfinite(scale)
    safe = np.where(missing | (scale == 0), 1.0, scale)
    q = np.clip(np.rint(x / safe[..., None]), -127, 127)
    q = np.where(missing[..., None], 0, q).astype(np.int8)
    return q, np.where(missing, np.nan, scale).astype(np.float32)


def dequantise(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 (..., D) and scales (...) -> float32 (..., D); no-data rows (scale NaN) come back NaN."""
    return q.astype(np.float32) * scale[..., None].astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Unit length along the last axis (zero vectors stay zero), so a dot product is a cosine."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_to(q: np.ndarray, scale: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of int8 vectors (..., D) to a float query, without dequantising: the
    per-pixel scale cancels in a cosine. float32 (...), NaN where there is no data (scale NaN or a
    zero vector). A longer query is cut to the stored dimensions (Matryoshka prefixes)."""
    query = np.asarray(query, np.float32)[: q.shape[-1]]
    unit = query / np.linalg.norm(query)
    flat = q.reshape(-1, q.shape[-1]).astype(np.float32)
    norms = np.linalg.norm(flat, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(np.isfinite(np.asarray(scale).ravel()) & (norms > 0), flat @ unit / norms, np.nan)
    return values.astype(np.float32).reshape(q.shape[:-1])
