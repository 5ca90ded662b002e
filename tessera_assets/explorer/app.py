"""The explorer's HTTP service: the page, a JSON API over the same Python API as the CLI, and map
tiles of every partition.

Work that reads rasters or the table runs in the thread pool, so a slow tile never blocks another
request. Bad input is a 400 whose message is the one the CLI prints; a partition that is not
materialised is a 404 that says so.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from resources.errors import PartitionNotMaterialisedError, TesseraError
from tessera_assets.errors import BadRequest
from resources.labels import EXPORT_FORMATS, LabelsError, export_labels
from resources.regions import PartitionId, RegionCatalog, validate_region_name, validate_year
from resources.table.similarity import SearchFilter, Similarity, search_report, write_results
from resources.storage.data_root import TesseraStorage
from resources.table.vector_store import VectorStore
from tessera_assets.explorer.access import COOKIE, LOCAL_USER, Access
from tessera_assets.explorer.labelling import LabelSession, suggestion_candidates
from tessera_assets.explorer.layers import PRODUCT_LAYERS, Layers, has_raw, products_of
from tessera_assets.explorer.tiles import render

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20
MAX_EXPLORER_K = 1000
MAX_EXAMPLES = 100
LAYERS = ("true_colour", "pca", "values", "change", "similarity", "classes")
# suggested labels: how many at once, how far apart (10 m pixels), how many candidate pixels are scored
MAX_SUGGESTIONS = 50
DEFAULT_SUGGESTIONS = 10
DEFAULT_SPACING_PX = 5
MAX_SPACING_PX = 200
SUGGESTION_CANDIDATES = 20_000
MAP_PRODUCTS = ("land_cover", "value_map", "change", "similarity")  # whose GeoTIFFs download from /api/maps
SUGGESTION_PARAMS = ("year", "region", "count", "spacing", "seed")


@dataclass
class Query:
    vector: np.ndarray
    results: object  # pyarrow Table
    year: int


class Explorer:
    """The server's state: resources, layer caches, saved queries and the labelling session."""

    def __init__(self, storage: TesseraStorage, regions: RegionCatalog, vectors: VectorStore, dagster_url: str):
        self.storage, self.regions, self.vectors = storage, regions, vectors
        self.dagster_url = dagster_url.rstrip("/")
        self.layers = Layers(storage)
        self.sessions: dict[str, LabelSession] = {}
        self.queries: OrderedDict[str, Query] = OrderedDict()
        self._ids = itertools.count(1)
        self._similarity: Similarity | None = None
        self._lock = threading.Lock()

    def session(self, user: str = LOCAL_USER) -> LabelSession:
        """A user's labels and class maps: the local user's in `labels.geojson`, each other user's
        in `labels-<user>.geojson` (user names are checked when the tokens file is read)."""
        with self._lock:
            if user not in self.sessions:
                name = "labels.geojson" if user == LOCAL_USER else f"labels-{user}.geojson"
                self.sessions[user] = LabelSession(self.storage.local("explorer") / name)
            return self.sessions[user]

    def warm(self) -> None:
        """Compute every partition's base layers and open the table, so the first view and the
        first click cost what later ones do (run in a background thread at start)."""
        for p in self.partitions():
            for layer in p["layers"]:
                getattr(self.layers, layer)(p["year"], p["region"])
        try:
            self.similarity().facts()
        except TesseraError:
            pass  # no table yet: searches will say so

    def similarity(self) -> Similarity:
        if self._similarity is None:
            self._similarity = Similarity(self.vectors)
        return self._similarity

    # -- partitions --------------------------------------------------------------------------------
    def partitions(self) -> list[dict]:
        found = []
        for year, region in self.storage.partitions("embeddings"):
            try:
                partition = self.storage.open_embeddings(year, region)
                bbox = list(self.regions.get(region).bbox)
            except TesseraError:
                continue
            found.append({
                "year": year, "region": region, "bbox": bbox, "encoder_id": partition.encoder_id,
                "layers": [*(["true_colour"] if has_raw(self.storage, year, region) else []), "pca",
                           *products_of(self.storage, year, region)],
                "dagster": f"{self.dagster_url}/assets/embeddings?partition={PartitionId(year, region)}",
            })
        return found

    # -- search ------------------------------------------------------------------------------------
    def search(self, body: dict) -> dict:
        started = time.perf_counter()
        year = validate_year(_int(body, "year"))
        k = _int(body, "k", 20)
        if not 1 <= k <= MAX_EXPLORER_K:
            raise BadRequest(f"k must be in 1..{MAX_EXPLORER_K}, got {k}")
        similarity = self.similarity()
        positives = _points(body.get("positives"), "positives")
        negatives = _points(body.get("negatives"), "negatives")
        centre = None
        if body.get("key"):
            vector, _ = similarity.vector_of_key(str(body["key"]))
        elif positives:
            vector = similarity.example_vector([similarity.vector_at(lon, lat, year)[0] for lon, lat in positives],
                                               [similarity.vector_at(lon, lat, year)[0] for lon, lat in negatives])
            centre = positives[0]
        else:
            centre = (_float(body, "lon"), _float(body, "lat"))
            vector, _ = similarity.vector_at(*centre, year)
        years = [validate_year(int(y)) for y in body.get("years") or [year]]
        regions = [validate_region_name(r) for r in body["regions"]] if body.get("regions") else None
        bbox = tuple(float(v) for v in body["bbox"]) if body.get("bbox") else None
        if bbox is not None and len(bbox) != 4:
            raise BadRequest("bbox is [west, south, east, north]")
        within_m = float(body["within_m"]) if body.get("within_m") else None
        if within_m is not None and centre is None:
            raise BadRequest("within_m needs a point (lon, lat) or positives to measure from")
        filters = SearchFilter(years=years, regions=regions, bbox=bbox, h3_cells=list(body.get("h3") or []),
                               within_m=within_m, centre=centre, encoder_id=body.get("encoder_id"))
        results = similarity.search(vector, k=k, filters=filters)
        with self._lock:
            query_id = f"q{next(self._ids)}"
            self.queries[query_id] = Query(vector, results, year)
            while len(self.queries) > 32:
                self.queries.popitem(last=False)
        rows = results.to_pylist()
        return {"query": query_id, "report": search_report(results),
                "seconds": round(time.perf_counter() - started, 4),
                "results": {"type": "FeatureCollection", "features": [{
                    "type": "Feature", "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
                    "properties": {"rank": i + 1, "similarity": round(float(r["similarity"]), 5), "key": r["key"],
                                   "year": r["year"], "region": r["region"], "row": r["row"], "col": r["col"]},
                } for i, r in enumerate(rows)]}}

    def query(self, query_id: str) -> Query:
        try:
            return self.queries[query_id]
        except KeyError:
            raise BadRequest(f"no query {query_id!r} (this server keeps the last 32)") from None

    def download(self, query_id: str, suffix: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"results{suffix}"
            write_results(self.query(query_id).results, str(path))
            return path.read_bytes()

    # -- tiles -------------------------------------------------------------------------------------
    def tile(self, layer: str, year: int, region: str, z: int, x: int, y: int, params, user: str = LOCAL_USER) -> bytes:
        year, region = validate_year(year), validate_region_name(region)
        if layer == "true_colour":
            raster = self.layers.true_colour(year, region)
        elif layer == "pca":
            raster = self.layers.pca(year, region)
        elif layer in PRODUCT_LAYERS:
            raster = self.layers.product(layer, year, region)
        elif layer == "similarity":
            query_id = params.get("query", "")
            threshold = float(params.get("threshold", -1.0))
            raster = self.layers.similarity(year, region, query_id, self.query(query_id).vector, threshold)
        elif layer == "classes":
            made = self.session(user).maps.get((year, region))
            if made is None:
                raise PartitionNotMaterialisedError(f"no class map of {PartitionId(year, region)} yet: label and train first")
            raster = self.layers.cached(("classes", year, region, made.version),
                                        lambda: self.layers.classes(year, region, made.labels, made.confidence,
                                                                            made.colours))
        else:
            raise BadRequest(f"unknown layer {layer!r}: use one of {', '.join(LAYERS)}")
        return render(raster, z, x, y)

    def data_file(self, relative: str) -> bytes:
        """A PNG of a published partition (previews, maps, curves, linked from the Dagster UI), from
        its current version on a local disk or an object store; any other file is refused."""
        parts = relative.split("/")
        if not relative.endswith(".png") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise BadRequest(f"{relative}: only PNG files of published partitions are served")
        return self.storage.read_file(relative)

    def map_file(self, relative: str) -> bytes:
        """A map's GeoTIFF (a COG) of a published partition, `<product>/<year>/<region>/<name>.tif`,
        for QGIS; only the map products' GeoTIFFs are served."""
        parts = relative.split("/")
        if (len(parts) != 4 or parts[0] not in MAP_PRODUCTS or not parts[3].endswith(".tif")
                or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
            raise BadRequest(f"{relative}: maps download as <{'|'.join(MAP_PRODUCTS)}>/<year>/<region>/<name>.tif")
        return self.storage.read_file(relative)

    # -- labels ------------------------------------------------------------------------------------
    def add_label(self, body: dict, user: str = LOCAL_USER) -> dict:
        geometry = body.get("geometry") or {"type": "Point", "coordinates": [_float(body, "lon"), _float(body, "lat")]}
        year = body.get("year")
        return self.session(user).add(str(body.get("label", "")), geometry, validate_year(int(year)) if year else None)

    def train(self, body: dict, user: str = LOCAL_USER) -> dict:
        made = self.session(user).train(self.storage, validate_year(_int(body, "year")),
                                  validate_region_name(str(body.get("region", ""))), str(body.get("head", "logistic")))
        return {"year": made.year, "region": made.region, "version": made.version, "encoder_id": made.encoder_id,
                "classes": [{"name": name, "colour": made.colours[i], "samples": made.samples.get(name, 0),
                             "pixels": int((made.labels == i + 1).sum())} for i, name in enumerate(made.classes)]}

    def suggestions(self, params, user: str = LOCAL_USER) -> dict:
        """The pixels worth labelling next under the partition's trained head (`model.suggest`),
        from a sample of its displayed pixels; query parameters `year`, `region`, `count`
        (1..MAX_SUGGESTIONS), `spacing` (pixels, 0..MAX_SPACING_PX) and `seed`."""
        started = time.perf_counter()
        unknown = sorted(set(params.keys()) - set(SUGGESTION_PARAMS))
        if unknown:
            raise BadRequest(f"unknown parameter {unknown[0]!r}: use {', '.join(SUGGESTION_PARAMS)}")
        year = validate_year(_int(params, "year"))
        if not params.get("region"):
            raise BadRequest("region is required")
        region = validate_region_name(params["region"])
        count = _int_in(params, "count", DEFAULT_SUGGESTIONS, 1, MAX_SUGGESTIONS)
        spacing = _int_in(params, "spacing", DEFAULT_SPACING_PX, 0, MAX_SPACING_PX)
        seed = _int_in(params, "seed", 0, 0, 2 ** 31 - 1)
        session = self.session(user)
        made = session.maps.get((year, region))
        if made is None:
            raise PartitionNotMaterialisedError(f"no class map of {PartitionId(year, region)} yet: label and train first")
        partition = self.storage.open_embeddings(year, region)
        if partition.encoder_id != made.encoder_id:
            raise BadRequest(f"the embeddings of {PartitionId(year, region)} changed since the last train "
                             f"(encoder {made.encoder_id} then, {partition.encoder_id} now): train again")
        q, scales, _ = self.layers.display_vectors(year, region)
        grid = partition.grid
        candidates = suggestion_candidates(q, scales, grid, SUGGESTION_CANDIDATES, seed)
        picked = session.suggest(made, candidates, grid, count, spacing, seed)
        return {"year": year, "region": region, "version": made.version, "classes": made.classes,
                "candidates": len(candidates.rows), "seconds": round(time.perf_counter() - started, 4),
                "suggestions": {"type": "FeatureCollection", "features": [{
                    "type": "Feature", "geometry": {"type": "Point", "coordinates": [s["lon"], s["lat"]]},
                    "properties": {"rank": i + 1, "row": s["row"], "col": s["col"],
                                   "uncertainty": round(s["uncertainty"], 4),
                                   "classes": [{"name": c["name"], "probability": round(c["probability"], 4)}
                                               for c in s["classes"]]},
                } for i, s in enumerate(picked)]}}


def _int(body: dict, key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        raise BadRequest(f"{key} is required")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be an integer, got {value!r}") from None


def _int_in(params, key: str, default: int, low: int, high: int) -> int:
    """An integer parameter in low..high (its default when absent); anything else is a 400 that says so."""
    value = _int(params, key, default)
    if not low <= value <= high:
        raise BadRequest(f"{key} must be in {low}..{high}, got {value}")
    return value


def _float(body: dict, key: str) -> float:
    try:
        return float(body[key])
    except KeyError:
        raise BadRequest(f"{key} is required") from None
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be a number, got {body[key]!r}") from None


def _points(value, name: str) -> list[tuple[float, float]]:
    points = list(value or [])
    if len(points) > MAX_EXAMPLES:
        raise BadRequest(f"at most {MAX_EXAMPLES} {name}, got {len(points)}")
    try:
        return [(float(p[0]), float(p[1])) for p in points]
    except (TypeError, ValueError, IndexError):
        raise BadRequest(f"{name} are [lon, lat] pairs") from None


def _error(exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, (PartitionNotMaterialisedError, FileNotFoundError)) else 400
    return JSONResponse({"error": str(exc)}, status_code=status)


async def _body(request: Request) -> dict:
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        raise BadRequest(f"request body larger than {MAX_BODY_BYTES} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"request body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body is a JSON object")
    return body


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def allowed_hosts(bind_host: str) -> tuple[str, ...] | None:
    """The Host names a request may carry: loopback names, and the bind address when it is a
    specific one; None (any) when bound to every interface. Checking Host stops DNS rebinding, by
    which a page on another site reaches a loopback server under its own name."""
    if bind_host in ("0.0.0.0", "::", ""):
        return None
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, bind_host.strip("[]"), f"[{bind_host.strip('[]')}]")))


def refusal(method: str, headers, hosts: tuple[str, ...] | None) -> str | None:
    """Why a request must be refused, or None. Every request names an allowed Host; a state-changing
    one comes from this server's own origin (Origin, or Sec-Fetch-Site, as browsers send them) and,
    with a body, as JSON: a cross-origin page can send a "simple" text/plain POST without asking,
    but never one of JSON type, so together these close the explorer to other sites' scripts."""
    host = headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if hosts is not None and name not in hosts:
        return f"Host {host!r} is not a name of this explorer"
    if method not in STATE_CHANGING:
        return None
    origin = headers.get("origin")
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        return f"a {method} from origin {origin!r}: the explorer takes changes only from its own page"
    if origin is None and headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
        return f"a cross-site {method}: the explorer takes changes only from its own page"
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if method != "DELETE" and kind != "application/json":
        return f"a {method} body must be sent as application/json, not {kind or 'no content type'}"
    return None


def create_app(explorer: Explorer, bind_host: str = "127.0.0.1", access: Access | None = None) -> Starlette:
    """The HTTP service. `access` says who may use it (`tessera_assets.explorer.access`): by default
    the one local user; with tokens, every request but the page and its login names a user."""
    handled = (TesseraError, LabelsError, BadRequest, ValueError, FileNotFoundError)
    hosts = allowed_hosts(bind_host)
    access = access or Access()

    def answer(fn, public: bool = False, writes: tuple[str, ...] = ()):
        """The endpoint behind the guards: the Host and origin rules, then (unless `public`) a
        user's token, and no `writes` (methods) in read-only mode."""
        async def endpoint(request: Request):
            problem = refusal(request.method, request.headers, hosts)
            if problem:
                return JSONResponse({"error": problem}, status_code=403)
            if not public:
                user = access.user(request.headers, request.cookies)
                if user is None:
                    return JSONResponse({"error": "this explorer needs your access token (sign in on its page, or "
                                                  "send Authorization: Bearer <token>)"}, status_code=401)
                if access.read_only and request.method in writes:
                    return JSONResponse({"error": "this explorer is read-only: labels and training are off"},
                                        status_code=403)
                request.state.user = user
            try:
                return await fn(request)
            except handled as exc:
                return _error(exc)
        return endpoint

    async def login(request: Request):
        token = str((await _body(request)).get("token", ""))
        if access.needs_token and access.user_of(token) is None:
            return JSONResponse({"error": "unknown token"}, status_code=401)
        response = JSONResponse({"user": access.user_of(token) if access.needs_token else LOCAL_USER,
                                 "read_only": access.read_only})
        if access.needs_token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                                path="/")
        return response

    async def page(request: Request):
        return FileResponse(STATIC / "index.html")

    async def partitions(request: Request):
        return JSONResponse(await run_in_threadpool(explorer.partitions))

    async def regions(request: Request):
        return JSONResponse([{"name": r.name, "bbox": list(r.bbox), "demo": r.demo} for r in explorer.regions.all()])

    async def search(request: Request):
        return JSONResponse(await run_in_threadpool(explorer.search, await _body(request)))

    async def results(request: Request):
        query_id, suffix = request.path_params["query"], "." + request.path_params["format"]
        if suffix not in (".geojson", ".parquet"):
            raise BadRequest("results download as .geojson or .parquet")
        data = await run_in_threadpool(explorer.download, query_id, suffix)
        kind = "application/geo+json" if suffix == ".geojson" else "application/vnd.apache.parquet"
        return Response(data, media_type=kind,
                        headers={"content-disposition": f'attachment; filename="tessera-{query_id}{suffix}"'})

    async def tile(request: Request):
        p = request.path_params
        png = await run_in_threadpool(explorer.tile, p["layer"], p["year"], p["region"], p["z"], p["x"], p["y"],
                                      request.query_params, request.state.user)
        return Response(png, media_type="image/png", headers={"cache-control": "no-cache"})

    async def labels(request: Request):
        if request.method == "POST":
            return JSONResponse(await run_in_threadpool(explorer.add_label, await _body(request), request.state.user),
                                status_code=201)
        session = explorer.session(request.state.user)
        if request.method == "DELETE":
            await run_in_threadpool(session.clear)
            return JSONResponse({"removed": "all"})
        return JSONResponse(session.geojson() | {"colours": session.colours()},
                            media_type="application/geo+json",
                            headers={"content-disposition": 'attachment; filename="labels.geojson"'}
                            if request.query_params.get("download") else None)

    async def labels_file(request: Request):
        suffix = "." + request.path_params["format"]
        data = await run_in_threadpool(export_labels, explorer.session(request.state.user).geojson()["features"], suffix)
        return Response(data, media_type=EXPORT_FORMATS[suffix][1],
                        headers={"content-disposition": f'attachment; filename="labels{suffix}"'})

    async def map_file(request: Request):
        relative = request.path_params["path"]
        data = await run_in_threadpool(explorer.map_file, relative)
        return Response(data, media_type="image/tiff",
                        headers={"content-disposition": f'attachment; filename="{"-".join(relative.split("/"))}"'})

    async def label(request: Request):
        await run_in_threadpool(explorer.session(request.state.user).remove, request.path_params["label_id"])
        return JSONResponse({"removed": request.path_params["label_id"]})

    async def files(request: Request):
        return Response(await run_in_threadpool(explorer.data_file, request.path_params["path"]), media_type="image/png")

    async def train(request: Request):
        return JSONResponse(await run_in_threadpool(explorer.train, await _body(request), request.state.user))

    async def suggestions(request: Request):
        return JSONResponse(await run_in_threadpool(explorer.suggestions, request.query_params, request.state.user))

    async def class_map(request: Request):
        key = (validate_year(request.path_params["year"]), validate_region_name(request.path_params["region"]))
        made = explorer.session(request.state.user).maps.get(key)
        if made is None:
            raise PartitionNotMaterialisedError(f"no class map of {PartitionId(*key)} yet: label and train first")
        return FileResponse(made.folder / "classes.tif", media_type="image/tiff",
                            filename=f"classes-{key[1]}-{key[0]}.tif")

    return Starlette(routes=[
        Route("/", answer(page, public=True)),
        Route("/api/login", answer(login, public=True), methods=["POST"]),
        Route("/api/partitions", answer(partitions)),
        Route("/api/regions", answer(regions)),
        Route("/api/search", answer(search), methods=["POST"]),
        Route("/api/search/{query}.{format}", answer(results)),
        Route("/api/labels", answer(labels, writes=("POST", "DELETE")), methods=["GET", "POST", "DELETE"]),
        Route("/api/labels/{label_id:int}", answer(label, writes=("DELETE",)), methods=["DELETE"]),
        Route("/api/labels.{format}", answer(labels_file)),
        Route("/api/maps/{path:path}", answer(map_file)),
        Route("/api/train", answer(train, writes=("POST",)), methods=["POST"]),
        Route("/api/suggestions", answer(suggestions)),
        Route("/api/classes/{year:int}/{region}.tif", answer(class_map)),
        Route("/tiles/{layer}/{year:int}/{region}/{z:int}/{x:int}/{y:int}.png", answer(tile)),
        Route("/files/{path:path}", answer(files)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
