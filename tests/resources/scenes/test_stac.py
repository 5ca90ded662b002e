"""pystac-client against recorded real STAC API responses, served from a local HTTP server."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import fixtures_dir
from resources.errors import CatalogError
from resources.scenes.stac import PROVIDERS, StacCatalog, detect_provider, s2_offset_dn, scene_from_item

EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"


def _load(*parts: str) -> dict:
    return json.loads(fixtures_dir().joinpath("stac", *parts).read_text())


class RecordedStacApi:
    """Answers POST /search with recorded pages, following the `next` token of the request body,
    with the recorded host rewritten to this server (what a cassette replay does)."""

    def __init__(self, pages: list[dict], recorded_root: str):
        self.pages = pages
        self.recorded_root = recorded_root
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                api.requests.append(body)
                payload = json.dumps(api.page_for(body)).replace(api.recorded_root, api.url)
                self.send_response(200)
                self.send_header("Content-Type", "application/geo+json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def page_for(self, body: dict) -> dict:
        token = body.get("next")
        if token is None:
            return self.pages[0]
        for previous, page in zip(self.pages, self.pages[1:]):
            links = [link for link in previous["links"] if link["rel"] == "next"]
            if links and links[0]["body"]["next"] == token:
                return page
        return {"type": "FeatureCollection", "features": [], "links": []}

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def test_paging_through_next_with_mixed_collections():
    pages = [_load("pystac-client", f"earth-search-v1_search_cloud-lte-40_page{i}.json") for i in (1, 2)]
    with RecordedStacApi(pages, EARTH_SEARCH) as api:
        catalog = StacCatalog(url=api.url, provider="earth-search", s2_collection="sentinel-2-l2a")
        found = catalog.search("s2", (-40.0, -10.0, -30.0, 0.0), 2025)
    assert len(api.requests) == 3, "page 1, page 2 through its token, then the (empty) third page"
    assert api.requests[0]["collections"] == ["sentinel-2-l2a"]
    assert api.requests[0]["query"] == {"eo:cloud_cover": {"lt": 90.0}}, "dict form, a number not a string"
    next_link = next(link for link in pages[0]["links"] if link["rel"] == "next")
    assert api.requests[1]["next"] == next_link["body"]["next"]
    # The recording is of a search over every collection: all 20 items come back; only the
    # sentinel-2-l2a ones are used, the others are rejected with the reason.
    assert len(found.scenes) + len(found.rejected) == 20
    assert {s.collection for s in found.scenes} == {"sentinel-2-l2a"}
    assert len(found.scenes) == sum(
        f["collection"] == "sentinel-2-l2a" for page in pages for f in page["features"]
    )
    scene = found.scenes[0]
    assert scene.hrefs["B04"].endswith("/B04.tif") and scene.hrefs["SCL"].endswith("/SCL.tif")
    assert scene.offset_dn == 0, "Earth Search's sentinel-2-l2a has the offset applied already"
    assert [s.datetime for s in found.scenes] == sorted(s.datetime for s in found.scenes)
    reasons = dict(found.rejected)
    grd = next(i for i in reasons if i.startswith("S1A_IW_GRDH"))
    assert reasons[grd] == "collection sentinel-1-grd, not the requested sentinel-2-l2a"


def test_earth_search_collection1_keeps_its_offset_to_remove():
    page = _load("pystac-client", "earth-search-v1_search_cloud-lte-40_page1.json")
    c1 = next(f for f in page["features"] if f["collection"] == "sentinel-2-c1-l2a")
    scene = scene_from_item(c1, "s2", PROVIDERS["earth-search"])
    assert scene.offset_dn == 1000  # baseline 05.11, raster:bands offset -0.1, not yet applied


def test_planetary_computer_s2_mapping_and_baselines():
    page = _load("pystac-client", "planetary-computer_search_sentinel-2-l2a_2019-01-01.json")
    scenes = [scene_from_item(f, "s2", PROVIDERS["planetary-computer"]) for f in page["features"]]
    usable = [s for s in scenes if not isinstance(s, str)]
    assert usable and all(s.offset_dn == 0 for s in usable)  # baseline 02.12
    assert set(usable[0].hrefs) == {"B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12", "SCL"}
    recent = _load("stac-geoparquet", "sentinel-2-l2a-pc.json")
    assert all(scene_from_item(f, "s2", PROVIDERS["planetary-computer"]).offset_dn == 1000 for f in recent)


def test_cloudy_scenes_are_rejected_with_the_reason():
    page = _load("pystac-client", "planetary-computer_search_sentinel-2-l2a_2019-01-01.json")
    item = dict(page["features"][0], properties=dict(page["features"][0]["properties"], **{"eo:cloud_cover": 95.0}))
    assert "cloud cover 95.0%" in scene_from_item(item, "s2", PROVIDERS["planetary-computer"])


def test_s1_rtc_items_map_and_grd_without_vv_vh_is_rejected():
    rtc = _load("stac-geoparquet", "sentinel-1-rtc-pc.json")
    scenes = [scene_from_item(f, "s1", PROVIDERS["planetary-computer"]) for f in rtc]
    assert all(set(s.hrefs) == {"VV", "VH"} and s.orbit_state == "descending" for s in scenes)
    hh_only = next(f for f in _load("pystac-client", "earth-search-v1_search_cloud-lte-40_page1.json")["features"]
                   if f["collection"] == "sentinel-1-grd")
    reason = scene_from_item(hh_only, "s1", PROVIDERS["planetary-computer"])
    assert reason.startswith("missing assets vv, vh")


def test_offset_rule():
    assert s2_offset_dn({"s2:processing_baseline": "04.00"}) == 1000
    assert s2_offset_dn({"s2:processing_baseline": "03.01"}) == 0
    assert s2_offset_dn({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}) == 0
    assert s2_offset_dn({"processing:version": "05.11"}) == 1000  # CDSE's field
    assert s2_offset_dn({"sentinel:product_id": "S2B_MSIL2A_20220315T103629_N0400_R008_T32TQM_20220315T134546"}) == 1000
    assert s2_offset_dn({"sentinel:product_id": "S2A_MSIL2A_20200712T105031_N0214_R051_T31UFS_20200712T133712"}) == 0
    declared = {"raster:offset": -0.1, "raster:scale": 0.0001}
    assert s2_offset_dn({"s2:processing_baseline": "03.01"}, declared) == 1000, "the band's declaration wins"
    assert s2_offset_dn({}, {"raster:bands": [{"offset": 0, "scale": 0.0001}]}) == 0
    # nothing said: the acquisition date decides (baseline 04.00 from 2022-01-25)
    assert s2_offset_dn({}, None, dt.date(2022, 1, 25)) == 1000
    assert s2_offset_dn({}, None, dt.date(2022, 1, 24)) == 0


def _cdse_item(version: str, with_raster_metadata: bool) -> dict:
    """An item in the Copernicus Data Space layout, its assets as the recorded collection's
    `item_assets` declare them (keys `B04_10m`, `SCL_20m`, raster:offset/scale on each asset)."""
    declared = _load("openeo-python-client", "cdse-sentinel-2-l2a.collection.json")["item_assets"]
    assets = {}
    for key, asset in declared.items():
        asset = dict(asset, href=f"s3://eodata/Sentinel-2/MSI/L2A/2023/06/01/{key}.jp2")
        if not with_raster_metadata:
            asset = {k: v for k, v in asset.items() if not k.startswith("raster:")}
        assets[key] = asset
    return {"type": "Feature", "id": f"S2A_MSIL2A_20230601T103631_N{version.replace('.', '')}_R008_T31UFS",
            "collection": "sentinel-2-l2a", "bbox": [5.0, 51.2, 5.1, 51.3],
            "properties": {"datetime": "2023-06-01T10:36:31Z", "eo:cloud_cover": 12.0, "processing:version": version},
            "assets": assets}


def test_cdse_items_map_their_suffixed_assets_and_take_the_offset_from_the_item():
    for with_raster_metadata in (True, False):
        scene = scene_from_item(_cdse_item("05.11", with_raster_metadata), "s2", PROVIDERS["cdse"])
        assert scene.offset_dn == 1000, "05.11 adds the offset: from raster:offset, else processing:version"
        assert scene.hrefs["B8A"].endswith("B8A_20m.jp2") and scene.hrefs["B04"].endswith("B04_10m.jp2")
        assert scene.hrefs["SCL"].endswith("SCL_20m.jp2")
    old = _cdse_item("03.01", with_raster_metadata=False)
    assert scene_from_item(old, "s2", PROVIDERS["cdse"]).offset_dn == 0
    reason = scene_from_item(old, "s2", PROVIDERS["planetary-computer"])
    assert reason.startswith("missing assets B04"), "the wrong provider is named by the keys it misses"


def test_earth_search_v0_items_take_the_baseline_from_the_product_id():
    item = _earth_search_v0_item()
    item["properties"] |= {"eo:cloud_cover": 3.2,
                           "sentinel:product_id": "S2B_MSIL2A_20220315T103629_N0400_R008_T31UFS_20220315T134546"}
    scene = scene_from_item(item, "s2", PROVIDERS["earth-search-v0"])
    assert scene.offset_dn == 1000 and scene.hrefs["B8A"].endswith("B8A.tif")


def _earth_search_v0_item() -> dict:
    return {"type": "Feature", "id": "S2B_31UFS_20220315_0_L2A", "collection": "sentinel-s2-l2a-cogs",
            "properties": {"datetime": "2022-03-15T10:46:29Z"},
            "assets": {k: {"href": f"{k}.tif"} for k in PROVIDERS["earth-search-v0"].s2_assets.values()}}


def test_auto_tells_the_provider_from_the_api_url_or_the_items_asset_keys():
    """Recorded items of Planetary Computer, Earth Search v1 and CDSE, and an Earth Search v0 item:
    each read by its own provider's names with `provider: auto`; keys no provider uses are named."""
    pc = _load("stac-geoparquet", "sentinel-2-l2a-pc.json")[0]
    rtc = _load("stac-geoparquet", "sentinel-1-rtc-pc.json")[0]
    es = next(f for f in _load("pystac-client", "earth-search-v1_search_cloud-lte-40_page1.json")["features"]
              if f["collection"] == "sentinel-2-l2a")
    cdse = _cdse_item("05.11", with_raster_metadata=True)
    expected = [(pc, "s2", "planetary-computer"), (rtc, "s1", "planetary-computer"), (es, "s2", "earth-search"),
                (cdse, "s2", "cdse"), (_earth_search_v0_item(), "s2", "earth-search-v0")]
    assert [detect_provider(item, sensor) for item, sensor, _ in expected] == [name for _, _, name in expected]
    static = StacCatalog(url="/data/mixed/catalog.json", provider="auto")
    for item, sensor, name in expected:
        assert static.provider_for(item, sensor).assets(sensor) == PROVIDERS[name].assets(sensor)
    assert static.collection("s2") == "sentinel-2-l2a" and static.collection("s1") == "sentinel-1-rtc"
    by_url = StacCatalog(url="https://earth-search.aws.element84.com/v0", provider="auto")
    assert by_url.collection("s2") == "sentinel-s2-l2a-cogs"
    assert StacCatalog(url=EARTH_SEARCH, provider="auto").provider_for(pc, "s2").s2_assets["B04"] == "red", \
        "a known API's URL decides over the keys"
    odd = dict(pc, assets={f"band_{k}": v for k, v in pc["assets"].items()})
    assert "fit no known provider" in static.provider_for(odd, "s2")
    mapped = StacCatalog(url="/x", provider="auto", asset_keys={b: f"band_{b}" for b in (*PROVIDERS["demo"].s2_assets,)})
    assert scene_from_item(odd, "s2", mapped.provider_for(odd, "s2")).hrefs["B04"] == pc["assets"]["B04"]["href"]


