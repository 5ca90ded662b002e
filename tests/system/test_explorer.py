"""The explorer's API and tiles against a real `tessera serve` process on the tiny demo region, and
the page in headless Chromium (Debian's package, driven by playwright)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from dagster import materialize
from PIL import Image

from conftest import TINY_REGION, TINY_YEAR
from resources.testing.explorer_server import ExplorerServer
from resources.labels import read_labels
from tessera_assets.explorer.tiles import lonlat_to_tile
from tessera_assets.partitions import year_region_key
from tessera_assets.vectors.assets import embedding_table

YEARS = (TINY_YEAR - 1, TINY_YEAR)


@pytest.fixture(scope="module")
def server(embedded_env, tmp_path_factory):
    env, instance, _, _ = embedded_env
    for year in YEARS:
        assert materialize([embedding_table], partition_key=year_region_key(year, TINY_REGION), instance=instance,
                           resources=env.resources).success
    with ExplorerServer.over(env.root, env.root / "regions.yaml", env.root / "data" / "lancedb") as running:
        yield running, env


def _pixel_centres(env, n: int, seed: int = 0) -> list[tuple[float, float]]:
    """Lon/lat of the centres of random pixels of the tiny region."""
    from rasterio.warp import transform as warp_transform

    grid = env.resources["regions"].get(TINY_REGION).grid
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(2, grid.height - 2, n), rng.integers(2, grid.width - 2, n)
    xs, ys = rasterio.transform.xy(grid.transform, rows, cols)
    return list(zip(*warp_transform(grid.crs, "EPSG:4326", xs, ys)))


def _png(response) -> np.ndarray:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


def test_partitions_and_regions(server):
    running, _ = server
    partitions = running.client.get("/api/partitions").json()
    assert {(p["year"], p["region"]) for p in partitions} == {(y, TINY_REGION) for y in YEARS}
    assert all(p["layers"] == ["true_colour", "pca"] and p["dagster"].endswith(f"partition={TINY_REGION}|{p['year']}")
               for p in partitions)
    assert TINY_REGION in [r["name"] for r in running.client.get("/api/regions").json()]
    assert "leaflet.js" in running.client.get("/").text and running.client.get("/static/vendor/leaflet/leaflet.js").status_code == 200


def test_a_click_finds_the_pixel_itself_first_and_examples_steer_the_search(server):
    running, env = server
    (lon, lat), (other_lon, other_lat) = _pixel_centres(env, 2)
    answer = running.client.post("/api/search", json={"lon": lon, "lat": lat, "year": TINY_YEAR, "k": 5}).json()
    features = answer["results"]["features"]
    assert len(features) == 5 and features[0]["properties"]["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert features[0]["geometry"]["coordinates"] == pytest.approx([lon, lat], abs=1e-4)
    assert answer["report"]["rows_searched"] > 0 and answer["query"].startswith("q")
    both = running.client.post("/api/search", json={"year": TINY_YEAR, "years": list(YEARS), "k": 10,
                                                    "positives": [[lon, lat]], "negatives": [[other_lon, other_lat]]})
    assert {f["properties"]["year"] for f in both.json()["results"]["features"]} <= set(YEARS)
    near = running.client.post("/api/search", json={"lon": lon, "lat": lat, "year": TINY_YEAR, "k": 50,
                                                    "within_m": 60}).json()["results"]["features"]
    assert 0 < len(near) <= 50
    by_key = running.client.post("/api/search", json={"key": features[1]["properties"]["key"], "year": TINY_YEAR,
                                                      "k": 1}).json()["results"]["features"]
    assert by_key[0]["properties"]["key"] == features[1]["properties"]["key"]
    geojson = running.client.get(f"/api/search/{answer['query']}.geojson").json()
    assert len(geojson["features"]) == 5
    table = pq.read_table(io.BytesIO(running.client.get(f"/api/search/{answer['query']}.parquet").content))
    assert table.num_rows == 5 and b"geo" in table.schema.metadata


@pytest.mark.parametrize("body, message", [
    ({"lon": 10.0, "lat": 45.0, "year": TINY_YEAR}, "outside every materialised partition"),
    ({"lon": 5.052, "lat": 51.218, "year": TINY_YEAR, "k": 5000}, "k must be in 1..1000"),
    ({"lon": 5.052, "lat": 51.218}, "year is required"),
    ({"lon": 5.052, "lat": 51.218, "year": 2015}, "year 2015 is out of range"),
    ({"lon": "east", "lat": 51.218, "year": TINY_YEAR}, "lon must be a number"),
    ({"year": TINY_YEAR, "positives": [[5.05, 51.2]] * 101}, "at most 100 positives"),
    ({"lon": 5.052, "lat": 51.218, "year": TINY_YEAR, "h3": ["not-a-cell"]}, "not-a-cell"),
])
def test_bad_requests_are_400_with_the_clis_message(server, body, message):
    running, _ = server
    response = running.client.post("/api/search", json=body)
    assert response.status_code == 400 and message in response.json()["error"]


def test_oversized_and_malformed_bodies_are_refused(server):
    running, _ = server
    as_json = {"content-type": "application/json"}
    assert "not JSON" in running.client.post("/api/search", content=b"{", headers=as_json).json()["error"]
    big = running.client.post("/api/search", content=b"[" + b"0," * 600_000 + b"0]", headers=as_json)
    assert big.status_code == 400 and "larger than" in big.json()["error"]


def test_tiles_of_every_layer(server):
    running, env = server
    lon, lat = _pixel_centres(env, 1, seed=3)[0]
    x, y = lonlat_to_tile(lon, lat, 17)
    for layer in ("true_colour", "pca"):
        image = _png(running.client.get(f"/tiles/{layer}/{TINY_YEAR}/{TINY_REGION}/17/{x}/{y}.png"))
        assert image.shape == (256, 256, 4) and (image[..., 3] > 0).mean() > 0.2
    far = _png(running.client.get(f"/tiles/pca/{TINY_YEAR}/{TINY_REGION}/17/{x + 40}/{y}.png"))
    assert (far[..., 3] == 0).all(), "outside the partition a tile is transparent"
    query = running.client.post("/api/search", json={"lon": lon, "lat": lat, "year": TINY_YEAR}).json()["query"]
    low = _png(running.client.get(f"/tiles/similarity/{TINY_YEAR}/{TINY_REGION}/17/{x}/{y}.png",
                                  params={"query": query, "threshold": -1}))
    high = _png(running.client.get(f"/tiles/similarity/{TINY_YEAR}/{TINY_REGION}/17/{x}/{y}.png",
                                   params={"query": query, "threshold": 0.99}))
    assert (low[..., 3] > 0).sum() > (high[..., 3] > 0).sum() > 0, "the threshold hides the less similar pixels"
    assert running.client.get(f"/tiles/ndvi/{TINY_YEAR}/{TINY_REGION}/17/{x}/{y}.png").status_code == 400
    assert running.client.get(f"/tiles/pca/2019/{TINY_REGION}/17/{x}/{y}.png").status_code == 404
    assert running.client.get(f"/tiles/pca/{TINY_YEAR}/{TINY_REGION}/3/9/9.png").status_code == 400


def test_label_train_map_and_the_labels_feed_tessera_classify(server, tmp_path):
    running, env = server
    client = running.client
    client.delete("/api/labels")
    assert client.get(f"/tiles/classes/{TINY_YEAR}/{TINY_REGION}/17/0/0.png").status_code == 404
    points = _pixel_centres(env, 24, seed=7)
    added = [client.post("/api/labels", json={"lon": lon, "lat": lat, "year": TINY_YEAR,
                                              "label": "west" if lon < np.median([p[0] for p in points]) else "east"})
             for lon, lat in points]
    assert all(r.status_code == 201 for r in added)
    bad = client.post("/api/labels", json={"lon": 500, "lat": 51.2, "label": "x"})
    assert bad.status_code == 400 and "not lon/lat" in bad.json()["error"]
    line = client.post("/api/labels", json={"label": "x", "geometry": {"type": "LineString", "coordinates": [[5, 51]]}})
    assert line.status_code == 400 and "Point or a Polygon" in line.json()["error"]
    w, s = min(points)
    square = [[w, s], [w + 2e-4, s], [w + 2e-4, s + 2e-4], [w, s + 2e-4], [w, s]]  # about 14 x 22 m: a few pixels
    polygon = client.post("/api/labels", json={"label": "west", "year": TINY_YEAR,
                                               "geometry": {"type": "Polygon", "coordinates": [square]}})
    assert polygon.status_code == 201
    client.delete(f"/api/labels/{polygon.json()['id']}")
    assert client.delete(f"/api/labels/{added[0].json()['id']}").status_code == 200
    saved = tmp_path / "labels.geojson"
    saved.write_bytes(client.get("/api/labels", params={"download": 1}).content)
    assert len(read_labels(saved)) == 23, "the saved labels are what tessera classify reads"
    trained = client.post("/api/train", json={"year": TINY_YEAR, "region": TINY_REGION, "head": "logistic"}).json()
    assert [c["name"] for c in trained["classes"]] == ["east", "west"]
    assert sum(c["samples"] for c in trained["classes"]) == 23
    lon, lat = points[1]
    x, y = lonlat_to_tile(lon, lat, 17)
    image = _png(client.get(f"/tiles/classes/{TINY_YEAR}/{TINY_REGION}/17/{x}/{y}.png", params={"v": trained["version"]}))
    assert (image[..., 3] > 0).mean() > 0.2
    with rasterio.open(io.BytesIO(client.get(f"/api/classes/{TINY_YEAR}/{TINY_REGION}.tif").content)) as src:
        classes = src.read(1)
        assert set(np.unique(classes)) <= {0, 1, 2} and (classes > 0).any()
    one_class = client.post("/api/labels", json={"lon": 1.0, "lat": 1.0, "label": "x"})
    assert one_class.status_code == 201
    assert client.post("/api/train", json={"year": TINY_YEAR, "region": "nowhere"}).status_code == 404


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    return path


HOSTILE = "<img src=x onerror=alert(1)>"


def _open_page(playwright, url: str):
    """Chromium on the tiny partition's page, its tiles loaded: (browser, page, errors, map centre);
    page errors and any dialog are collected in errors."""
    browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{url}/#year={TINY_YEAR}&region={TINY_REGION}")
    page.wait_for_selector("img.leaflet-tile-loaded")
    box = page.locator("#map").bounding_box()
    return browser, page, errors, (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def _label(page, classes) -> None:
    """Label mode; three pixels a class, one above another, at each (name, x offset from the centre)."""
    box = page.locator("#map").bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.check("input[name=mode][value=label]")
    for name, dx in classes:
        page.fill("#class-name", name)
        for dy in (-40, 0, 40):
            page.mouse.click(centre[0] + dx, centre[1] + dy)
            page.wait_for_function("document.getElementById('status').textContent.includes('labels')")


def test_the_page_in_a_real_browser(server, tmp_path):
    """Load the page, click a pixel and get results, label pixels of two classes, train, see the
    class layer; screenshots are saved in the test's temp dir."""
    from playwright.sync_api import sync_playwright

    running, _ = server
    running.client.delete("/api/labels")
    with sync_playwright() as playwright:
        browser, page, errors, centre = _open_page(playwright, running.url)
        page.mouse.click(*centre)
        page.wait_for_selector("#results li.result")
        assert page.locator("#results li.result").count() == 20
        assert "results in" in page.locator("#status").inner_text()
        page.screenshot(path=str(tmp_path / "search.png"))
        _label(page, (("meadow", -60), ("wood", 60), (HOSTILE, 0)))
        page.wait_for_function("document.querySelectorAll('.leaflet-interactive').length >= 9")
        page.on("dialog", lambda dialog: (errors.append(f"a dialog opened: {dialog.message}"), dialog.dismiss()))
        page.click("#train")
        page.wait_for_selector("#legend li >> nth=2")
        page.wait_for_function("[...document.querySelectorAll('img.leaflet-tile')].some(i => i.src.includes('/tiles/classes/'))")
        page.screenshot(path=str(tmp_path / "classes.png"))
        legend = page.locator("#legend").inner_text()
        planted = page.locator("#legend img, .leaflet-tooltip img").count()
        page.mouse.move(centre[0], centre[1] + 40)  # the hostile label's tooltip, shown as text
        page.wait_for_selector(".leaflet-tooltip")
        tooltip = page.locator(".leaflet-tooltip").inner_text()
        browser.close()
    assert "meadow: 3 labelled" in legend and "wood: 3 labelled" in legend
    assert f"{HOSTILE}: 3 labelled" in legend and tooltip == HOSTILE, "a hostile class name is shown as text"
    assert planted == 0 and errors == [], "no script ran, no element was planted"
    assert (tmp_path / "search.png").stat().st_size > 10_000 and (tmp_path / "classes.png").stat().st_size > 10_000
    saved = json.loads(running.client.get("/api/labels").content)
    assert len(saved["features"]) == 9
    assert set(saved["colours"]) == {"meadow", "wood", HOSTILE}


