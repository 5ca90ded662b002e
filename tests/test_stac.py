"""pystac-client against recorded real STAC API responses, served from a local HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import fixtures_dir
from resources.errors import CatalogError
from resources.stac import PROVIDERS, StacCatalog, s2_offset_dn, scene_from_item

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
    assert s2_offset_dn({}) == 0


def test_earth_search_offers_no_s1_and_missing_static_catalog_is_named(tmp_path):
    with pytest.raises(CatalogError, match="no S1 collection"):
        StacCatalog(url="https://example.invalid/v1", provider="earth-search").collection("s1")
    with pytest.raises(CatalogError, match="not found"):
        StacCatalog(url=str(tmp_path / "catalog.json")).search("s2", (0, 0, 1, 1), 2022)
