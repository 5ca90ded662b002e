"""'Where else looks like this pixel?': the one home of similarity search over the embedding table.

A query vector comes from a point (lon, lat, year), a pixel key, or positive and negative examples
(`2 mean(pos) - mean(neg)`, or `mean(pos)` alone, normalised). Results are ranked by cosine
similarity and can be restricted to years, regions, a bbox, H3 cells of any resolution (converted to
the stored filter columns) or a radius around a point. Filters are applied before the top-k
(prefilter), so a filtered search never returns rows outside the filter and never comes back short
because of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import h3
import numpy as np
import pyarrow as pa

from model.errors import VectorDimensionError
from model.quantise import unit_rows
from resources.table.filters import all_of, between, equals, is_in, not_equals
from resources.errors import SearchError, single_encoder
from resources.table.store import FILTER_RESOLUTIONS, KEY_RESOLUTION, TableStore, row_key

MAX_K = 10_000
MAX_QUERIES = 10_000  # query vectors in one batched search
POINTS_PER_LOOKUP = 500  # points whose vectors one lookup query reads
EARTH_RADIUS_M = 6_371_008.8
SEARCH_REPORT_KEY = b"tessera:search"
RESULT_COLUMNS = ["key", "year", "region", "row", "col", "lon", "lat", "h3_r13", "encoder_id"]
FETCHED_COLUMNS = [c for c in RESULT_COLUMNS if c not in ("key", "encoder_id")]  # see Similarity.search


@dataclass
class SearchFilter:
    years: list[int] | None = None
    regions: list[str] | None = None
    bbox: tuple[float, float, float, float] | None = None
    h3_cells: list[str] = field(default_factory=list)
    within_m: float | None = None
    centre: tuple[float, float] | None = None  # (lon, lat) for within_m
    encoder_id: str | None = None  # required when the table holds vectors of several encoders


def _check_point(lon: float, lat: float) -> None:
    if not (-180 <= lon <= 180 and -90 <= lat <= 90) or not (math.isfinite(lon) and math.isfinite(lat)):
        raise SearchError(f"point out of range: lon={lon} must be in [-180, 180], lat={lat} in [-90, 90]")


def _cell_members(cells: list[str]) -> list[tuple[str, list[int]]]:
    """H3 cells of any resolution as (stored column, cell ids) pairs: the finest stored column at
    least as fine as each cell (7, 9 or 13) and the cell's children there."""
    pairs = []
    for cell in cells:
        if not h3.is_valid_cell(cell):
            raise SearchError(f"not an H3 cell: {cell!r}")
        res = h3.get_resolution(cell)
        if res < 3:
            raise SearchError(f"H3 cell {cell} (resolution {res}) is too coarse to filter by; use a bbox")
        if res > KEY_RESOLUTION:
            pairs.append((f"h3_r{KEY_RESOLUTION}", [h3.str_to_int(h3.cell_to_parent(cell, KEY_RESOLUTION))]))
        else:
            target = next(r for r in (*FILTER_RESOLUTIONS, KEY_RESOLUTION) if r >= res)
            pairs.append((f"h3_r{target}", [h3.str_to_int(c) for c in h3.cell_to_children(cell, target)]))
    return pairs


def _radius_bbox(lon: float, lat: float, metres: float) -> tuple[float, float, float, float]:
    dlat = math.degrees(metres / EARTH_RADIUS_M)
    dlon = math.degrees(metres / (EARTH_RADIUS_M * max(math.cos(math.radians(lat)), 1e-6)))
    return lon - dlon, lat - dlat, lon + dlon, lat + dlat


def haversine_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(a))


def where_clause(f: SearchFilter) -> str | None:
    parts = []
    if f.years:
        parts.append(is_in("year", [int(y) for y in f.years]))
    if f.regions:
        parts.append(is_in("region", f.regions))
    for w, s, e, n in _boxes(f):
        parts.append(all_of(between("lon", w, e), between("lat", s, n)))
    if f.h3_cells:
        parts.append("(" + " OR ".join(is_in(column, [int(i) for i in ids]) for column, ids in _cell_members(f.h3_cells)) + ")")
    if f.encoder_id:
        parts.append(equals("encoder_id", f.encoder_id))
    return all_of(*parts)