def test_suggested_labels_in_a_real_browser(server, tmp_path):
    """After a train the page marks the suggested pixels; a click on one offers the classes (its
    likeliest first, hostile names as text) and a click on a class labels it like any label: one
    more label at that pixel, one ring fewer."""
    from playwright.sync_api import sync_playwright

    running, _ = server
    running.client.delete("/api/labels")
    with sync_playwright() as playwright:
        browser, page, errors, _ = _open_page(playwright, running.url)
        page.on("dialog", lambda dialog: (errors.append(f"a dialog opened: {dialog.message}"), dialog.dismiss()))
        _label(page, (("meadow", -60), (HOSTILE, 60)))
        page.fill("#suggest-count", "6")
        page.click("#train")
        page.wait_for_function("document.getElementById('status').textContent.includes('suggested pixels')")
        rings = page.locator("path.suggested").count()
        page.locator("path.suggested").first.click()
        page.wait_for_selector(".suggestion button")
        buttons = page.locator(".suggestion button").all_inner_texts()
        page.screenshot(path=str(tmp_path / "suggestion.png"))
        page.locator(".suggestion button", has_text="meadow").click()
        page.wait_for_function("document.getElementById('status').textContent.includes('suggestions left')")
        left = page.locator("path.suggested").count()
        planted = page.locator(".suggestion img, .leaflet-popup img").count()
        browser.close()
    assert rings == 6 and left == 5 and sorted(buttons) == sorted(["meadow", HOSTILE])
    assert planted == 0 and errors == [], "no script ran, no element was planted"
    saved = running.client.get("/api/labels").json()["features"]
    assert len(saved) == 7 and saved[-1]["properties"] == {"label": "meadow", "year": TINY_YEAR}
    again = running.client.get("/api/suggestions", params={"year": TINY_YEAR, "region": TINY_REGION, "count": 6})
    assert saved[-1]["geometry"]["coordinates"] not in [f["geometry"]["coordinates"]
                                                        for f in again.json()["suggestions"]["features"]]