def test_a_search_says_which_layout_auto_read_each_item_by(tmp_path):
    """A static catalog of Planetary Computer and Earth Search items: the search result counts the
    items by the layout `auto` detected, what the partition metadata and the terminal show."""
    pc = dict(_load("stac-geoparquet", "sentinel-2-l2a-pc.json")[0])
    es = next(f for f in _load("pystac-client", "earth-search-v1_search_cloud-lte-40_page1.json")["features"]
              if f["collection"] == "sentinel-2-l2a")
    same_place = {k: pc[k] for k in ("bbox", "geometry")}  # both found by one search
    items = [pc, dict(es, **same_place, properties=dict(es["properties"], datetime=pc["properties"]["datetime"]))]
    (tmp_path / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "id": "mixed", "stac_version": "1.0.0", "description": "mixed layouts",
        "links": [{"rel": "item", "href": f"./{i}.json"} for i in range(len(items))]}))
    for i, item in enumerate(items):
        (tmp_path / f"{i}.json").write_text(json.dumps(dict(item, links=[])))
    west, south, east, north = pc["bbox"]
    found = StacCatalog(url=str(tmp_path / "catalog.json"), provider="auto").search(
        "s2", (west, south, east, north), int(pc["properties"]["datetime"][:4]))
    assert found.layouts == {"auto: planetary-computer": 1, "auto: earth-search": 1}, found.rejected
    assert found.layout() == "auto: earth-search (1 item), auto: planetary-computer (1 item)"


