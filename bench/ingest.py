"""Raw ingest from remote COGs: serial against the project's path, in the same run; prints JSON.

    .venv/bin/python bench/ingest.py [--region demo] [--year 2022] [--latency-ms 50] [--fail-share 0.05]

The demo catalog's COGs are served by a local HTTP server that answers range requests after a fixed
latency and fails a share of them with 503 (resources/testing/flaky_http.py), as a busy object store does. One
year of one demo region's Sentinel-2 is ingested three times, each in a fresh process (so peak RSS is
its own): from local files (the reference output), over HTTP serially (one observation at a time,
`workers=1`), and over HTTP through the project's path (`StacCatalog.read_workers`). Reported per run:
wall seconds, requests, bytes read, failed requests, scenes lost, peak RSS; and whether each
remote run wrote the same pixels as the local one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import rasterio  # noqa: E402

from resources.testing.flaky_http import FlakyCogServer  # noqa: E402
from resources.scenes.demo_catalog import ensure_demo_catalog  # noqa: E402
from resources.scenes.ingest import ingest  # noqa: E402
from resources.regions import RegionCatalog  # noqa: E402
from resources.scenes.stac import StacCatalog  # noqa: E402


def pixels_digest(folder: Path) -> str:
    """A digest of every observation's pixels and mask and the valid counts (not the file bytes,
    which carry no information the pixels do not)."""
    digest = hashlib.sha256()
    for path in [*sorted((folder / "obs").glob("*.tif")), folder / "valid_count.tif"]:
        with rasterio.open(path) as src:
            digest.update(path.name.encode() + src.read().tobytes() + src.read_masks(1).tobytes())
    return digest.hexdigest()


def run_one(args) -> dict:
    """One ingest in this process: the child side of `main`."""
    catalog_root = Path(args.catalog)
    regions = RegionCatalog(path=args.regions)
    region = regions.get(args.region)
    scenes = StacCatalog(url=str(catalog_root / "catalog.json")).search("s2", region.bbox, args.year).scenes
    out = Path(args.out)
    out.mkdir(parents=True)
    workers = StacCatalog(url=".").read_workers if args.mode == "project" else 1
    started = time.perf_counter()
    if args.mode == "local":
        report = ingest("s2", scenes, region.grid, out)
        served = {}
    else:
        with FlakyCogServer(catalog_root, latency_s=args.latency_ms / 1000, fail_share=args.fail_share) as server:
            remote = [dataclasses.replace(s, hrefs={b: server.href(h) for b, h in s.hrefs.items()}) for s in scenes]
            report = ingest("s2", remote, region.grid, out, workers=workers)
        served = {"requests": server.requests, "failed_requests": server.failed, "bytes_read": server.bytes}
    return {"mode": args.mode, "workers": workers, "scenes": len(scenes), "wall_s": round(time.perf_counter() - started, 2),
            **served, "scenes_lost": len(report.lost),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "pixels_sha256": pixels_digest(out)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--region", default="demo")
    parser.add_argument("--year", type=int, default=2022)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--fail-share", type=float, default=0.05)
    parser.add_argument("--mode", choices=["local", "serial", "project"], help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    parser.add_argument("--regions", default=str(ROOT / "regions.yaml"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_one(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        catalog_root = Path(tmp) / "demo_catalog"
        demo = [r for r in RegionCatalog(path=args.regions).all() if r.demo]
        ensure_demo_catalog(catalog_root, demo)
        runs = {}
        for mode in ("local", "serial", "project"):
            command = [sys.executable, __file__, "--mode", mode, "--catalog", str(catalog_root), "--regions", args.regions,
                       "--region", args.region, "--year", str(args.year), "--latency-ms", str(args.latency_ms),
                       "--fail-share", str(args.fail_share), "--out", str(Path(tmp) / mode)]
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ))
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    reference = runs["local"].pop("pixels_sha256")
    for mode in ("serial", "project"):
        runs[mode]["same_pixels_as_local"] = runs[mode].pop("pixels_sha256") == reference
    print(json.dumps({"region": args.region, "year": args.year, "latency_ms": args.latency_ms,
                      "fail_share": args.fail_share, **runs,
                      "speedup_vs_serial": round(runs["serial"]["wall_s"] / runs["project"]["wall_s"], 1)}, indent=2))


if __name__ == "__main__":
    main()
