// sensorcast dashboard: draws /api/* with plain SVG and redraws on server-sent events from /api/live.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = { network: null, selected: null, colourBy: "actual", updates: 0, timer: null, versions: {} };

// -- small helpers ---------------------------------------------------------------------------------
function el(parent, tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}
function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }
const pad2 = (n) => String(n).padStart(2, "0");
function hhmm(ms) { if (ms == null) return "–"; const d = new Date(ms); return `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}`; }
function stamp(ms) { if (ms == null) return "–"; const d = new Date(ms); return `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ${hhmm(ms)} UTC`; }
function fmt(x, digits = 2) { return x == null ? "–" : Number(x).toFixed(digits); }
async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}
function scale(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}
function extent(values) {
  const ok = values.filter((v) => v != null && isFinite(v));
  if (!ok.length) return [0, 1];
  let lo = Math.min(...ok), hi = Math.max(...ok);
  if (lo === hi) { lo -= 1; hi += 1; }
  return [lo, hi];
}
function linePath(points) {  // points: [x, y|null] -> path with gaps at nulls
  let d = "", pen = false;
  for (const [x, y] of points) {
    if (y == null || !isFinite(y)) { pen = false; continue; }
    d += `${pen ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    pen = true;
  }
  return d;
}
const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
const HEAT = ["#1a9850", "#91cf60", "#fee08b", "#fc8d59", "#d73027"];
function ramp(stops, t) {
  t = Math.max(0, Math.min(1, t)) * (stops.length - 1);
  const i = Math.min(Math.floor(t), stops.length - 2), f = t - i;
  const a = stops[i].match(/\w\w/g).map((h) => parseInt(h, 16));
  const b = stops[i + 1].match(/\w\w/g).map((h) => parseInt(h, 16));
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}
function axes(svg, x, y, box, xTicks, yTicks) {
  const g = el(svg, "g", { class: "axis" });
  const digits = Math.max(0, -Math.floor(Math.log10((yTicks[1] - yTicks[0]) || 1)));
  for (const v of yTicks) {
    el(g, "line", { x1: box.l, x2: box.r, y1: y(v), y2: y(v) });
    el(g, "text", { x: box.l - 4, y: y(v) + 4, "text-anchor": "end" }, fmt(v, digits));
  }
  // dated ticks: the first tick and each tick on a new UTC day carry the date, the others the time
  const step = xTicks.length > 1 ? xTicks[1] - xTicks[0] : 0;
  let day = null;
  for (const t of xTicks) {
    const d = new Date(t), date = `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
    const label = step >= 86400000 ? date : (date !== day ? `${date} ${hhmm(t)}` : hhmm(t));
    day = date;
    el(g, "text", { x: x(t), y: box.b + 14, "text-anchor": "middle", class: "tick-x" }, label);
  }
  el(g, "text", { x: box.l - 6, y: box.b + 14, "text-anchor": "end", class: "axis-unit" }, "UTC");
}
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
function ticks(lo, hi, n) {  // round numbers (1, 2 or 5 × 10^k apart) covering lo..hi
  const raw = (hi - lo) / n || 1, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw);
  const first = Math.floor(lo / step), last = Math.ceil(hi / step);
  const out = [];
  for (let i = first; i <= last; i++) out.push(i * step);
  return out;
}
function timeTicks(t0, t1, n) {  // whole minutes/hours (UTC) covering t0..t1
  const MIN = 60000, raw = (t1 - t0) / n;
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080].map((m) => m * MIN).find((v) => v >= raw) || raw;
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}
function empty(svg, text) { clear(svg); el(svg, "text", { x: 20, y: 40, class: "empty" }, text); }