def test_other_sites_cannot_change_the_explorer(server):
    """A cross-origin "simple" POST (text/plain, which browsers send without asking), a JSON POST or
    a DELETE from another origin, and any request under a foreign Host name (DNS rebinding) are
    refused with 403, and nothing is stored; the page's own requests still work."""
    running, _ = server
    client = running.client
    client.delete("/api/labels")
    label = json.dumps({"label": HOSTILE, "lon": 0.0, "lat": 0.0})
    refused = [
        client.post("/api/labels", content=label, headers={"content-type": "text/plain", "origin": "http://evil.example"}),
        client.post("/api/labels", content=label, headers={"content-type": "text/plain"}),
        client.post("/api/labels", content=label, headers={"content-type": "application/json",
                                                          "origin": "http://evil.example"}),
        client.post("/api/labels", content=label, headers={"content-type": "application/json",
                                                          "sec-fetch-site": "cross-site"}),
        client.delete("/api/labels", headers={"origin": "http://evil.example"}),
        client.get("/api/labels", headers={"host": "evil.example:8765"}),
        client.post("/api/train", content="{}", headers={"content-type": "application/json",
                                                         "host": f"evil.example:{running.port}",
                                                         "origin": f"http://evil.example:{running.port}"}),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    assert "own page" in refused[0].json()["error"] and "application/json" in refused[1].json()["error"]
    assert client.get("/api/labels").json()["features"] == []
    own = client.post("/api/labels", content=label, headers={"content-type": "application/json",
                                                            "origin": running.url})
    assert own.status_code == 201 and len(client.get("/api/labels").json()["features"]) == 1
    client.delete("/api/labels", headers={"origin": running.url})


def test_previews_linked_from_the_dagster_ui_are_served_and_nothing_outside_the_data_root(server, embedded_env):
    """Metadata carries a thumbnail inline and a link to the full PNG, which the explorer serves;
    paths out of the data root and other files are refused."""
    running, env = server
    _, _, _, embedded = embedded_env
    meta = {k: v.value for k, v in embedded.get_asset_materialization_events()[0]
            .event_specific_data.materialization.metadata.items()}
    assert len(meta["pca_preview"]) < 20_000, "a thumbnail, not the full image, goes into the run storage"
    link = meta["pca_preview_full"]
    assert link.startswith("http://127.0.0.1:8765/files/embeddings/")
    full = _png(running.client.get(link.split("8765", 1)[1]))
    on_disk = Image.open(env.root / "data" / link.split("/files/", 1)[1])
    assert full.shape[:2] == (on_disk.height, on_disk.width)
    for bad, refused in (("../regions.yaml", {400, 404}), ("embeddings/2022/tiny/scales.tif", {400}),
                         ("%2e%2e/%2e%2e/regions.yaml", {400}), ("..%2f..%2fregions.yaml", {400}),
                         ("embeddings/2022/tiny/nothing.png", {404})):
        assert running.client.get(f"/files/{bad}").status_code in refused, bad
