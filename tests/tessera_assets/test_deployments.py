"""Where scenes come from: each deployment's catalogs, a custom one from the environment, and bad
settings named rather than raised as tracebacks."""

from __future__ import annotations

import pytest

from resources.errors import CatalogError, ConfigurationError
from resources.scenes.stac import PROVIDERS, StacCatalog, scene_from_item
from tessera_assets.cli import main
from tessera_assets.resources_by_deployment import scene_catalogs


@pytest.mark.parametrize("deployment, s2, s1", [
    ("local", "demo", "demo"),
    ("planetary-computer", "planetary-computer", "planetary-computer"),
    ("cloud", "planetary-computer", "planetary-computer"),
    ("earth-search", "earth-search", "planetary-computer"),
    ("cdse", "cdse", "planetary-computer"),
])
def test_each_deployment_names_a_provider_per_sensor(deployment, s2, s1):
    s2_catalog, s1_catalog = scene_catalogs(deployment)
    assert (s2_catalog.provider, s1_catalog.provider) == (s2, s1)
    assert s1_catalog.collection("s1") == ("sentinel-1-rtc")


def test_a_custom_deployment_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TESSERA_DEPLOYMENT", "custom")
    monkeypatch.setenv("TESSERA_S2_CATALOG", f"file://{tmp_path}")
    monkeypatch.setenv("TESSERA_S2_PROVIDER", "cdse")
    monkeypatch.setenv("TESSERA_S2_COLLECTION", "my-l2a")
    monkeypatch.setenv("TESSERA_S1_CATALOG", "https://example.org/stac/v1")
    monkeypatch.setenv("TESSERA_S1_ASSET_KEYS", "VV=gamma0_vv, VH=gamma0_vh")
    s2, s1 = scene_catalogs()
    assert s2.static_root() == f"{tmp_path}/catalog.json" and s2.collection("s2") == "my-l2a"
    assert s1.static_root() is None and s1.provider == "auto", "a custom catalog's provider is told from its items"
    item = {"id": "x", "collection": "sentinel-1-rtc", "properties": {"datetime": "2022-05-01T06:00:00Z"},
            "assets": {"gamma0_vv": {"href": "vv.tif"}, "gamma0_vh": {"href": "vh.tif"}}}
    assert scene_from_item(item, "s1", s1.provider_for(item, "s1")).hrefs == {"VV": "vv.tif", "VH": "vh.tif"}
    assert s2.gdal_options() == {} and s2.s3_access_key_id is None


def test_object_store_keys_are_env_vars_resolved_when_a_run_starts(monkeypatch):
    """CDSE's s3:// hrefs need its endpoint and keys: the keys are Dagster EnvVars (the launchpad
    shows the variable's name, never its value), and a run without them fails naming the variable."""
    from dagster import EnvVar

    s2, _ = scene_catalogs("cdse")
    assert s2.s3_endpoint == "https://eodata.dataspace.copernicus.eu"
    assert isinstance(s2.s3_access_key_id, EnvVar) and s2.s3_access_key_id.env_var_name == "TESSERA_S3_ACCESS_KEY_ID"
    monkeypatch.setenv("TESSERA_DEPLOYMENT", "custom")
    monkeypatch.setenv("TESSERA_S2_CATALOG", "https://stac.example.org/v1")
    monkeypatch.setenv("TESSERA_S1_CATALOG", "https://stac.example.org/v1")
    monkeypatch.setenv("TESSERA_S2_S3_ENDPOINT", "http://127.0.0.1:9000")
    s2, s1 = scene_catalogs()
    assert isinstance(s2.s3_secret_access_key, EnvVar) and s1.s3_endpoint is None


@pytest.mark.parametrize("env, message", [
    ({"TESSERA_DEPLOYMENT": "aws"}, "unknown TESSERA_DEPLOYMENT 'aws': use one of local, planetary-computer"),
    ({"TESSERA_DEPLOYMENT": "custom"}, "TESSERA_DEPLOYMENT=custom needs TESSERA_S2_CATALOG"),
    ({"TESSERA_DEPLOYMENT": "custom", "TESSERA_S2_CATALOG": "x", "TESSERA_S1_CATALOG": "y",
      "TESSERA_S2_PROVIDER": "sentinelhub"}, "unknown TESSERA_S2_PROVIDER 'sentinelhub'"),
    ({"TESSERA_DEPLOYMENT": "custom", "TESSERA_S2_CATALOG": "x", "TESSERA_S1_CATALOG": "y",
      "TESSERA_S2_ASSET_KEYS": "B04"}, "TESSERA_S2_ASSET_KEYS must read BAND=key"),
])
def test_bad_settings_are_named(monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError, match=message):
        scene_catalogs()


def test_the_cli_prints_a_bad_setting_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("TESSERA_DEPLOYMENT", "aws")
    assert main(["regions", "list"]) == 2
    assert "unknown TESSERA_DEPLOYMENT 'aws'" in capsys.readouterr().err


def test_asset_keys_name_only_known_bands():
    catalog = StacCatalog(url="https://example.org/stac/v1", asset_keys={"B4": "red"})
    with pytest.raises(CatalogError, match="asset_keys names unknown bands B4"):
        catalog.search("s2", (0, 0, 1, 1), 2022)
    assert set(PROVIDERS) >= {"planetary-computer", "earth-search", "earth-search-v0", "cdse", "demo"}


def test_the_scl_opt_out_is_a_setting_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv("TESSERA_S2_MASK", "none")
    assert scene_catalogs("earth-search")[0].s2_mask == "none"
    monkeypatch.setenv("TESSERA_S2_MASK", "clouds")
    with pytest.raises(ConfigurationError, match="bad S2 catalog settings: s2_mask: Input should be 'scl', 'cloud' or 'none'"):
        scene_catalogs("earth-search")