// -- the map ---------------------------------------------------------------------------------------
function drawMap() {
  const svg = $("map"), net = state.network;
  clear(svg);
  const [W, H, P] = [520, 400, 24];
  const x = (v) => P + v * (W - 3.2 * P), y = (v) => H - P - v * (H - 2 * P);  // room for labels on the right
  const pos = net.sensors.map((s) => [x(s.x), y(s.y)]);
  const edges = el(svg, "g");
  for (const e of net.edges) {
    el(edges, "line", { class: "edge", x1: pos[e.source][0], y1: pos[e.source][1], x2: pos[e.target][0], y2: pos[e.target][1] });
  }
  const r = net.sensors.length > 80 ? 4 : 9;
  net.sensors.forEach((s, i) => {
    const c = el(svg, "circle", { class: "sensor", cx: pos[i][0], cy: pos[i][1], r, fill: "#ccc", "data-sensor": s.id, id: `sensor-${s.id}` });
    el(c, "title", {}, s.id);
    c.addEventListener("click", () => select(s.id));
    if (net.sensors.length <= 40) el(svg, "text", { class: "label", x: pos[i][0] + r + 2, y: pos[i][1] - r }, s.id);
  });
  $("map-caption").textContent = `${net.sensors.length} sensors · ${net.coordinates ? "coordinates" : "force-directed layout"}`;
}

function colourMap(mapState) {
  const key = state.colourBy;
  const values = mapState.sensors.map((s) => s[key]);
  const [lo, hi] = extent(values);
  const stops = key === "error" ? HEAT : VIRIDIS;
  for (const s of mapState.sensors) {
    const c = $(`sensor-${s.id}`);
    if (!c) continue;
    const v = s[key];
    c.setAttribute("fill", v == null ? "#d0d4dc" : ramp(stops, (v - lo) / (hi - lo)));
    c.querySelector("title").textContent =
      `${s.id}\nactual ${fmt(s.actual)}${s.observed ? "" : " (not observed)"}\nnext-step forecast ${fmt(s.forecast)}\n1-step error ${fmt(s.error)}`;
  }
  const label = { actual: "value", forecast: "forecast", error: "|error|" }[key];
  $("map-legend").innerHTML = `${label} ${mapState.feature}: <span style="color:${ramp(stops, 0)}">■</span> ${fmt(lo, 1)} … <span style="color:${ramp(stops, 1)}">■</span> ${fmt(hi, 1)} · step ${hhmm(mapState.step_ts)}`;
}

