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


_READ_ZARR = """
import json, sys
import numpy as np
import xarray as xr

args = json.loads(sys.argv[1])
ds = xr.open_zarr(args["store"], group=args["group"], zarr_format=3, consolidated=True)
sub = ds.sel(time=args["year"]).sel(x=xr.DataArray(args["x"], dims="p"), y=xr.DataArray(args["y"], dims="p"),
                                    method="nearest")
scales = sub["scales"].values
values = sub["embeddings"].values.T.astype(np.float32) * np.where(np.isfinite(scales), scales, np.nan)[:, None]
np.save(args["out"], values)
print(json.dumps({"dims": list(ds["embeddings"].dims), "attrs": dict(ds.attrs)}))
"""


def client_python() -> Path:
    """The interpreter of an environment holding geotessera VERSION, built on first use."""
    venv = Path(os.environ.get("TESSERA_GEOTESSERA_VENV", Path(__file__).resolve().parents[2] / ".tessera" / "venvs"
                               / f"geotessera-{VERSION}"))
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"geotessera=={VERSION}"], check=True)
        ready.touch()
    return python


def _run(script: str, args: dict) -> str:
    done = subprocess.run([str(client_python()), "-c", script, json.dumps(args)], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    if done.returncode != 0:
        raise AssertionError(f"the geotessera {VERSION} environment failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def read_zarr_with_xarray(store: Path, group: str, year: int, x: list[float], y: list[float], out: Path):
    """A zone group opened as the store's reader opens it (xarray, Zarr v3, consolidated) and
    sampled at the nearest pixel centres; returns its description and the dequantised vectors."""
    import numpy as np

    described = json.loads(_run(_READ_ZARR, {"store": str(store), "group": group, "year": year, "x": x, "y": y,
                                             "out": str(out)}))
    return described, np.load(out)


def read_with_geotessera(root: Path, registry: Path, year: int, tiles: list[tuple[float, float]],
                         points: list[tuple[float, float]], out: Path) -> tuple[dict, dict[str, "object"], "object"]:
    """geotessera's own reading of a tile root: each tile's dequantised array and georeference
    (`fetch_embedding`), and the vectors at points (`sample_embeddings_at_points`)."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    args = {"root": str(root), "registry": str(registry), "cache": str(out / "cache"), "year": year,
            "tiles": tiles, "points": points, "out": str(out)}
    georef = json.loads(_run(_READ, args))
    arrays = {name: np.load(out / f"tile_{name}.npy") for name in georef}
    return georef, arrays, np.load(out / "points.npy")
