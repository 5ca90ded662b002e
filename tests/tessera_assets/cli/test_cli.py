import os
import re

import pytest
import yaml

from tessera_assets.cli import main


START_PROBE = """
import sys
from tessera_assets.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # --help
    code = stop.code
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"dagster", "lancedb", "numpy", "torch", "rasterio"})
print("loaded:", ",".join(loaded))
sys.exit(code)
"""


def _start(*argv: str, **env: str) -> str:
    """`tessera ARGV` in a fresh interpreter; its output ends with the heavy stacks it imported."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", START_PROBE, *argv], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3], env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_and_a_one_off_search_start_without_the_stacks_they_do_not_use(tmp_path):
    """`--help` imports no library stack, and `tessera search` only the embedding table's: Dagster
    (~0.5 s to import) is for the commands that materialise (`bench/startup.py` measures the starts)."""
    import numpy as np

    from resources.table.store import TableStore
    from resources.testing.synthetic_table import ORIGIN, clustered, synthetic_rows

    uri = str(tmp_path / "lancedb")
    TableStore(uri=uri).write_partition(2022, "r", synthetic_rows(clustered(300, np.random.default_rng(0))).to_batches(), 128)
    assert _start("--help").splitlines()[-1] == "loaded: "
    out = _start("search", "--lon", str(ORIGIN[1]), "--lat", str(ORIGIN[0]), "--year", "2022", "-k", "3",
                 TESSERA_LANCEDB_URI=uri)
    assert "searched 300 of 300 rows" in out and out.splitlines()[1].split()[1] == "1.0000", "the pixel finds itself"
    assert out.splitlines()[-1] == "loaded: lancedb,numpy"


def test_regions_add_and_list(tmp_path, monkeypatch, capsys):
    regions = tmp_path / "regions.yaml"
    regions.write_text(yaml.safe_dump({"regions": {}}))
    monkeypatch.setenv("TESSERA_REGIONS", str(regions))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    assert main(["regions", "add", "fens", "--bbox", "0.2", "52.3", "0.25", "52.33"]) == 0
    assert "added fens: EPSG:32631" in capsys.readouterr().out
    assert main(["regions", "list"]) == 0
    assert capsys.readouterr().out.startswith("fens")


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TESSERA_REGIONS", str(tmp_path / "regions.yaml"))
    assert main(["regions", "add", "fens", "--bbox", "0.3", "52.3", "0.25", "52.33"]) == 2
    assert "inverted" in capsys.readouterr().err
    assert main(["regions", "add", "Bad|Name", "--bbox", "0.2", "52.3", "0.25", "52.33"]) == 2
    assert "bad region name" in capsys.readouterr().err
    assert main(["demo", "--years", "2015"]) == 2
    assert "year 2015 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "regions.yaml").exists()


def test_classify_names_a_missing_partition(tmp_path, monkeypatch, capsys):
    regions = tmp_path / "regions.yaml"
    regions.write_text(yaml.safe_dump({"regions": {"fens": {"bbox": [0.2, 52.3, 0.25, 52.33]}}}))
    monkeypatch.setenv("TESSERA_REGIONS", str(regions))
    monkeypatch.setenv("TESSERA_HOME", str(tmp_path / "home"))
    (tmp_path / "labels.csv").write_text("lon,lat,label\n0.21,52.31,a\n")
    assert main(["classify", str(tmp_path / "labels.csv"), "--year", "2022", "--region", "fens"]) == 2
    assert "embeddings for year 2022, region 'fens' are not materialised" in capsys.readouterr().err


def test_run_materialises_any_region_through_the_instance(tmp_path, monkeypatch, capsys):
    from dagster import AssetKey, DagsterInstance

    from conftest import TINY_BBOX, TINY_REGION, TINY_YEAR

    regions = tmp_path / "regions.yaml"
    regions.write_text(yaml.safe_dump({"regions": {TINY_REGION: {"bbox": TINY_BBOX, "demo": True},
                                                   "elsewhere": {"bbox": [10.0, 45.0, 10.005, 45.004]}}}))
    monkeypatch.setenv("TESSERA_REGIONS", str(regions))
    monkeypatch.setenv("TESSERA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    assert main(["run", "--region", TINY_REGION, "--years", str(TINY_YEAR), "--until", "raw"]) == 0
    out = capsys.readouterr().out
    assert f"s1_raw, s2_raw {TINY_REGION}|{TINY_YEAR}: done" in out, "one run made both raw assets"
    for sensor in ("s2", "s1"):
        assert (tmp_path / "home" / "data" / "raw" / sensor / str(TINY_YEAR) / TINY_REGION / "index.json").exists()
    instance = DagsterInstance.get()
    assert instance.get_latest_materialization_event(AssetKey("s2_raw")) is not None, \
        "the run is in the instance the UI reads"
    assert main(["run", "--region", "elsewhere", "--years", str(TINY_YEAR), "--until", "raw"]) == 1
    err = capsys.readouterr().err
    assert "no usable sentinel-2-l2a scenes for region 'elsewhere'" in err
    assert f"the demo catalog covers only the demo regions: {TINY_REGION} (" in err
    assert main(["run", "--region", "atlantis", "--years", "2022"]) == 2
    assert "atlantis" in capsys.readouterr().err
    assert main(["regions", "remove", "elsewhere"]) == 0
    assert "its data stays" in capsys.readouterr().out
    assert main(["regions", "remove", TINY_REGION, "--purge"]) == 0
    assert "purged 2 partitions and 0 rows" in capsys.readouterr().out
    assert not (tmp_path / "home" / "data" / "raw" / "s2" / str(TINY_YEAR) / TINY_REGION).exists()
    assert not yaml.safe_load(regions.read_text())["regions"], "both regions are out of the file"
    assert TINY_REGION not in instance.get_dynamic_partitions("region")


def test_downloaded_official_tiles_give_search_and_a_class_map_without_raw_data(tmp_path, monkeypatch, capsys):
    """The README's path for a user holding official tiles: point TESSERA_EMBEDDINGS_TILES at them,
    `tessera run` imports and indexes a region, `tessera search` and `tessera classify` work, and the
    vectors export again as tiles, as a Zarr store and as GeoTIFF tiles."""
    import json

    from resources.testing.official_tiles import BOUNDARY_BBOX, write_official_tiles
    from resources.official.tiles import tile_centres

    tiles = write_official_tiles(tmp_path / "tiles", 2024, tile_centres(BOUNDARY_BBOX),
                                 metadata={"dataset_version": "1.1", "dataset_variant": "cambridge"})
    regions = tmp_path / "regions.yaml"
    regions.write_text(yaml.safe_dump({"regions": {"border": {"bbox": list(BOUNDARY_BBOX)}}}))
    for name, value in {"TESSERA_REGIONS": regions, "TESSERA_HOME": tmp_path / "home",
                        "DAGSTER_HOME": tmp_path / "dagster", "TESSERA_EMBEDDINGS_TILES": tiles}.items():
        monkeypatch.setenv(name, str(value))
    (tmp_path / "dagster").mkdir()
    assert main(["run", "--region", "border", "--years", "2024", "--until", "raw"]) == 2
    assert "embeddings come from official tiles here, there is no raw stage" in capsys.readouterr().err
    assert main(["run", "--region", "border", "--years", "2024"]) == 0
    out = capsys.readouterr().out
    assert "embeddings: read from the official tiles" in out and "embedding_table" in out
    assert main(["search", "--lon", "6.002", "--lat", "51.2023", "--year", "2024", "-k", "3"]) == 0
    first = capsys.readouterr().out.splitlines()[1].split()
    assert float(first[1]) == pytest.approx(1.0) and abs(float(first[2]) - 6.002) < 1e-4, "the pixel finds itself first"
    labels = tmp_path / "labels.csv"
    points = [(5.995 + 0.0015 * i, 51.1965 + 0.001 * j) for i in range(7) for j in range(8)]
    labels.write_text("lon,lat,label,group\n" + "".join(f"{lon},{lat},{'south' if lat < 51.2 else 'north'},p{i}\n"
                                                          for i, (lon, lat) in enumerate(points)))
    assert main(["classify", str(labels), "--year", "2024", "--region", "border", "--head", "logistic"]) == 0
    report = json.loads((tmp_path / "home" / "data" / "land_cover" / "2024" / "border" / "report.json").read_text())
    assert set(report["curves"]) == {"embeddings"} and report["curves"]["embeddings"][-1]["macro_f1"] > 0.9
    assert main(["export", "--format", "zarr", "--year", "2024", "--region", "border", "--out",
                 str(tmp_path / "again.zarr")]) == 0
    assert main(["export", "--year", "2024", "--region", "border", "--out", str(tmp_path / "again")]) == 0
    assert "registries in" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "tessera_metadata.json").read_text())
    assert (again["dataset_version"], again["dataset_variant"]) == ("1.1", "cambridge"), "official vectors pass through"
    assert main(["export", "--format", "tiff", "--year", "2024", "--region", "border", "--out",
                 str(tmp_path / "tiffs")]) == 0
    assert "TorchGeo" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "tiffs").rglob("*.tiff")) == sorted(
        f"{p.parent.name}_2024.tiff" for p in (tmp_path / "again").rglob("grid_*_scales.npy"))


EXTRA_DEFINITIONS = '''
"""A deployment's own definitions: ours, and one asset more downstream of embedding_table."""
from dagster import AssetKey, Definitions, MaterializeResult, asset

