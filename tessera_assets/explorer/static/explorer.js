"use strict";
// The tessera explorer: one page over the JSON API and tiles of `tessera serve`. No build step.

const $ = (id) => document.getElementById(id);
const state = { partitions: [], current: null, positives: [], negatives: [], query: null, drawing: null };
const map = L.map("map", { doubleClickZoom: false, boxZoom: false, maxZoom: 20 });
const layers = { base: null, similarity: null, classes: null };
const BASE_NAMES = { pca: "embeddings (PCA)", true_colour: "true colour", values: "value map", change: "change since the year before" };
const results = L.layerGroup().addTo(map);
const examples = L.layerGroup().addTo(map);
const labelMarks = L.layerGroup().addTo(map);
const suggestionMarks = L.layerGroup().addTo(map);
let labels = [];
let colours = {};  // class name -> colour, from the server's one palette (GET /api/labels)

// Every string a user or the data chose (class and region names) goes into the page as text, never as HTML.
function text(value) {
  const span = document.createElement("span");
  span.textContent = String(value);
  return span;
}

async function api(path, options = {}, signedIn = false) {
  const response = await fetch(path, {
    ...options, headers: { "content-type": "application/json" },
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const data = await response.json();
  if (response.status === 401 && !signedIn && await signIn()) return api(path, options, true);
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

// A shared explorer asks for the user's access token once; the server keeps it in an HttpOnly
// cookie (never in a URL, never readable by scripts), which tiles and downloads then carry too.
async function signIn() {
  const token = window.prompt("This explorer is shared: your access token");
  if (!token) return false;
  const response = await fetch("/api/login", { method: "POST", headers: { "content-type": "application/json" },
                                               body: JSON.stringify({ token }) });
  if (!response.ok) status("that token is not known here", true);
  return response.ok;
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function tiles(layer, params = "") {
  const p = state.current;
  return L.tileLayer(`/tiles/${layer}/${p.year}/${p.region}/{z}/{x}/{y}.png${params}`,
                     { maxZoom: 20, tileSize: 256, attribution: "TESSERA embeddings" });
}

function replace(name, layer) {
  if (layers[name]) map.removeLayer(layers[name]);
  layers[name] = layer;
  if (layer) layer.addTo(map);
}

function mode() { return document.querySelector("input[name=mode]:checked").value; }

// -- partitions ------------------------------------------------------------------------------------
async function init() {
  state.partitions = await api("/api/partitions");
  if (!state.partitions.length) { status("no materialised embeddings partitions: run `make demo` first", true); return; }
  for (const [i, p] of state.partitions.entries()) $("partition").add(new Option(`${p.region} ${p.year}`, i));
  const hash = new URLSearchParams(location.hash.slice(1));
  const wanted = state.partitions.findIndex((p) => p.region === hash.get("region") && String(p.year) === hash.get("year"));
  $("partition").value = Math.max(0, wanted);
  show(state.partitions[$("partition").value]);
  await loadLabels();
}

function show(p) {
  state.current = p;
  location.hash = `year=${p.year}&region=${p.region}`;
  const [w, s, e, n] = p.bbox;
  map.fitBounds([[s, w], [n, e]]);
  $("base").replaceChildren(...p.layers.map((l) => new Option(BASE_NAMES[l] || l, l)));
  $("base").value = "pca";
  replace("base", tiles("pca"));
  replace("similarity", null);
  replace("classes", null);
  results.clearLayers();
  $("results").replaceChildren();
  suggestionMarks.clearLayers();
  $("suggest").disabled = true;
  $("dagster").href = p.dagster;
  status(`${p.region} ${p.year}: encoder ${p.encoder_id}`);
}

$("partition").addEventListener("change", (e) => show(state.partitions[e.target.value]));
$("base").addEventListener("change", (e) => replace("base", tiles(e.target.value)));
for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.addEventListener("change", () => {
    $("search-panel").hidden = mode() !== "search";
    $("label-panel").hidden = mode() !== "label";
  });
}
$("area").addEventListener("change", (e) => {
  $("radius-row").hidden = e.target.value !== "radius";
  $("h3-row").hidden = e.target.value !== "h3";
});

// -- search ----------------------------------------------------------------------------------------
function searchBody(extra) {
  const p = state.current;
  const body = { year: p.year, k: Number($("k").value), ...extra };
  const years = $("years").value.split(",").map((y) => y.trim()).filter(Boolean).map(Number);
  if (years.length) body.years = years;
  const area = $("area").value;
  if (area === "view") {
    const b = map.getBounds();
    body.bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
  } else if (area === "radius") {
    body.within_m = Number($("radius").value);
  } else if (area === "h3") {
    body.h3 = $("h3").value.split(",").map((c) => c.trim()).filter(Boolean);
  }
  return body;
}

async function search(extra) {
  const started = performance.now();
  status("searching...");
  try {
    const answer = await api("/api/search", { method: "POST", body: searchBody(extra) });
    state.query = answer.query;
    drawResults(answer.results.features);
    similarityLayer();
    $("downloads").hidden = false;
    $("dl-geojson").href = `/api/search/${answer.query}.geojson`;
    $("dl-parquet").href = `/api/search/${answer.query}.parquet`;
    const r = answer.report;
    status(`${answer.results.features.length} results in ${Math.round(performance.now() - started)} ms ` +
           `(searched ${r.rows_searched.toLocaleString()} of ${r.table_rows.toLocaleString()} rows, ${r.index})`);
  } catch (error) {
    status(error.message, true);
  }
}

function drawResults(features) {
  results.clearLayers();
  const list = $("results");
  list.replaceChildren();
  for (const f of features) {
    const [lon, lat] = f.geometry.coordinates;
    const pr = f.properties;
    L.circleMarker([lat, lon], { radius: 5, color: "#00e5ff", weight: 2, fillOpacity: 0.2 })
      .bindTooltip(text(`#${pr.rank} ${pr.similarity.toFixed(3)} ${pr.region} ${pr.year}`)).addTo(results);
    const item = document.createElement("li");
    item.className = "result";
    item.textContent = `${pr.similarity.toFixed(3)} ${pr.region} ${pr.year} (${lon.toFixed(5)}, ${lat.toFixed(5)})`;
    item.addEventListener("click", () => map.setView([lat, lon], Math.max(map.getZoom(), 17)));
    list.append(item);
  }
}

function similarityLayer() {
  if (!state.query) return;
  const threshold = Number($("threshold").value);
  $("threshold-value").textContent = threshold.toFixed(2);
  const p = state.current;
  const url = `/tiles/similarity/${p.year}/${p.region}/{z}/{x}/{y}.png?query=${state.query}&threshold=${threshold}`;
  // one layer per query: the slider only points it at new tiles (a layer per input event piled up requests)
  if (layers.similarity && layers.similarity.options.query === state.query) layers.similarity.setUrl(url);
  else replace("similarity", L.tileLayer(url, { maxZoom: 20, tileSize: 256, query: state.query }));
}

$("threshold").addEventListener("input", similarityLayer);

function addExample(list, latlng, colour) {
  list.push([latlng.lng, latlng.lat]);
  L.circleMarker(latlng, { radius: 6, color: colour, weight: 3 }).addTo(examples);
  $("search-examples").disabled = state.positives.length === 0;
  status(`${state.positives.length} positive, ${state.negatives.length} negative examples`);
}

$("search-examples").addEventListener("click", () =>
  search({ positives: state.positives, negatives: state.negatives }));
$("clear-examples").addEventListener("click", () => {
  state.positives = []; state.negatives = []; examples.clearLayers();
  $("search-examples").disabled = true;
});

// -- labels ----------------------------------------------------------------------------------------
function classNames() { return Object.keys(colours).sort(); }
function colourOf(name) { return colours[name] || "#ffffff"; }

async function loadLabels() {
  const saved = await api("/api/labels");
  labels = saved.features;
  colours = saved.colours;
  drawLabels();
}

function drawLabels() {
  labelMarks.clearLayers();
  for (const f of labels) {
    const colour = colourOf(f.properties.label);
    const mark = f.geometry.type === "Point"
      ? L.circleMarker([f.geometry.coordinates[1], f.geometry.coordinates[0]], { radius: 5, color: "#fff", weight: 1,
                                                                                 fillColor: colour, fillOpacity: 1 })
      : L.polygon(f.geometry.coordinates[0].map(([lon, lat]) => [lat, lon]), { color: colour, weight: 2 });
    mark.bindTooltip(text(f.properties.label));
    mark.on("contextmenu", async (e) => {
      L.DomEvent.preventDefault(e.originalEvent);
      await api(`/api/labels/${f.id}`, { method: "DELETE" });
      await loadLabels();
    });
    mark.addTo(labelMarks);
  }
  $("class-names").replaceChildren(...classNames().map((n) => new Option(n)));
}

// One path for every label: a click, a polygon, or a class picked on a suggestion. True once saved.
async function addLabel(geometry, name = $("class-name").value) {
  try {
    await api("/api/labels", { method: "POST", body: { label: name, geometry, year: state.current.year } });
    await loadLabels();
    status(`${labels.length} labels`);
    return true;
  } catch (error) {
    status(error.message, true);
    return false;
  }
}

$("draw").addEventListener("click", () => {
  state.drawing = { corners: [], line: L.polyline([], { dashArray: "4" }).addTo(map) };
  status("click the polygon's corners, double-click to close it");
});

function drawCorner(latlng) {
  state.drawing.corners.push([latlng.lng, latlng.lat]);
  state.drawing.line.setLatLngs(state.drawing.corners.map(([lon, lat]) => [lat, lon]));
}

map.on("dblclick", () => {
  if (!state.drawing) return;
  const ring = state.drawing.corners;
  map.removeLayer(state.drawing.line);
  state.drawing = null;
  if (ring.length >= 3) addLabel({ type: "Polygon", coordinates: [[...ring, ring[0]]] });
});

$("train").addEventListener("click", async () => {
  const p = state.current;
  const started = performance.now();
  status("training...");
  try {
    const made = await api("/api/train", { method: "POST", body: { year: p.year, region: p.region, head: $("head").value } });
    replace("classes", tiles("classes", `?v=${made.version}`));
    $("legend").replaceChildren(...made.classes.map((c) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");  // the class name is a span too: only this one is a swatch
      swatch.className = "swatch";
      swatch.style.background = c.colour;
      item.append(swatch, text(`${c.name}: ${c.samples} labelled, ${(c.pixels / 100).toFixed(1)} ha`));
      return item;
    }));
    $("dl-classes").hidden = false;
    $("dl-classes").href = `/api/classes/${p.year}/${p.region}.tif`;
    $("suggest").disabled = false;
    await loadSuggestions(`class map of ${p.region} ${p.year} in ${Math.round(performance.now() - started)} ms; `);
  } catch (error) {
    status(error.message, true);
  }
});

// -- suggested labels ------------------------------------------------------------------------------
// After a train the server proposes the pixels worth labelling next; each is a ring on the map, and a
// click on one offers the classes (its likeliest first): one more click labels it like any other label.
async function loadSuggestions(prefix = "") {
  const p = state.current;
  const params = new URLSearchParams({ year: p.year, region: p.region, count: $("suggest-count").value });
  try {
    const answer = await api(`/api/suggestions?${params}`);
    drawSuggestions(answer.suggestions.features);
    status(`${prefix}${answer.suggestions.features.length} suggested pixels (of ${answer.candidates.toLocaleString()} ` +
           "scored): click one to label it");
  } catch (error) {
    status(prefix + error.message, true);
  }
}

function drawSuggestions(features) {
  suggestionMarks.clearLayers();
  for (const f of features) {
    const [lon, lat] = f.geometry.coordinates;
    const mark = L.circleMarker([lat, lon], { radius: 9, color: "#ffeb3b", weight: 3, dashArray: "4 3",
                                              fillOpacity: 0.05, bubblingMouseEvents: false, className: "suggested" });
    mark.bindTooltip(text(`suggested #${f.properties.rank}: ${f.properties.classes[0].name}?`));
    mark.bindPopup(() => suggestionPopup(f, mark));
    mark.addTo(suggestionMarks);
  }
}

function suggestionPopup(feature, mark) {
  const pr = feature.properties;
  const box = document.createElement("div");
  box.className = "suggestion";
  const likely = pr.classes.map((c) => `${c.name} ${Math.round(100 * c.probability)}%`).join(", ");
  const title = document.createElement("p");
  title.append(text(`uncertainty ${pr.uncertainty.toFixed(2)} (1: a tie): ${likely}`));
  box.append(title);
  for (const name of [...new Set([...pr.classes.map((c) => c.name), ...classNames()])]) {
    const button = document.createElement("button");
    button.textContent = name;
    button.style.borderLeftColor = colourOf(name);
    button.addEventListener("click", async () => {
      map.closePopup();
      if (await addLabel(feature.geometry, name)) {
        suggestionMarks.removeLayer(mark);
        status(`${labels.length} labels; ${suggestionMarks.getLayers().length} suggestions left (train again for more)`);
      }
    });
    box.append(button);
  }
  return box;
}

$("suggest").addEventListener("click", () => loadSuggestions());

// -- clicks ----------------------------------------------------------------------------------------
map.on("click", (e) => {
  const original = e.originalEvent;
  if (mode() === "label") {
    if (state.drawing) drawCorner(e.latlng);
    else addLabel({ type: "Point", coordinates: [e.latlng.lng, e.latlng.lat] });
  } else if (original.shiftKey) {
    addExample(state.positives, e.latlng, "#00c853");
  } else if (original.altKey) {
    addExample(state.negatives, e.latlng, "#ff1744");
  } else {
    search({ lon: e.latlng.lng, lat: e.latlng.lat });
  }
});

init().catch((error) => status(error.message, true));
