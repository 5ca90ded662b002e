"""How long `tessera` takes to start and answer, against a bare interpreter in the same run; prints JSON.

    .venv/bin/python bench/startup.py [--runs 7] [--lancedb-uri URI] [--rows 120000]

Every measurement is a fresh process, `--runs` of each, interleaved so that load from elsewhere on
the machine falls on all of them alike (after one unmeasured warm-up each, so files are cached).
The table searched is TESSERA_LANCEDB_URI's or the demo's (`.tessera/data/lancedb`) when it holds
rows, else a table of `--rows` synthetic rows written and indexed first, as `embedding_index` does.
Reported:
  median_s          - median wall time of `python -c pass`, `tessera --help`, and `tessera search`
                      of one of the table's pixels (default k=10)
  over_python_s     - the same less `python -c pass`: what the command itself costs
  search_says       - the last line `tessera search` printed (rows searched, index, seconds after
                      its imports, lancedb's included)
  imports           - per command, one more run under `-X importtime`: whether Dagster and LanceDB
                      were imported, and the slowest imports not nested in another (cumulative s)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tessera_assets.resources_by_deployment import lancedb_uri  # noqa: E402


def tessera() -> list[str]:
    """The console script next to this interpreter (what a user runs), else the module."""
    script = Path(sys.executable).with_name("tessera")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tessera_assets.cli"]


def a_pixel(uri: str) -> tuple[float, float, int] | None:
    """(lon, lat, year) of one row of the table at `uri`, or None when it has none."""
    from resources.table.store import TableStore

    if "://" not in uri and not Path(uri).exists():
        return None  # connecting would make the folder
    table = TableStore(uri=uri).table()
    row = table.search().select(["lon", "lat", "year"]).limit(1).to_list() if table is not None else []
    return (row[0]["lon"], row[0]["lat"], row[0]["year"]) if row else None


def build_table(uri: str, rows: int) -> None:
    """`rows` clustered 128-d rows in one partition, indexed as the `embedding_index` asset does."""
    import numpy as np

    from resources.table.store import TableStore
    from resources.testing.synthetic_table import clustered, synthetic_rows

    store = TableStore(uri=uri)
    vectors = clustered(rows, np.random.default_rng(0))
    store.write_partition(2022, "bench", synthetic_rows(vectors, region="bench").to_batches(max_chunksize=50_000), 128)
    store.refresh_index()


def wall(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return seconds, done.stdout


def imports(command: list[str], env: dict[str, str], top: int = 6) -> dict:
    """One run under `-X importtime`: which stacks it loaded, and its slowest imports that no other
    import made (the interpreter's own start-up included)."""
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env=dict(env, PYTHONPROFILEIMPORTTIME="1"))
    cumulative: dict[str, float] = {}
    loaded = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, total, name = line.split("|", 2)
        if not total.strip().isdigit():
            continue  # the header line
        loaded.add(name.strip().split(".")[0])
        if not name.startswith("  "):  # not nested in another import
            cumulative[name.strip()] = int(total) / 1e6
    slowest = sorted(cumulative.items(), key=lambda item: -item[1])[:top]
    return {"dagster": "dagster" in loaded, "lancedb": "lancedb" in loaded,
            "slowest_s": {name: round(seconds, 3) for name, seconds in slowest}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--lancedb-uri", default=None,
                        help="the table to search (default: TESSERA_LANCEDB_URI or the demo's)")
    parser.add_argument("--rows", type=int, default=120_000, help="rows of the table built when there is none")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.lancedb_uri or lancedb_uri()
        uri = uri if "://" in uri else str((ROOT / uri).resolve())  # the commands run in the repository root
        pixel = a_pixel(uri)
        built = pixel is None
        if built:
            uri = f"{tmp}/lancedb"
            build_table(uri, args.rows)
            pixel = a_pixel(uri)
        lon, lat, year = pixel
        env = dict(os.environ, PYTHONPATH=str(ROOT), TESSERA_LANCEDB_URI=uri)
        commands = {
            "python": [sys.executable, "-c", "pass"],
            "help": [*tessera(), "--help"],
            "search": [*tessera(), "search", "--lon", repr(lon), "--lat", repr(lat), "--year", str(year),
                       "-k", str(args.k)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():
            wall(command, env)  # warm-up: files cached, bytecode written
        said = ""
        for _ in range(args.runs):
            for name, command in commands.items():
                seconds, out = wall(command, env)
                times[name].append(seconds)
                if name == "search":
                    said = out.strip().splitlines()[-1]
        median = {name: round(statistics.median(values), 3) for name, values in times.items()}
        report = {
            "runs": args.runs, "cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "table": {"uri": uri if not built else f"(built: {args.rows} rows)", "pixel": [lon, lat, year]},
            "median_s": median,
            "spread_s": {name: [round(min(values), 3), round(max(values), 3)] for name, values in times.items()},
            "over_python_s": {name: round(median[name] - median["python"], 3) for name in ("help", "search")},
            "search_says": said,
            "imports": {name: imports(command, env) for name, command in commands.items() if name != "python"},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
