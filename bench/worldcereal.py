"""k-shot on real labelled crop pixels (WorldCereal extractions), embeddings against the raw baseline; JSON.

    .venv/bin/python bench/worldcereal.py [--steps 200] [--heads logistic ncm]

The fixture holds 500 labelled points (Uganda, South Sudan, Kenya; 2017) with 12 monthly S2/S1
composites. The encoder (tessera-small) is pretrained self-supervised on those same series without
their labels, then the k-shot protocol runs on its embeddings and on the baseline features. Classes
with fewer than 12 samples are left out (k up to 10 needs them, and a held-out third).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from model.config import preset
from model.fewshot import DEFAULT_HEAD, HEADS, baseline_features, kshot_curve
from model.inference import embed_series
from model.pretrain import PretrainConfig, pretrain
from model.series import PixelSeries
from resources.scenes.sentinel import s1_to_tessera_units
from resources.scenes.stac import S2_BANDS

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real" / "worldcereal" / "test_public_extractions.parquet"
NO_DATA = 65535


def load(path: Path) -> tuple[PixelSeries, np.ndarray]:
    table = pq.read_table(path)
    steps = 12

    def band(prefix: str, name: str, res: str) -> np.ndarray:
        return np.stack([np.array(table[f"{prefix}-{name}-ts{t}-{res}"].to_pylist(), np.float64) for t in range(steps)], 1)

    s2 = np.stack([band("OPTICAL", b, "10m" if b in ("B02", "B03", "B04", "B08") else "20m") for b in S2_BANDS], -1)
    s2_valid = ((s2 != NO_DATA) & (s2 > 0)).all(-1)
    packed = np.stack([band("SAR", p, "20m") for p in ("VV", "VH")], -1)
    ok = (packed > 0) & (packed < NO_DATA)
    db = np.where(ok, 20 * np.log10(np.where(ok, packed, 1)) - 83, np.nan)  # the extraction's packing of sigma0 dB
    s1 = s1_to_tessera_units(np.where(ok, 10 ** (db / 10), np.nan))
    s1_valid = (s1 != 0).any(-1)
    starts = [dt.date.fromisoformat(str(d)[:10]) for d in table["start_date"].to_pylist()]
    doy = np.array([[(dt.date(s.year + (s.month - 1 + t) // 12, (s.month - 1 + t) % 12 + 1, 15)).timetuple().tm_yday
                     for t in range(steps)] for s in starts], np.int16)
    series = PixelSeries(np.where(s2_valid[..., None], s2, 0).astype(np.uint16), s2_valid, doy, s1, s1_valid, doy.copy())
    return series, np.array([str(v) for v in table["ewoc_code"].to_pylist()])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--heads", nargs="+", default=[DEFAULT_HEAD], choices=HEADS)
    args = parser.parse_args()
    series, labels = load(FIXTURE)
    codes, counts = np.unique(labels, return_counts=True)
    kept = set(codes[counts >= 12])
    keep = np.array([lab in kept for lab in labels]) & series.has_both
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        encoder = pretrain(series.subset(np.nonzero(series.has_both)[0]), preset("tessera-small"),
                           PretrainConfig(steps=args.steps, batch_size=128, warmup_steps=args.steps // 10),
                           Path(tmp) / "state.pt")
    pretrain_seconds = time.perf_counter() - started
    data = series.subset(np.nonzero(keep)[0])
    y = labels[keep]
    groups = np.arange(len(y))
    embeddings = embed_series(encoder, data)
    baseline = baseline_features(data)
    ks: list = [1, 2, 5, 10, "all"]
    report = {
        "samples": int(len(y)), "classes": {str(c): int(n) for c, n in zip(codes, counts) if c in kept},
        "pretrain": {"steps": args.steps, "seconds": round(pretrain_seconds, 1),
                     "loss_first": round(encoder.metadata["losses"][0], 2),
                     "loss_last10": round(float(np.mean(encoder.metadata["losses"][-10:])), 2)},
    }
    for head in args.heads:
        for name, x in (("embeddings", embeddings), ("baseline", baseline)):
            curve = kshot_curve(x, y, groups, ks, args.draws, head)
            report.setdefault(head, {})[name] = [
                {"k": p["k"], "macro_f1": round(p["macro_f1"], 3), "macro_f1_std": round(p["macro_f1_std"], 3),
                 "accuracy": round(p["accuracy"], 3)} for p in curve]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
