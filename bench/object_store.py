"""How products should move to and from an object store: the candidates measured against each other
and against the local disk, in the same run; prints JSON.

    .venv/bin/python bench/object_store.py [--home .tessera] [--region demo] [--year 2022]

Needs a materialised partition (`make demo`). An S3 API (moto's server, its own process so it does
not share this one's interpreter) serves a bucket on localhost: no network latency, so the figures
show per-request and per-byte overheads, which a real store's latency only multiplies. Measured:
- publish: a raw partition (one GeoTIFF per observation) and an embeddings partition uploaded by
  obstore with the project's thread pool, by obstore one file at a time, and by GDAL writing each
  raster straight to /vsis3/ (`rasterio.shutil.copy`);
- read: a whole embeddings partition, one 256 x 256 window of it (what the explorer and search do),
  and a whole raw partition block by block (what the encoder does), read in place by GDAL through
  /vsis3/ range requests, against downloading the partition with obstore and reading it locally.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import obstore  # noqa: E402
import rasterio.shutil  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from resources.storage.gdal_env import read_environment  # noqa: E402
from resources.storage.object_store import ObjectRoot  # noqa: E402
from resources.storage.data_root import EmbeddingPartition, RawPartition, TesseraStorage  # noqa: E402

KEY = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "aws_region": "us-east-1", "allow_http": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn, repeat: int = 3) -> float:
    """Best of `repeat` (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)


def publish_figures(store: ObjectRoot, folder: Path, name: str) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file()]

    def serial():
        for p in files:
            obstore.put(store.store, f"serial/{name}/{p.relative_to(folder)}", p)

    def gdal():
        with read_environment(store.gdal_options() | {"CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE": "YES"}):
            for p in files:
                target = "/vsis3/" + store.uri(f"gdal/{name}/{p.relative_to(folder)}").removeprefix("s3://")
                if p.suffix == ".tif":
                    rasterio.shutil.copy(p, target, driver="GTiff", tiled=True, compress="deflate")
                else:
                    obstore.put(store.store, f"gdal/{name}/{p.relative_to(folder)}", p)

    figures = {"files": len(files), "mb": size_mb(folder),
               "obstore_threads_s": timed(lambda: store.upload(folder, f"threads/{name}")),
               "obstore_serial_s": timed(serial), "gdal_vsis3_s": timed(gdal, repeat=1)}
    figures["serial_over_threads"] = round(figures["obstore_serial_s"] / figures["obstore_threads_s"], 2)
    figures["gdal_over_threads"] = round(figures["gdal_vsis3_s"] / figures["obstore_threads_s"], 2)
    return figures


def read_figures(store: ObjectRoot, storage: TesseraStorage, local: Path, key: str, read) -> dict:
    """`read(partition)` on the local folder, in place on the store, and after a download."""
    remote = storage.folder(*key.split("/"))

    def downloaded():
        with tempfile.TemporaryDirectory() as tmp:
            for k in store.keys(remote.key):
                store.download(k, Path(tmp) / k[len(remote.key) + 1:])
            read(Path(tmp))

    figures = {"local_s": timed(lambda: read(local)), "in_place_s": timed(lambda: read(remote)),
               "download_then_local_s": timed(downloaded)}
    figures["in_place_over_local"] = round(figures["in_place_s"] / figures["local_s"], 2)
    figures["download_over_in_place"] = round(figures["download_then_local_s"] / figures["in_place_s"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=".tessera")
    parser.add_argument("--region", default="demo")
    parser.add_argument("--year", type=int, default=2022)
    args = parser.parse_args()
    data = Path(args.home, "data")
    raw, emb = data / "raw" / "s2" / str(args.year) / args.region, data / "embeddings" / str(args.year) / args.region
    if not (raw / "index.json").exists() or not (emb / "scales.tif").exists():
        sys.exit(f"no materialised partition {args.region}|{args.year} under {data}: run `make demo` first")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket="bench")
        options = KEY | {"aws_endpoint": endpoint}
        store = ObjectRoot("s3://bench/root", options)
        storage = TesseraStorage(root="s3://bench/root", storage_options=options)
        report = {"region": args.region, "year": args.year, "cpus": os.cpu_count(),
                  "publish_raw_s2": publish_figures(store, raw, "raw"),
                  "publish_embeddings": publish_figures(store, emb, "emb")}
        for product, folder in (("raw/s2", raw), ("embeddings", emb)):
            with storage.publish(*product.split("/"), str(args.year), args.region) as tmp:
                shutil.copytree(folder, tmp, dirs_exist_ok=True)
        key = f"{args.year}/{args.region}"

        def whole_embeddings(folder):
            EmbeddingPartition(folder).read()

        def window_embeddings(folder):
            EmbeddingPartition(folder).read(Window(0, 0, 256, 256))

        def whole_raw(folder):
            partition = RawPartition(folder)
            for window in partition.grid.blocks(512):
                partition.read_block(window)

        report["read_embeddings_whole"] = read_figures(store, storage, emb, f"embeddings/{key}", whole_embeddings)
        report["read_embeddings_window"] = read_figures(store, storage, emb, f"embeddings/{key}", window_embeddings)
        report["read_raw_s2_whole"] = read_figures(store, storage, raw, f"raw/s2/{key}", whole_raw)
        print(json.dumps(report, indent=1))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