from resources.table.vector_store import VectorStore
from tessera_assets.definitions import build_definitions
from tessera_assets.partitions import year_and_region, year_region_partitions
from resources.table.filters import partition_filter


@asset(partitions_def=year_region_partitions, deps=[AssetKey("embedding_table")], group_name="search")
def rows_per_partition(context, vectors: VectorStore) -> MaterializeResult:
    year, region = year_and_region(context)
    return MaterializeResult(metadata={"rows": vectors.table().count_rows(partition_filter(year, region))})


defs = Definitions.merge(build_definitions(), Definitions(assets=[rows_per_partition]))
'''


def test_an_asset_added_to_the_definitions_runs_with_no_cli_change(tmp_path, monkeypatch, capsys):
    """`tessera run` materialises whatever the definitions hold, in the graph's order: an asset a
    deployment adds downstream of embedding_table runs after it, for every partition asked for."""
    from dagster import AssetKey, DagsterInstance

    from resources.testing.official_tiles import BOUNDARY_BBOX, write_official_tiles
    from resources.official.tiles import tile_centres

    tiles = write_official_tiles(tmp_path / "tiles", 2024, tile_centres(BOUNDARY_BBOX),
                                 metadata={"dataset_version": "1.1", "dataset_variant": "cambridge"})
    regions = tmp_path / "regions.yaml"
    west, south, east, north = BOUNDARY_BBOX
    middle = (west + east) / 2
    regions.write_text(yaml.safe_dump({"regions": {"west": {"bbox": [west, south, middle, north]},
                                                   "east": {"bbox": [middle, south, east, north]}}}))
    (tmp_path / "extra_defs.py").write_text(EXTRA_DEFINITIONS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, value in {"TESSERA_REGIONS": regions, "TESSERA_HOME": tmp_path / "home",
                        "DAGSTER_HOME": tmp_path / "dagster", "TESSERA_EMBEDDINGS_TILES": tiles,
                        "TESSERA_DEFINITIONS": "extra_defs",
                        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}.items():
        monkeypatch.setenv(name, str(value))
    (tmp_path / "dagster").mkdir()
    assert main(["run", "--regions", "west,east", "--years", "2024"]) == 0
    out = capsys.readouterr().out
    runs = [line for line in out.splitlines() if "rows_per_partition" in line and ": done in" in line]
    assert len(runs) == 2, out
    assert re.search(r"^embeddings, embedding_table, rows_per_partition +2 +[\d.]+$", out, re.MULTILINE), out
    instance = DagsterInstance.get()
    assert instance.get_materialized_partitions(AssetKey("rows_per_partition")) == {"west|2024", "east|2024"}
    for partition in ("west|2024", "east|2024"):
        table, added = (instance.fetch_materializations(AssetKey(name), limit=10).records for name in
                        ("embedding_table", "rows_per_partition"))
        table_at = max(r.timestamp for r in table if r.partition_key == partition)
        added_at = [r for r in added if r.partition_key == partition]
        assert added_at[0].timestamp > table_at, "the added asset ran after the table it reads"
        assert added_at[0].asset_materialization.metadata["rows"].value > 0