def test_the_s2_mask_names_its_asset_and_a_missing_one_is_explained():
    item = _cdse_item("05.11", with_raster_metadata=True)
    item["assets"]["MSK_CLDPRB_20m"] = {"href": "s3://eodata/Sentinel-2/MSI/L2A/2023/06/01/MSK_CLDPRB_20m.jp2"}
    cloud = StacCatalog(url="/x", provider="cdse", s2_mask="cloud", asset_keys={"CLOUD": "MSK_CLDPRB_20m"})
    scene = scene_from_item(item, "s2", cloud.provider_for(item, "s2"))
    assert scene.hrefs["CLOUD"].endswith("MSK_CLDPRB_20m.jp2") and "SCL" not in scene.hrefs
    with pytest.raises(CatalogError, match="s2_mask 'cloud' needs the asset key of the items' cloud mask"):
        StacCatalog(url="/x", provider="cdse", s2_mask="cloud").provider_for(item, "s2")
    no_scl = dict(item, assets={k: v for k, v in item["assets"].items() if k != "SCL_20m"})
    reason = scene_from_item(no_scl, "s2", StacCatalog(url="/x", provider="cdse").provider_for(no_scl, "s2"))
    assert reason.startswith("missing assets SCL_20m") and "set s2_mask to cloud or none" in reason