def _boxes(f: SearchFilter) -> list[tuple[float, float, float, float]]:
    boxes = [f.bbox] if f.bbox else []
    if f.within_m is not None:
        if f.centre is None or f.within_m <= 0:
            raise SearchError(f"within_m needs a query point and a positive radius, got {f.within_m}")
        boxes.append(_radius_bbox(*f.centre, f.within_m))
    for w, s, e, n in boxes:
        if w >= e or s >= n:
            raise SearchError(f"bad bbox: W={w} S={s} E={e} N={n} (need W < E and S < N)")
    return boxes


@dataclass(frozen=True)
class TableFacts:
    version: int
    rows: int
    encoder_ids: list[str]
    index: dict


class Similarity:
    """Queries over one TableStore (or the VectorStore resource, which is one), answered by the
    table's own LanceDB indexes.

    A query opens nothing but the table, so a fresh process answers its first query as fast as a
    warm one. Filters are prefilters (scalar indexes); when they keep at most
    `store.exact_scan_max_rows` rows, those rows are scanned exactly: probing IVF lists that hold few
    of them is no faster and loses recall (0.58 within 1,900 rows of 1M, measured). Otherwise `store.nprobes` lists of the vector index
    are probed, and when the filter left fewer than k rows in them the query runs again probing
    until k are found, so a filtered search never comes back short while k rows match (probing
    "as far as needed" from the start costs 2-3x on every filtered query: measured)."""

    def __init__(self, store: TableStore):
        self.store = store
        self.table = store.table()
        if self.table is None or self.table.count_rows() == 0:
            raise SearchError("the embedding table is empty: materialise embedding_table first")
        self.dim = self.table.schema.field("vector").type.list_size
        self._facts: TableFacts | None = None

    # -- query vectors ---------------------------------------------------------------------------
    def vector_at(self, lon: float, lat: float, year: int) -> tuple[np.ndarray, dict]:
        """The embedding of the pixel whose centre is nearest to a point."""
        ((_, rows, best),) = self._nearest_pixels([(lon, lat)], year, RESULT_COLUMNS + ["vector"])
        if best < 0:
            raise SearchError(f"point ({lon}, {lat}) is outside every materialised partition of {year}")
        return self._row_vector(rows, best)

    def vectors_at(self, points: list[tuple[float, float]], year: int) -> np.ndarray:
        """The embeddings of the pixels nearest to many points (one row each, in order)."""
        if not points:
            raise SearchError("no points given")
        vectors = np.zeros((len(points), self.dim), np.float32)
        missing = []
        read, stored = None, None  # the rows of one lookup, and their vectors as one matrix
        for i, rows, best in self._nearest_pixels(points, year, ["lon", "lat", "vector"]):
            if best < 0:
                missing.append(i)
                continue
            if rows is not read:
                read, stored = rows, rows["vector"].combine_chunks().values.to_numpy().reshape(-1, self.dim)
            vectors[i] = stored[best]
        if missing:
            shown = ", ".join(f"{i} ({points[i][0]}, {points[i][1]})" for i in missing[:5])
            raise SearchError(f"{len(missing)} of {len(points)} points are outside every materialised partition "
                              f"of {year}: {shown}{' ...' if len(missing) > 5 else ''}")
        return vectors

    def _nearest_pixels(self, points: list[tuple[float, float]], year: int, columns: list[str]):
        """For each point, in order: (its index, the rows read, the row of the pixel whose centre is
        nearest, or -1 when none is within 10 m: a point inside a pixel is at most 7.1 m from its
        centre). The rows are the pixels in the res-9 cells around the points, one query per
        `POINTS_PER_LOOKUP` points."""
        for lon, lat in points:
            _check_point(lon, lat)
        if self.table.count_rows(equals("year", int(year))) == 0:
            years = sorted(set(self.table.search().select(["year"]).limit(None).to_arrow()["year"].to_pylist()))
            raise SearchError(f"year {year} is not in the embedding table (materialised years: {years})")
        for start in range(0, len(points), POINTS_PER_LOOKUP):
            chunk = points[start:start + POINTS_PER_LOOKUP]
            cells = [h3.latlng_to_cell(lat, lon, FILTER_RESOLUTIONS[-1]) for lon, lat in chunk]
            ring = sorted({h3.str_to_int(c) for cell in cells for c in h3.grid_disk(cell, 1)})
            rows = (self.table.search().where(all_of(equals("year", int(year)), is_in("h3_r9", ring)))
                    .select(columns).limit(None).to_arrow())
            lons, lats = rows["lon"].to_numpy(), rows["lat"].to_numpy()
            for i, (lon, lat) in enumerate(chunk, start=start):
                if not rows.num_rows:
                    yield i, rows, -1
                    continue
                distance = haversine_m(lon, lat, lons, lats)
                best = int(np.argmin(distance))
                yield i, rows, best if distance[best] <= 10.0 else -1

    def vector_of_key(self, key: str) -> tuple[np.ndarray, dict]:
        rows = (self.table.search().where(equals("key", key))
                .select(RESULT_COLUMNS + ["vector"]).limit(1).to_arrow())
        if rows.num_rows == 0:
            raise SearchError(f"no pixel with key {key!r}")
        return self._row_vector(rows, 0)

    @staticmethod
    def _row_vector(rows: pa.Table, i: int) -> tuple[np.ndarray, dict]:
        vector = rows["vector"][i].values.to_numpy().astype(np.float32)
        return vector, {c: rows[c][i].as_py() for c in RESULT_COLUMNS}

    def example_vector(self, positives: list[np.ndarray], negatives: list[np.ndarray] | None = None) -> np.ndarray:
        if not positives:
            raise SearchError("at least one positive example is needed")
        pos = np.mean([unit_rows(self.check(v)) for v in positives], axis=0)
        if negatives:
            neg = np.mean([unit_rows(self.check(v)) for v in negatives], axis=0)
            return unit_rows(2 * pos - neg)
        return unit_rows(pos)

    def check(self, vector) -> np.ndarray:
        v = np.asarray(vector, np.float32).ravel()
        if v.shape[0] != self.dim:
            raise VectorDimensionError(f"query vector has {v.shape[0]} dimensions, the table holds {self.dim}")
        if not np.isfinite(v).all() or not np.any(v):
            raise SearchError("query vector must be finite and non-zero")
        return v

    def facts(self) -> "TableFacts":
        """Rows, encoders and vector index of the table's latest version, looked up again only when
        another commit has made a new version (one cheap version check a query)."""
        version = self.table.version
        if self._facts is None or self._facts.version != version:
            self._facts = TableFacts(version, self.table.count_rows(), self.encoder_ids(),
                                     self.store.describe_index(self.table))
        return self._facts

    def encoder_ids(self) -> list[str]:
        """The encoders whose vectors the table holds (two one-row queries on a bitmap-indexed column);
        at most two are named, which is enough to refuse a mix."""
        first = self.table.search().select(["encoder_id"]).limit(1).to_arrow()["encoder_id"][0].as_py()
        other = self.table.search().where(not_equals("encoder_id", first)).select(["encoder_id"])
        rest = other.limit(1).to_arrow()["encoder_id"].to_pylist()
        return [first, *rest]

    # -- search ----------------------------------------------------------------------------------
    def search(self, vector, k: int = 10, filters: SearchFilter | None = None, exact: bool = False) -> pa.Table:
        """The k most similar pixels (cosine), best first, with a `similarity` column; the table's
        schema metadata `tessera:search` says how it was answered (`search_report`).

        Vectors of different encoders live in different embedding spaces: when the table holds
        several, the filters must name one (`encoder_id`)."""
        vector = self.check(vector)
        plan = self._plan(k, filters or SearchFilter(), exact)
        fetch = plan.fetch
        result = self._query(vector, fetch, plan.where, "exact" if plan.exact else "probe")
        if not plan.exact and result.num_rows < min(fetch, plan.matching):
            # the filter left fewer than k rows in the first lists: probe on until k are found
            result = self._query(vector, fetch, plan.where, "probe on")
        return self._finish(result, plan).replace_schema_metadata({SEARCH_REPORT_KEY: plan.report})

    def search_many(self, vectors, k: int = 10, filters: SearchFilter | None = None, exact: bool = False) -> pa.Table:
        """The k most similar pixels to each of many query vectors (rows of `vectors`), answered by
        one LanceDB query for all of them (one scan of the probed lists, not one a query): a `query`
        column (the row of `vectors`) then the columns of `search`, best first within each query.
        Queries the filters leave short are probed on one by one, as `search` does."""
        matrix = np.asarray(vectors, np.float32)
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise SearchError(f"query vectors must be a non-empty 2-d array (queries x {self.dim}), got shape {matrix.shape}")
        if matrix.shape[0] > MAX_QUERIES:
            raise SearchError(f"at most {MAX_QUERIES} query vectors at once, got {matrix.shape[0]}")
        matrix = np.stack([self.check(v) for v in matrix])
        filters = filters or SearchFilter()
        if filters.within_m is not None:
            raise SearchError("a radius (within_m) is around one point: search those points one by one")
        plan = self._plan(k, filters, exact)
        found = self._query(matrix, plan.fetch, plan.where, "exact" if plan.exact else "probe")
        index = found["query_index"].to_numpy()
        parts = []
        for i in range(matrix.shape[0]):
            result = found.filter(pa.array(index == i)).drop_columns(["query_index"])
            if not plan.exact and result.num_rows < min(plan.fetch, plan.matching):
                result = self._query(matrix[i], plan.fetch, plan.where, "probe on")
            result = self._finish(result, plan)
            parts.append(result.add_column(0, "query", pa.array(np.full(result.num_rows, i, np.int32))))
        return pa.concat_tables(parts).replace_schema_metadata({SEARCH_REPORT_KEY: plan.report})

    def _plan(self, k: int, filters: SearchFilter, exact: bool) -> "QueryPlan":
        """How a query with these filters is answered: the prefilter, how many rows it keeps, exact
        scan or index probe, and the report that says so."""
        if not isinstance(k, int) or k <= 0 or k > MAX_K:
            raise SearchError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        facts = self.facts()
        encoder_id = filters.encoder_id or single_encoder(facts.encoder_ids, None, "the embedding table")
        where = where_clause(filters)
        matching = self.table.count_rows(where) if where else facts.rows
        if matching == 0 and filters.years and self.table.count_rows(where_clause(SearchFilter(years=filters.years))) == 0:
            raise SearchError(f"none of the years {filters.years} is in the embedding table")
        exact = exact or facts.index["index"].startswith("none") or matching <= self.store.exact_scan_max_rows
        report = {"table_rows": facts.rows, "rows_searched": matching,
                  **({"index": "none (exact scan)"} if exact else facts.index)}
        return QueryPlan(k, filters, encoder_id, where, matching, exact, json.dumps(report).encode())

    def _finish(self, result: pa.Table, plan: "QueryPlan") -> pa.Table:
        """LanceDB's answer to one query as the caller gets it: similarity, the radius refined
        exactly, the top k, and the key and encoder (known without reading them: fewer columns to
        fetch a hit)."""
        similarity = 1.0 - result["_distance"].to_numpy()
        result = result.drop_columns(["_distance"]).append_column("similarity", pa.array(similarity, pa.float32()))
        if plan.filters.within_m is not None:
            lon, lat = plan.filters.centre
            inside = haversine_m(lon, lat, result["lon"].to_numpy(), result["lat"].to_numpy()) <= plan.filters.within_m
            result = result.filter(pa.array(inside))
        result = result.slice(0, plan.k)
        keys = [row_key(y, r, c) for y, r, c in zip(result["year"].to_pylist(), result["region"].to_pylist(),
                                                    result["h3_r13"].to_pylist())]
        return (result.add_column(0, "key", pa.array(keys, pa.string()))
                .add_column(result.num_columns, "encoder_id", pa.array([plan.encoder_id] * result.num_rows, pa.string()))
                .select([*RESULT_COLUMNS, "similarity"]))

    def _query(self, vector: np.ndarray, limit: int, where: str | None, mode: str) -> pa.Table:
        """One LanceDB query (of one vector, or of the rows of a matrix: then with `query_index`): an
        exact scan, `nprobes` lists of the index, or as many as it takes."""
        query = (self.table.search(vector, vector_column_name="vector").distance_type("cosine")
                 .select([*FETCHED_COLUMNS, "_distance"]).limit(limit))
        if where:
            query = query.where(where, prefilter=True)
        if mode == "exact":
            return query.bypass_vector_index().to_arrow()
        query = query.refine_factor(self.store.refine_factor)
        if mode == "probe":
            return query.nprobes(self.store.nprobes).to_arrow()
        return query.minimum_nprobes(self.store.nprobes).maximum_nprobes(0).to_arrow()