// -- the selected sensor's forecast fan ------------------------------------------------------------
function drawFan(view) {
  const svg = $("fan");
  $("sensor-title").textContent = `Sensor ${view.sensor}`;
  $("fan-version").textContent = view.model_version || "–";
  $("fan-caption").textContent = `${view.feature}${view.unit ? " (" + view.unit + ")" : ""} · ${view.actuals.length} recent steps, forecasts issued at the last ${view.forecasts.length} steps`;
  if (!view.actuals.length && !view.forecasts.length) return empty(svg, "no data for this sensor yet");
  clear(svg);
  const box = { l: 44, r: 575, t: 10, b: 356 };
  const lines = view.forecasts.map((f) => f.values.map((v, h) => [f.step_ts + (h + 1) * view.step_ms, v]));
  const ts = view.actuals.map((a) => a.ts).concat(lines.flat().map((p) => p[0]));
  const vs = view.actuals.map((a) => a.value).concat(lines.flat().map((p) => p[1]));
  const [t0, t1] = [Math.min(...ts), Math.max(...ts)];
  const yTicks = ticks(...extent(vs), 5);
  const [v0, v1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const x = scale(t0, t1, box.l, box.r), y = scale(v0, v1, box.b, box.t);
  axes(svg, x, y, box, timeTicks(t0, t1, 6), yTicks);
  // the spread: min..max over the recent forecasts that target each step (how much successive forecasts
  // disagree; not a prediction interval: the models give no uncertainty yet)
  const byTarget = new Map();
  for (const line of lines) for (const [t, v] of line) if (v != null) byTarget.set(t, (byTarget.get(t) || []).concat(v));
  const band = [...byTarget.entries()].sort((a, b) => a[0] - b[0]);
  if (band.length > 1) {
    const up = band.map(([t, vals]) => `${x(t).toFixed(1)},${y(Math.max(...vals)).toFixed(1)}`);
    const down = band.map(([t, vals]) => `${x(t).toFixed(1)},${y(Math.min(...vals)).toFixed(1)}`).reverse();
    el(svg, "polygon", { class: "band", points: up.concat(down).join(" ") });
  }
  const actualAt = new Map(view.actuals.map((a) => [a.ts, a.value]));
  lines.forEach((line, k) => {
    const newest = k === lines.length - 1, f = view.forecasts[k];
    const start = actualAt.has(f.step_ts) ? [[f.step_ts, actualAt.get(f.step_ts)]] : [];
    const path = el(svg, "path", {
      class: `forecast${newest ? " latest" : ""}`, "data-step": f.step_ts,
      d: linePath(start.concat(line).map(([t, v]) => [x(t), v == null ? null : y(v)])),
      "stroke-opacity": newest ? 1 : 0.25 + (0.5 * (k + 1)) / lines.length,
    });
    el(path, "title", {}, `issued after ${stamp(f.step_ts)} by ${f.model_version}`);
  });
  el(svg, "path", { class: "actual", d: linePath(view.actuals.map((a) => [x(a.ts), a.value == null ? null : y(a.value)])) });
  for (const a of view.actuals) {
    if (a.value == null) continue;
    el(svg, "circle", { cx: x(a.ts), cy: y(a.value), r: 2.2, fill: a.observed ? "#1d2330" : "#fff", stroke: "#1d2330" });
  }
  if (view.forecasts.length) {
    const now = x(view.forecasts[view.forecasts.length - 1].step_ts);
    el(svg, "line", { class: "now", x1: now, x2: now, y1: box.t, y2: box.b });
  }
}

// -- online MAE over time, with lifecycle events ---------------------------------------------------
const EVENT_COLOURS = { promoted: "#16a34a", rollback: "#b91c1c", rejected: "#9333ea", retrain_started: "#d97706",
  retrain_failed: "#b91c1c", drift: "#e11d48", serving: "#64748b" };
function drawMae(online) {
  const svg = $("mae"), hist = online.history;
  state.versions = online.versions || {};
  const r = online.rolling;
  $("mae-caption").textContent = r && r.steps ? `rolling over ${r.steps} steps · ${r.model_version}` : "";
  if (!hist.length) { $("mae-legend").textContent = ""; return empty(svg, "no scored forecasts yet (actuals arrive one horizon after a forecast)"); }
  clear(svg);
  const box = { l: 44, r: 575, t: 16, b: 236 };
  const H = Math.max(...hist.map((p) => p.mae.length));
  const [t0, t1] = [hist[0].step_ts, hist[hist.length - 1].step_ts];
  const yTicks = ticks(...extent(hist.flatMap((p) => p.mae).concat([0])), 4);
  const x = scale(t0, t1 === t0 ? t0 + 1 : t1, box.l, box.r), y = scale(yTicks[0], yTicks[yTicks.length - 1], box.b, box.t);
  axes(svg, x, y, box, timeTicks(t0, t1, 6), yTicks);
  const legend = [];
  for (let h = 0; h < H; h++) {
    const colour = ramp(VIRIDIS, H > 1 ? h / (H - 1) : 0);
    const path = el(svg, "path", { class: "mae-line", fill: "none", stroke: colour, "stroke-width": 1.6, "data-horizon": h + 1,
      d: linePath(hist.map((p) => [x(p.step_ts), p.mae[h] == null ? null : y(p.mae[h])])) });
    el(path, "title", {}, `horizon ${h + 1}: MAE ${fmt(hist[hist.length - 1].mae[h])}`);
    if (H <= 12 || h % Math.ceil(H / 12) === 0 || h === H - 1) {
      legend.push(`<span><span class="key" style="background:${colour}"></span>h${h + 1} ${fmt(hist[hist.length - 1].mae[h])}</span>`);
    }
  }
  let lastX = -Infinity, row = 0;
  for (const e of online.events) {
    if (e.at_step_ts == null) continue;
    const ex = x(e.at_step_ts), colour = EVENT_COLOURS[e.type] || "#64748b";
    row = ex - lastX < 120 ? row + 1 : 0;  // labels of events close together go on the next line down
    lastX = ex;
    const line = el(svg, "line", { class: `event event-${e.type}`, x1: ex, x2: ex, y1: box.t, y2: box.b, stroke: colour });
    el(line, "title", {}, `${e.type} ${e.model_version} at ${stamp(e.ts)}`);
    const right = ex > box.r - 140;  // near the right edge the label goes left of its line
    el(svg, "text", { x: right ? ex - 3 : ex + 3, y: box.t + 8 + 11 * (row % 4), "text-anchor": right ? "end" : "start",
      style: `fill:${colour}` }, `${e.type} ${e.model_version}`);
  }
  $("mae-legend").innerHTML = legend.join(" ");
}

// -- health, models, events ------------------------------------------------------------------------
function drawHealth(h) {
  if (!h.available) { $("health-age").textContent = "no health published yet"; return; }
  const ledger = h.ledger || {};
  $("health-age").textContent = h.age_s == null ? "" : (h.age_s > 10 ? `STALE: updated ${fmt(h.age_s, 0)} s ago` : `updated ${fmt(h.age_s, 1)} s ago`);
  $("health-rate").textContent = fmt(h.readings_per_s, 1);
  $("health-watermark").textContent = stamp(h.watermark);
  $("health-sealed").textContent = stamp(h.last_sealed);
  $("health-steps").textContent = h.steps_forecast == null ? "–" : String(h.steps_forecast);
  $("health-lag").textContent = `${h.lag_total} (${Object.entries(h.lag).map(([p, n]) => `p${p}: ${n}`).join(", ") || "no partitions"})`;
  $("health-archive").textContent = h.unarchived_steps ? `DOWN: ${h.unarchived_steps} steps waiting, ${h.archive_failures} failed writes` : "writable";
  $("health-late").textContent = ledger.late ?? "–";
  $("health-dups").textContent = ledger.duplicates ?? "–";
  $("health-dead").textContent = `${ledger.dead_lettered ?? 0} of ${ledger.received ?? 0} received`;
  const body = $("dead-table").querySelector("tbody");
  const rows = Object.entries(h.dead_by_reason || {});
  body.innerHTML = rows.length ? "" : `<tr><td colspan="2" class="muted">none</td></tr>`;
  for (const [reason, n] of rows) {
    const tr = body.insertRow();
    tr.insertCell().textContent = reason;
    tr.insertCell().textContent = n;
  }
}

function gate(metrics) {  // the retraining gate's holdout MAE (challenger / champion / persistence), then numbers
  const parts = [], g = (metrics || {}).gate;
  if (g && g.mae) parts.push("holdout MAE " + Object.entries(g.mae).map(([k, v]) => `${k} ${fmt(v, 3)}`).join(" / "));
  for (const [k, v] of Object.entries(metrics || {})) if (typeof v === "number") parts.push(`${k} ${fmt(v, 3)}`);
  return parts.slice(0, 6).join(" · ");
}
function meanMae(version) {
  const s = state.versions[version];
  if (!s || !s.mae) return "–";
  const ok = s.mae.filter((v) => v != null);
  return ok.length ? fmt(ok.reduce((a, b) => a + b, 0) / ok.length, 3) : "–";
}
function drawModels(m) {
  $("models-message").textContent = m.message + (m.champion ? ` · champion ${m.champion}` : "");
  const body = $("models-table").querySelector("tbody");
  body.innerHTML = "";
  if (!m.configured || !m.versions.length) {
    body.innerHTML = `<tr><td colspan="8" class="muted">${m.message}</td></tr>`;
    return;
  }
  for (const v of m.versions) {
    const tr = body.insertRow();
    tr.className = v.role === "champion" ? "champion" : "";
    for (const text of [v.version, v.role, v.kind, v.parent || "–", stamp(v.created_ms), gate(v.metrics), meanMae(v.version), v.reason]) {
      tr.insertCell().textContent = text;
    }
  }
}
function drawEvents(events) {
  const list = $("events");
  list.innerHTML = "";
  for (const e of events.slice(-12).reverse()) {
    const li = document.createElement("li");
    const detail = Object.entries(e.detail || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    li.textContent = `${stamp(e.ts)} ${e.type} ${e.model_version} ${detail.length > 160 ? detail.slice(0, 160) + "…" : detail}`;
    li.title = detail;
    list.appendChild(li);
  }
  if (!events.length) list.innerHTML = `<li class="muted">no events yet</li>`;
}

// -- data flow -------------------------------------------------------------------------------------
function select(sensor) {
  state.selected = sensor;
  $("sensor-select").value = sensor;
  document.querySelectorAll("#map .sensor").forEach((c) => c.classList.toggle("selected", c.dataset.sensor === sensor));
  history.replaceState(null, "", `#${encodeURIComponent(sensor)}`);
  refreshSensor();
}
async function refreshSensor() {
  if (!state.selected) return;
  try { drawFan(await getJSON(`/api/sensors/${encodeURIComponent(state.selected)}?steps=36&fan=6`)); } catch (e) { console.warn(e); }
}
async function refresh() {
  try {
    const [mapState, online, models] = await Promise.all([getJSON("/api/map"), getJSON("/api/metrics"), getJSON("/api/models")]);
    colourMap(mapState);
    drawMae(online);
    drawModels(models);
    drawEvents(online.events);
    await refreshSensor();
  } catch (e) { console.warn(e); }
}
function scheduleRefresh() {  // steps can arrive in bursts: redraw at most every 250 ms
  if (state.timer) return;
  state.timer = setTimeout(() => { state.timer = null; refresh(); }, 250);
}
function connect() {
  const source = new EventSource("/api/live");
  const status = $("live-status");
  source.addEventListener("hello", () => { status.textContent = "live"; status.className = "status live"; });
  source.addEventListener("step", (ev) => {
    const msg = JSON.parse(ev.data);
    state.updates += 1;
    $("updates").dataset.count = state.updates;
    $("updates").textContent = `${state.updates} live updates`;
    $("last-step").textContent = stamp(msg.step_ts);
    $("model-version").textContent = msg.model_version;
    scheduleRefresh();
  });
  source.addEventListener("health", (ev) => drawHealth(JSON.parse(ev.data)));
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status down"; };
}
async function main() {
  state.network = await getJSON("/api/network");
  $("net-name").textContent = `network ${state.network.name}`;
  const sel = $("sensor-select");
  for (const s of state.network.sensors) sel.add(new Option(s.id, s.id));
  sel.addEventListener("change", () => select(sel.value));
  $("colour-by").addEventListener("change", (e) => { state.colourBy = e.target.value; refresh(); });
  drawMap();
  const wanted = decodeURIComponent(location.hash.slice(1));
  select(state.network.sensors.some((s) => s.id === wanted) ? wanted : state.network.sensors[0].id);
  const latest = await getJSON("/api/latest");
  if (latest.meta.step_ts) { $("last-step").textContent = stamp(latest.meta.step_ts); $("model-version").textContent = latest.meta.model_version; }
  getJSON("/api/health").then(drawHealth);
  refresh();
  connect();
  setInterval(refresh, 15000);  // a fallback when no steps arrive (e.g. a stopped stream)
}
main();
