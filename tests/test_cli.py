import yaml

from tessera_assets.cli import main


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
