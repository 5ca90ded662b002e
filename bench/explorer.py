"""Latency of the map explorer on the demo, from a scripted client against a running `tessera serve`;
prints JSON. Run `make demo` first.

    .venv/bin/python bench/explorer.py [--clicks 100] [--home .tessera]

Click-to-results: POST /api/search at random pixel centres of the demo partitions (k 20), timed
from request to parsed JSON. Tiles: every z16 tile over each demo partition, for the PCA and
true-colour base layers, the similarity layer of a query and a trained class map. p50 and p95 in
milliseconds, alone and beside one busy CPU-bound process (a shared machine), after a warm-up
request of each kind (the server computes each layer once and keeps it)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from busy import one_busy_process  # noqa: E402
from resources.testing.explorer_server import ExplorerServer  # noqa: E402
from tessera_assets.explorer.tiles import lonlat_to_tile  # noqa: E402


def _stats(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "max_ms": round(float(ms.max()), 1)}


def _timed(call) -> float:
    start = time.perf_counter()
    response = call()
    response.raise_for_status()
    if response.headers["content-type"].startswith("application/json"):
        response.json()
    return time.perf_counter() - start


def measure(client, partitions: list[dict], clicks: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    searches, tiles = [], {"pca": [], "true_colour": [], "similarity": [], "classes": []}
    for i in range(clicks):
        p = partitions[i % len(partitions)]
        w, s, e, n = p["bbox"]
        body = {"lon": float(rng.uniform(w + 1e-4, e - 1e-4)), "lat": float(rng.uniform(s + 1e-4, n - 1e-4)),
                "year": p["year"], "k": 20}
        searches.append(_timed(lambda: client.post("/api/search", json=body)))
    for p in partitions:
        w, s, e, n = p["bbox"]
        query = client.post("/api/search", json={"lon": (w + e) / 2, "lat": (s + n) / 2, "year": p["year"]}).json()["query"]
        client.delete("/api/labels")
        for j, (lon, lat) in enumerate(zip(rng.uniform(w, e, 12), rng.uniform(s, n, 12))):
            client.post("/api/labels", json={"lon": lon, "lat": lat, "year": p["year"], "label": f"c{j % 3}"})
        version = client.post("/api/train", json={"year": p["year"], "region": p["region"]}).json()["version"]
        x0, y1 = lonlat_to_tile(w, s, 16)
        x1, y0 = lonlat_to_tile(e, n, 16)
        for layer, params in (("pca", {}), ("true_colour", {}), ("similarity", {"query": query, "threshold": 0.5}),
                              ("classes", {"v": version})):
            if layer == "true_colour" and layer not in p["layers"]:
                continue
            url = f"/tiles/{layer}/{p['year']}/{p['region']}/16"
            client.get(f"{url}/{x0}/{y0}.png", params=params)  # the layer is computed once, on its first tile
            for x in range(x0, x1 + 1):
                for y in range(y0, y1 + 1):
                    tiles[layer].append(_timed(lambda: client.get(f"{url}/{x}/{y}.png", params=params)))
    client.delete("/api/labels")
    return {"click_to_results": _stats(searches), "tiles": {k: _stats(v) for k, v in tiles.items() if v}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clicks", type=int, default=100)
    parser.add_argument("--home", default=str(ROOT / ".tessera"))
    args = parser.parse_args()
    home = Path(args.home)
    with ExplorerServer.over(home, ROOT / "regions.yaml", home / "data" / "lancedb") as server:
        partitions = server.client.get("/api/partitions").json()
        if not partitions:
            sys.exit("no embeddings partitions: run `make demo` first")
        measure(server.client, partitions, 5, seed=1)  # warm-up: every layer computed once
        report = {"partitions": len(partitions), "alone": measure(server.client, partitions, args.clicks, seed=0)}
        with one_busy_process():
            report["beside_one_busy_process"] = measure(server.client, partitions, args.clicks, seed=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
