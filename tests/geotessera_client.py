"""The official client, geotessera 0.7.5, in a virtual environment of its own (its dependencies are
not ours), to read back what we write and to sample what we import. The environment is built once
under .tessera/venvs (TESSERA_GEOTESSERA_VENV moves it) from PyPI, about a minute.

geotessera 0.11 reads the same tile layout but needs Python 3.12; where that interpreter exists
(TESSERA_PYTHON312) a second environment is built for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

VERSION = "0.7.5"
_READ = """
import json, sys
import numpy as np
from geotessera import GeoTessera

args = json.loads(sys.argv[1])
gt = GeoTessera(embeddings_dir=args["root"], registry_dir=args["registry"], cache_dir=args["cache"])
tiles = {}
for lon, lat in args["tiles"]:
    embedding, crs, transform = gt.fetch_embedding(lon, lat, args["year"])
    name = f"{lon:.2f}_{lat:.2f}"
    np.save(f"{args['out']}/tile_{name}.npy", embedding)
    tiles[name] = {"epsg": crs.to_epsg(), "transform": list(transform)[:6], "shape": list(embedding.shape)}
points = gt.sample_embeddings_at_points([tuple(p) for p in args["points"]], year=args["year"], auto_download=False)
np.save(f"{args['out']}/points.npy", points)
print(json.dumps(tiles))
"""


def client_python() -> Path:
    """The interpreter of an environment holding geotessera VERSION, built on first use."""
    venv = Path(os.environ.get("TESSERA_GEOTESSERA_VENV", Path(__file__).resolve().parents[1] / ".tessera" / "venvs"
                               / f"geotessera-{VERSION}"))
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"geotessera=={VERSION}"], check=True)
        ready.touch()
    return python


def read_with_geotessera(root: Path, registry: Path, year: int, tiles: list[tuple[float, float]],
                         points: list[tuple[float, float]], out: Path) -> tuple[dict, dict[str, "object"], "object"]:
    """geotessera's own reading of a tile root: each tile's dequantised array and georeference
    (`fetch_embedding`), and the vectors at points (`sample_embeddings_at_points`)."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    args = {"root": str(root), "registry": str(registry), "cache": str(out / "cache"), "year": year,
            "tiles": tiles, "points": points, "out": str(out)}
    done = subprocess.run([str(client_python()), "-c", _READ, json.dumps(args)], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    if done.returncode != 0:
        raise AssertionError(f"geotessera {VERSION} failed:\n{done.stderr[-4000:]}")
    georef = json.loads(done.stdout.strip().splitlines()[-1])
    arrays = {name: np.load(out / f"tile_{name}.npy") for name in georef}
    return georef, arrays, np.load(out / "points.npy")
