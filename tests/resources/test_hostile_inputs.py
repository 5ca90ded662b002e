"""Property-based: whatever bytes arrive as a labels file, a regions file or explorer request
parameters, the answer is a result or our own error naming the problem, never a crash, and
nothing is written outside the data root."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resources.errors import TesseraError  # noqa: E402
from resources.labels import LABEL_SUFFIXES, read_labels  # noqa: E402
from resources.regions import RegionCatalog  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# bytes that look like the start of each format, then anything: the readers' parsers get past the magic
STARTS = [b"", b'{"type": "FeatureCollection", "features": [', b"lon,lat,label\n", b"PAR1", b"SQLite format 3\x00",
          b"<?xml version='1.0'?><kml>"]
JSONISH = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                       max_leaves=12)


@SETTINGS
@given(suffix=st.sampled_from(LABEL_SUFFIXES), start=st.sampled_from(STARTS), tail=st.binary(max_size=300))
def test_a_labels_file_of_any_bytes_is_read_or_refused_by_name(suffix, start, tail):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"labels{suffix}"
        path.write_bytes(start + tail)
        try:
            read_labels(path)
        except TesseraError as exc:
            assert str(path) in str(exc) or "labels file" in str(exc)
        assert [p.name for p in Path(folder).iterdir()] == [path.name], "reading writes nothing"


@SETTINGS
@given(features=st.lists(st.fixed_dictionaries({"type": st.just("Feature"), "geometry": JSONISH,
                                                "properties": JSONISH}), max_size=3))
def test_geojson_features_of_any_shape_are_read_or_refused_by_name(tmp_path, features):
    import json

    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    try:
        read_labels(path)
    except TesseraError:
        pass


@SETTINGS
@given(text=st.text(max_size=300) | st.builds(lambda d: __import__("yaml").safe_dump(d),
                                               st.fixed_dictionaries({"regions": JSONISH})))
def test_a_regions_file_of_any_text_gives_regions_or_our_error(tmp_path, text):
    path = tmp_path / "regions.yaml"
    path.write_text(text)
    try:
        for region in RegionCatalog(path=str(path)).all():
            region.grid  # noqa: B018  (the grid is where a bad bbox would break)
    except TesseraError:
        pass


@SETTINGS
@given(params=st.dictionaries(st.sampled_from(["year", "region", "count", "spacing", "seed", "x"]),
                              st.text(max_size=12), max_size=6))
def test_suggestion_parameters_of_any_text_are_answered_or_refused(tmp_path, params):
    from resources.storage.data_root import TesseraStorage
    from resources.table.vector_store import VectorStore
    from tessera_assets.errors import BadRequest
    from tessera_assets.explorer.app import Explorer

    (tmp_path / "regions.yaml").write_text("regions: {}\n")
    explorer = Explorer(TesseraStorage(root=str(tmp_path / "data")), RegionCatalog(path=str(tmp_path / "regions.yaml")),
                        VectorStore(uri=str(tmp_path / "data" / "lancedb")), "")
    try:
        explorer.suggestions(params)
    except (TesseraError, BadRequest):
        pass
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "data")
               and p.name != "regions.yaml"]
    assert not outside
