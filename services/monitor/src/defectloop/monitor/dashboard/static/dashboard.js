// The monitor's ops dashboard: plain JS over the monitor's own /v1 JSON API, charts by uPlot
// (vendored). window.dashboard holds what the page drew (points per chart, errors), so a browser
// test reads the page's state instead of parsing its HTML.
"use strict";

const state = { ready: false, site: null, sites: [], charts: {}, errors: [], denied: null };
window.dashboard = state;
const plots = {};
const COLORS = ["#1d6fd1", "#d33a2c", "#2e9e5b", "#e08a00", "#7d4cc2", "#0097a7", "#6b7785"];

window.addEventListener("error", (e) => state.errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => state.errors.push(String(e.reason)));

// A viewer token (defectloop viewer-token) comes in the URL fragment, #token=dlv_...: the
// fragment never reaches a server or a log. It is kept for this tab (sessionStorage) and taken
// out of the address bar; every /v1 request carries it, and the monitor answers only the sites
// it may see (403 forbidden_site for the others).
const TOKEN_KEY = "defectloop.viewer_token";
(function takeToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  const rest = location.hash.replace(/(^#|&)token=[^&]+/, "$1").replace(/^#&/, "#");
  history.replaceState(null, "", location.pathname + location.search + (rest === "#" ? "" : rest));
})();

class ApiError extends Error {
  constructor(path, status, body) {
    super(`${path}: HTTP ${status}` + (body && body.error ? ` ${body.error}` : ""));
    this.status = status;
    this.body = body || {};
  }
}

async function getJSON(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(path, { headers });
  if (!resp.ok) {
    let body = null;
    try { body = await resp.json(); } catch (_) { /* not the JSON error body */ }
    throw new ApiError(path, resp.status, body);
  }
  return resp.json();
}

function showNotice(text) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.hidden = !text;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.setAttribute("style", v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");
const secs = (iso) => Date.parse(iso) / 1000;

// -- overview --

function ciBar(fig) {
  const bar = el("div", { class: "ci", title: "recall with its Wilson 95% interval" });
  if (fig && fig.value !== null) {
    const lo = 100 * fig.ci_low, hi = 100 * fig.ci_high;
    bar.append(el("div", { class: "band", style: `left:${lo}%;width:${Math.max(hi - lo, 0.5)}%` }));
    bar.append(el("div", { class: "point", style: `left:calc(${100 * fig.value}% - 1px)` }));
  }
  return bar;
}

function renderOverview(sites, chosen) {
  const box = document.getElementById("overview");
  box.replaceChildren();
  if (!sites.length) box.append(el("div", { class: "empty" }, "no site has sent data yet"));
  for (const s of sites) {
    const recall = s.headline ? s.headline.recall : null;
    const champion = s.models.champion ? s.models.champion.model_version : "no champion";
    const card = el(
      "div",
      {
        class: `card state-${s.state}` + (s.site_id === chosen ? " selected" : ""),
        "data-site": s.site_id,
        onclick: () => { location.hash = "site=" + encodeURIComponent(s.site_id); },
      },
      el("div", { class: "name" }, s.site_id, " ", el("span", { class: "muted" }, s.state)),
      el("div", {}, "recall ", pct(recall && recall.value),
        el("span", { class: "muted" }, recall && recall.value !== null
          ? ` [${pct(recall.ci_low)}, ${pct(recall.ci_high)}] n=${recall.n}` : "")),
      ciBar(recall),
      el("div", { class: "muted" }, `${champion} · ${s.open_incidents.length} open incident(s)`),
    );
    box.append(card);
  }
}

// -- charts --

// uPlot wants one shared x array: merge every series' times, null where a series has no point.
function aligned(seriesMap) {
  const names = Object.keys(seriesMap).sort();
  const xs = [...new Set(names.flatMap((n) => seriesMap[n].map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = names.map((n) => {
    const col = new Array(xs.length).fill(null);
    for (const [x, y] of seriesMap[n]) col[index.get(x)] = y;
    return col;
  });
  return { names, data: [xs, ...ys] };
}

// Vertical marks (deployments, incidents) drawn over the plot area.
function marksPlugin(marks) {
  return {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        for (const m of marks) {
          const x = u.valToPos(m.at, "x", true);
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.strokeStyle = m.color;
          ctx.setLineDash(m.dash || []);
          ctx.lineWidth = 1.5;
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.fillStyle = m.color;
          ctx.font = "11px system-ui";
          ctx.fillText(m.label, x + 3, u.bbox.top + 12);
        }
        ctx.restore();
      }],
    },
  };
}

function drawChart(name, target, seriesMap, opts = {}) {
  const box = document.getElementById(target);
  if (plots[name]) { plots[name].destroy(); delete plots[name]; }
  box.replaceChildren();
  const { names, data } = aligned(seriesMap);
  const points = data.slice(1).reduce((n, col) => n + col.filter((v) => v !== null).length, 0);
  state.charts[name] = { series: names.length, points, marks: (opts.marks || []).length };
  if (!points) {
    box.append(el("div", { class: "empty" }, opts.empty || "no evaluation yet"));
    return;
  }
  const width = Math.max(320, box.clientWidth || 500);
  // The x scale spans the data and the marks (a deployment precedes its first evaluation), and
  // at least a day either side of a single bar.
  const xs = data[0].concat((opts.marks || []).map((m) => m.at));
  const pad = opts.bars ? 86400 : 0;
  const xRange = [Math.min(...xs) - pad, Math.max(...xs) + pad];
  const series = [{}].concat(names.map((n, i) => ({
    label: n,
    stroke: COLORS[i % COLORS.length],
    fill: opts.bars ? COLORS[i % COLORS.length] + "99" : undefined,
    width: 1.5,
    spanGaps: true,
    points: { show: !opts.bars, size: 4 },
    paths: opts.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined,
  })));
  plots[name] = new uPlot({
    width,
    height: opts.height || 220,
    series,
    scales: {
      x: { time: opts.time !== false, range: () => (xRange[0] < xRange[1] ? xRange : [xRange[0] - 60, xRange[1] + 60]) },
      y: opts.y || {},
    },
    axes: [{}, { label: opts.yLabel || "" }],
    plugins: opts.marks ? [marksPlugin(opts.marks)] : [],
  }, data, box);
}

function seriesOf(series, pick) {
  const out = {};
  for (const [key, points] of Object.entries(series)) {
    const name = pick(key);
    if (!name) continue;
    out[name] = points
      .filter((p) => p.enough_data !== false && p.window_end)
      .map((p) => [secs(p.window_end), p.value]);
  }
  return out;
}

function marksOf(series) {
  const marks = series.deployments
    .filter((d) => d.role === "champion")
    .map((d) => ({ at: secs(d.occurred_at), color: "#2e9e5b", dash: [4, 3], label: d.model_version }));
  // Marked at data time (the window that decided), like the evaluations they sit on.
  for (const i of series.incidents) {
    marks.push({ at: secs(i.degraded.window_end), color: "#d33a2c", label: `${i.camera_id || i.metric} ▼` });
    if (i.closed_at) {
      const at = i.recovered ? i.recovered.window_end : i.closed_at;
      marks.push({ at: secs(at), color: "#6c8ebf", label: i.close_reason || "closed" });
    }
  }
  return marks;
}

// -- per site --

async function renderSite(siteId) {
  if (state.site !== siteId) state.charts = {}; // what is drawn is this site's only
  state.site = siteId;
  document.getElementById("site").hidden = false;
  document.getElementById("site-title").textContent = `Site ${siteId}`;
  for (const card of document.querySelectorAll(".card")) {
    card.classList.toggle("selected", card.dataset.site === siteId);
  }
  const base = `/v1/sites/${encodeURIComponent(siteId)}`;
  const [perf, quality, drift, latest, annotations, agreement, cards, incidents, models] =
    await Promise.all([
      getJSON(`${base}/series?kind=performance`),
      getJSON(`${base}/series?kind=data_quality`),
      getJSON(`${base}/series`),
      getJSON(`${base}/drift`),
      getJSON(`${base}/annotations`),
      getJSON(`${base}/agreement`),
      getJSON(`${base}/scorecards`),
      getJSON(`${base}/incidents`),
      getJSON(`${base}/models`),
    ]);
  if (state.site !== siteId) return; // another site was picked meanwhile

  // performance/<metric>/<version> -> "<metric> <version>"
  drawChart("performance", "chart-performance",
    seriesOf(perf.series, (k) => k.split("/").slice(1).join(" ")),
    { marks: marksOf(perf), yLabel: "measured", y: { range: [0, 1] }, height: 260 });
  drawChart("quality", "chart-quality",
    seriesOf(quality.series, (k) => k.split("/").pop()),
    { marks: marksOf(quality), yLabel: "effect (KS D)" });
  drawChart("drift", "chart-drift",
    seriesOf(drift.series, (k) => (/^(data_drift|prediction_drift)\//.test(k) ? k.split("/").slice(0, 2).join(" ") : null)),
    { marks: marksOf(drift), yLabel: "effect / estimate" });

  const cams = document.getElementById("cameras");
  cams.replaceChildren(...Object.entries(latest.cameras).map(([cam, s]) =>
    el("span", { class: "chip" + (s.breached ? " bad" : "") }, `${cam}: ${s.breached ? "departing" : "ok"}`)));

  // One bar per annotator (and skipped) side by side within each day: x offset per series.
  const groups = [...annotations.annotators, "skipped"];
  const step = (0.8 * 86400) / groups.length;
  const perAnnotator = {};
  groups.forEach((name, k) => {
    const dx = (k - (groups.length - 1) / 2) * step;
    perAnnotator[name] = annotations.days.map((d) => [
      secs(d.day + "T12:00:00Z") + dx,
      name === "skipped" ? d.skipped : d.completed[name] || 0,
    ]);
  });
  drawChart("annotations", "chart-annotations", annotations.days.length ? perAnnotator : {},
    { bars: true, yLabel: "labels per day", empty: "no annotation yet" });
  const t = annotations.totals;
  document.getElementById("annotation-totals").textContent =
    `total: ${t.completed || 0} completed, ${t.skipped || 0} skipped`;

  renderAgreement(agreement);
  renderScorecards(cards.scorecards);
  renderIncidents(incidents.incidents);
  renderModels(models);
}

function kappaBar(label, k) {
  const v = k === null || k === undefined ? null : k;
  return el("div", { class: "bar" },
    el("span", { style: "width:9em" }, label),
    el("div", { class: "fill", style: `width:${v === null ? 0 : Math.max(0, v) * 200}px` }),
    el("span", {}, v === null ? "–" : v.toFixed(2)));
}

function renderAgreement(a) {
  const box = document.getElementById("agreement");
  const rows = [kappaBar("site", a.kappa ?? null)];
  for (const p of a.by_pair || []) rows.push(kappaBar(p.annotators.join(" / "), p.kappa ?? null));
  box.replaceChildren(...rows, el("div", { class: "muted" }, a.use || ""));
}

function renderScorecards(cards) {
  const box = document.getElementById("scorecards");
  if (!cards.length) { box.replaceChildren(el("div", { class: "empty" }, "no shadow or challenger")); return; }
  box.replaceChildren(el("table", {},
    el("tr", {}, el("th", {}, "candidate"), el("th", {}, "vs champion"), el("th", {}, "pairs"), el("th", {}, "verdict")),
    ...cards.map((c) => el("tr", {},
      el("td", {}, `${c.candidate_version} (${c.role})`), el("td", {}, c.champion_version),
      el("td", {}, c.n_pairs), el("td", {}, c.verdict)))));
}

function renderIncidents(list) {
  const box = document.getElementById("incidents");
  if (!list.length) { box.replaceChildren(el("div", { class: "empty" }, "no incident")); return; }
  box.replaceChildren(el("table", {},
    el("tr", {}, el("th", {}, "opened"), el("th", {}, "kind"), el("th", {}, "metric"), el("th", {}, "camera / model"), el("th", {}, "state")),
    ...list.map((i) => el("tr", {},
      el("td", {}, i.opened_at.replace("T", " ").slice(0, 19)), el("td", {}, i.kind), el("td", {}, i.metric),
      el("td", {}, i.camera_id || i.model_version || ""), el("td", {}, i.open ? "open" : `closed (${i.close_reason})`)))));
}

function renderModels(m) {
  const box = document.getElementById("models");
  if (!m.deployments.length) { box.replaceChildren(el("div", { class: "empty" }, "no deployment")); return; }
  box.replaceChildren(el("table", {},
    el("tr", {}, el("th", {}, "deployed"), el("th", {}, "version"), el("th", {}, "role"), el("th", {}, "baseline"), el("th", {}, "lineage")),
    ...m.deployments.slice().reverse().map((d) => el("tr", {},
      el("td", {}, d.occurred_at.replace("T", " ").slice(0, 19)), el("td", {}, d.model_version),
      el("td", {}, d.role + (d.active === false ? " (retired)" : "")),
      el("td", {}, Object.entries(m.baselines[d.model_version] || {}).map(([k, b]) => `${k} ${b.value.toFixed(3)}`).join(", ")),
      el("td", {}, el("code", {}, `defectloop models why ${d.model_version}`))))));
}

// -- refresh loop --

function siteFromHash() {
  const m = /site=([^&]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

async function refresh() {
  try {
    const { sites } = await getJSON("/v1/sites");
    state.sites = sites.map((s) => s.site_id);
    const worst = { degraded: 3, recovering: 2, pending: 1, ok: 0 };
    sites.sort((a, b) => (worst[b.state] - worst[a.state]) || a.site_id.localeCompare(b.site_id));
    const asked = siteFromHash();
    // A site outside the viewer's token is not asked for at all (it would be a 403): the page
    // says so and shows the sites the token may see.
    const chosen = asked && state.sites.includes(asked) ? asked
      : (state.sites.includes(state.site) ? state.site : (sites[0] && sites[0].site_id));
    showNotice(asked && !state.sites.includes(asked)
      ? `site ${asked} is not among the sites this page may show` : "");
    renderOverview(sites, chosen);
    if (chosen) await renderSite(chosen);
    else document.getElementById("site").hidden = true;
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    state.denied = null;
    state.ready = true;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      // An expected answer, not a page error: say what the monitor said, and how to fix it.
      state.denied = err.body;
      showNotice(`${err.body.detail || err.message}` + (err.body.hint ? ` (${err.body.hint})` : ""));
      state.ready = true;
      return;
    }
    state.errors.push(String(err));
    console.error("dashboard refresh failed:", err);
  }
}

window.addEventListener("hashchange", refresh);
refresh();
setInterval(refresh, 30000);