def test_s3_hrefs_get_the_endpoint_and_keys():
    assert StacCatalog(url="/x").gdal_options() == {}
    cdse = StacCatalog(url="/x", s3_endpoint="https://eodata.dataspace.copernicus.eu",
                       s3_access_key_id="AK", s3_secret_access_key="SK").gdal_options()
    assert cdse == {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_HTTPS": "YES",
                    "AWS_S3_ENDPOINT": "eodata.dataspace.copernicus.eu", "AWS_VIRTUAL_HOSTING": "FALSE"}
    public = StacCatalog(url="/x", s3_endpoint="http://127.0.0.1:9000").gdal_options()
    assert public["AWS_NO_SIGN_REQUEST"] == "YES" and public["AWS_HTTPS"] == "NO"
    with pytest.raises(CatalogError, match="without s3_secret_access_key"):
        StacCatalog(url="/x", s3_access_key_id="AK").gdal_options()


def test_earth_search_offers_no_s1_and_missing_static_catalog_is_named(tmp_path):
    with pytest.raises(CatalogError, match="no S1 collection"):
        StacCatalog(url="https://example.invalid/v1", provider="earth-search").collection("s1")
    with pytest.raises(CatalogError, match="not found"):
        StacCatalog(url=str(tmp_path / "catalog.json")).search("s2", (0, 0, 1, 1), 2022)


def test_a_static_catalog_is_found_in_every_form_a_user_gives(demo_env):
    """The demo catalog named as a path, a folder, `file://` URLs and `http://.../catalog.json`
    (served from a local HTTP server) finds the same scenes; an API root is not taken for one."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    folder = demo_env.catalog_root
    bbox = demo_env.resources["regions"].get("tiny").bbox
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        forms = [str(folder / "catalog.json"), str(folder), f"file://{folder}/catalog.json", f"file://{folder}",
                 f"http://127.0.0.1:{server.server_address[1]}/catalog.json"]
        found = {form: [s.id for s in StacCatalog(url=form).search("s2", bbox, 2022).scenes] for form in forms}
    finally:
        server.shutdown()
    assert found[forms[0]] and all(ids == found[forms[0]] for ids in found.values()), found
    assert StacCatalog(url="https://planetarycomputer.microsoft.com/api/stac/v1").static_root() is None