@dataclass(frozen=True)
class QueryPlan:
    k: int
    filters: SearchFilter
    encoder_id: str
    where: str | None
    matching: int
    exact: bool
    report: bytes

    @property
    def fetch(self) -> int:
        return self.k * 2 if self.filters.within_m is not None else self.k  # the radius is refined after


def search_report(results: pa.Table) -> dict:
    """How `Similarity.search` answered: rows in the table, rows the filters kept, index used."""
    return json.loads((results.schema.metadata or {}).get(SEARCH_REPORT_KEY, b"{}"))


def format_results(results: pa.Table) -> str:
    """Results as a text table, best first."""
    lines = [f"{'rank':>4} {'similarity':>10} {'lon':>11} {'lat':>10} {'year':>5} {'region':<12} h3 (res 13)"]
    for rank, row in enumerate(results.to_pylist(), start=1):
        lines.append(f"{rank:>4} {row['similarity']:>10.4f} {row['lon']:>11.6f} {row['lat']:>10.6f} {row['year']:>5} "
                     f"{row['region']:<12} {row['h3_r13']:x}")
    return "\n".join(lines)


def format_batch_results(results: pa.Table, points: list[tuple[float, float]], shown: int = 20) -> str:
    """The best hit of each of the first `shown` query points of a batched search, as a text table."""
    first: dict[int, dict] = {}
    for row in results.to_pylist():
        first.setdefault(row["query"], row)
    lines = [f"{'query':>5} {'lon':>11} {'lat':>10}  best hit (similarity, lon, lat, year, region)"]
    for i, (lon, lat) in enumerate(points[:shown]):
        hit = first.get(i)
        lines.append(f"{i:>5} {lon:>11.6f} {lat:>10.6f}  " + (
            f"{hit['similarity']:.4f} {hit['lon']:.6f} {hit['lat']:.6f} {hit['year']} {hit['region']}" if hit else "no hit"))
    if len(points) > shown:
        lines.append(f"  ... {len(points) - shown} more queries (--out writes every hit, with its query)")
    return "\n".join(lines)


def write_results(results: pa.Table, path: str) -> str:
    """Results as GeoJSON points or GeoParquet (WKB point geometry, EPSG:4326), by file extension."""
    import struct

    import pyarrow.parquet as pq

    if path.endswith(".geojson") or path.endswith(".json"):
        rows = results.to_pylist()
        features = [{
            "type": "Feature", "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
            "properties": {k: (f"{v:x}" if k == "h3_r13" else v) for k, v in r.items() if k not in ("lon", "lat")},
        } for r in rows]
        with open(path, "w") as handle:
            json.dump({"type": "FeatureCollection", "features": features}, handle)
    elif path.endswith(".parquet"):
        wkb = [struct.pack("<BIdd", 1, 1, lon, lat) for lon, lat in
               zip(results["lon"].to_pylist(), results["lat"].to_pylist())]
        table = results.append_column("geometry", pa.array(wkb, pa.binary()))
        geo = {"version": "1.1.0", "primary_column": "geometry",
               "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"]}}}  # CRS: OGC:CRS84
        table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
        pq.write_table(table, path)
    else:
        raise SearchError(f"unknown output format for {path!r}: use .geojson or .parquet")
    return path
