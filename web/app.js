/* web/app.js: the dashboard's logic.
 *
 * On load: GET /v1/status, /v1/history, /v1/events and /v1/policy fill the cards, the charts
 * (uPlot, bundled into evowidthd from npm), the event log and the policy form. Then it
 * follows GET /v1/stream (Server-Sent Events): "status" (about once a second) adds a point
 * to the series, "eval" a validation point, "adapt" an event (grow / shrink marks on the
 * charts' step axis, a fresh spectrum), "change" an accepted policy or training change;
 * "dropped" means this page missed events, so it reloads the history and the events.
 * Mutating requests carry the bearer token when the daemon has one (status.auth_required);
 * without it the page is read-only and says so. The token is kept in this browser's
 * localStorage only. Test hooks: each chart's data-points, the widths chart's data-changes. */
"use strict";

const MAX_POINTS = 4000; // per series in the page; thinned beyond (validation points stay)
const COLORS = ["#3467a8", "#c0392b", "#1a8f3c", "#a86a00", "#7a4fb0", "#138d90", "#b03a7a",
                "#5d6d7e", "#d35400", "#27ae60", "#8e44ad", "#2c3e50"];
const $ = (id) => document.getElementById(id);

const S = {
  status: null, policy: null, events: [], layers: [],
  // The series, one entry per point: step, then the values (null where unknown).
  x: [], loss: [], acc: [], vloss: [], vacc: [], lr: [], sps: [], params: [], widths: {},
  isEval: [],
  token: localStorage.getItem("evowidth-token") || "",
  canEdit: false, charts: {}, specLayer: null, dirty: false,
};

// ---- HTTP -------------------------------------------------------------------------------------

async function api(method, path, body) {
  const h = {};
  if (S.token) h["Authorization"] = "Bearer " + S.token;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const r = await fetch(path, {method, headers: h,
                               body: body === undefined ? undefined : JSON.stringify(body)});
  const text = await r.text();
  let j = null;
  try { j = text ? JSON.parse(text) : null; } catch (e) { /* not JSON */ }
  if (!r.ok) {
    const msg = j && j.error ? j.error.message : text || r.statusText;
    const err = new Error(`${method} ${path}: ${r.status} ${msg}`);
    err.status = r.status;
    throw err;
  }
  return j;
}

// ---- formatting --------------------------------------------------------------------------------

const fmt = (v, d = 4) => (v === null || v === undefined || !isFinite(v)) ? "–" : Number(v).toPrecision(d);
const pct = (v) => (v === null || v === undefined || !isFinite(v)) ? "–" : (100 * v).toFixed(2) + "%";
const int = (v) => (v === null || v === undefined || !isFinite(v)) ? "–" : Math.round(v).toLocaleString("en");
function dur(s) {
  if (!isFinite(s) || s <= 0) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
}
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

// ---- the series ----------------------------------------------------------------------------

function resetSeries() {
  S.x = []; S.loss = []; S.acc = []; S.vloss = []; S.vacc = []; S.lr = []; S.sps = [];
  S.params = []; S.widths = {}; S.isEval = [];
  for (const n of S.layers) S.widths[n] = [];
}

/* Appends one point; a point at the step of the newest one replaces what it knows. */
function addPoint(p) {
  const n = S.x.length;
  const w = p.widths || {};
  for (const name of Object.keys(w)) if (!(name in S.widths)) {
    S.layers.push(name);
    S.widths[name] = new Array(n).fill(null);
  }
  if (n && p.step < S.x[n - 1]) return;
  const same = n && p.step === S.x[n - 1];
  const i = same ? n - 1 : n;
  const set = (arr, v) => { if (!same || (v !== null && v !== undefined)) arr[i] = v ?? null; };
  if (!same) S.x.push(p.step);
  set(S.loss, p.loss); set(S.acc, p.accuracy); set(S.lr, p.lr);
  set(S.sps, p.samples_per_second); set(S.params, p.params);
  // Validation values only where a pass ended, so the charts show one dot per evaluation.
  const ev = !!p.eval;
  if (!same || ev) {
    S.vloss[i] = ev ? p.val_loss ?? null : null;
    S.vacc[i] = ev ? p.val_accuracy ?? null : null;
    S.isEval[i] = ev || (same && S.isEval[i]);
  }
  for (const name of S.layers) set(S.widths[name], w[name] ?? null);
  if (S.x.length > MAX_POINTS) thin();
  S.dirty = true;
}

/* Drops every other point that is not a validation point. */
function thin() {
  const keep = S.x.map((_, i) => S.isEval[i] || i % 2 === 0 || i === S.x.length - 1);
  const f = (a) => a.filter((_, i) => keep[i]);
  for (const k of ["x", "loss", "acc", "vloss", "vacc", "lr", "sps", "params", "isEval"]) S[k] = f(S[k]);
  for (const n of S.layers) S.widths[n] = f(S.widths[n]);
}

function widthChanges() {
  let c = 0;
  for (let i = 1; i < S.x.length; i++)
    if (S.layers.some((n) => S.widths[n][i] !== null && S.widths[n][i - 1] !== null &&
                             S.widths[n][i] !== S.widths[n][i - 1])) c++;
  return c;
}

// ---- charts --------------------------------------------------------------------------------

/* Grow / shrink marks: a vertical line at the step of every adaptation pass that kept one. */
function markers() {
  const marks = [];
  for (const e of S.events) {
    const kinds = new Set();
    for (const c of e.changes || []) {
      if (c.error || c.rolled_back) continue;
      if (c.action === "grow" || c.action === "grow_rank") kinds.add("grow");
      if (c.action === "shrink" || c.action === "shrink_rank") kinds.add("shrink");
    }
    for (const k of kinds) marks.push({step: e.step, kind: k});
  }
  return marks;
}

const markPlugin = {
  hooks: {
    draw: [(u) => {
      const ctx = u.ctx, {top, height} = u.bbox;
      ctx.save();
      ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
      for (const m of markers()) {
        const x = u.valToPos(m.step, "x", true);
        if (!isFinite(x) || x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.strokeStyle = m.kind === "grow" ? "#1a8f3ccc" : "#c0392bcc";
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
      }
      ctx.restore();
    }],
  },
};

function chartWidth(div) { return Math.max(300, div.clientWidth || div.parentElement.clientWidth - 20); }

function makeChart(id, series, opts = {}) {
  const div = $(id);
  const o = {
    width: chartWidth(div), height: 220, plugins: [markPlugin],
    scales: {x: {time: false}, ...(opts.scales || {})},
    axes: [{label: "step"}, {size: 60, ...(opts.yaxis || {})}],
    legend: {live: true},
    series: [{label: "step"}, ...series],
  };
  const u = new uPlot(o, [[], ...series.map(() => [])], div);
  S.charts[id] = u;
  return u;
}

function line(label, color, extra = {}) {
  return {label, stroke: color, width: 1.5, spanGaps: true, points: {show: false}, ...extra};
}
function dots(label, color) {
  return {label, stroke: color, width: 1.5, spanGaps: true, points: {show: true, size: 7, fill: color}};
}

function buildCharts() {
  for (const u of Object.values(S.charts)) u.destroy();
  S.charts = {};
  makeChart("chart-loss", [line("train loss", COLORS[0]), dots("validation loss", COLORS[1])]);
  makeChart("chart-acc", [line("train accuracy", COLORS[0]), dots("validation accuracy", COLORS[1])],
            {yaxis: {values: (u, v) => v.map((x) => (100 * x).toPrecision(3) + "%")}});
  makeChart("chart-widths", S.layers.map((n, i) =>
    line(n, COLORS[i % COLORS.length], {paths: uPlot.paths.stepped({align: 1})})));
  makeChart("chart-params", [line("parameters", COLORS[2], {paths: uPlot.paths.stepped({align: 1})})],
            {yaxis: {size: 80}});
  makeChart("chart-lr", [line("learning rate", COLORS[3])],
            {yaxis: {values: (u, v) => v.map((x) => x.toPrecision(3))}});
  makeChart("chart-sps", [line("samples/s", COLORS[4])], {yaxis: {size: 70}});
  const sdiv = $("chart-spectrum");
  S.charts["chart-spectrum"] = new uPlot({
    width: chartWidth(sdiv), height: 220,
    scales: {x: {time: false}, y: {distr: 3}},
    axes: [{label: "index", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]}, {size: 60}],
    series: [{label: "index"}, {label: "singular value", stroke: COLORS[0], width: 1.5,
                                 points: {show: true, size: 4, fill: COLORS[0]}}],
    plugins: [{hooks: {draw: [(u) => {
      const cut = u._cut;
      if (!cut) return;
      const x = u.valToPos(cut + 0.5, "x", true), {top, height} = u.bbox, ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = "#c0392b"; ctx.lineWidth = 2 * devicePixelRatio;
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
      ctx.fillStyle = "#c0392b"; ctx.font = `${12 * devicePixelRatio}px sans-serif`;
      ctx.fillText(` cut: ${cut} kept`, x, top + 14 * devicePixelRatio);
      ctx.restore();
    }]}}],
  }, [[], []], sdiv);
  S.dirty = true;
}

function redraw() {
  if (!S.dirty) return;
  S.dirty = false;
  const x = S.x;
  const upd = (id, ys) => {
    const u = S.charts[id];
    if (!u) return;
    u.setData([x, ...ys]);
    $(id).dataset.points = String(ys[0].filter((v) => v !== null && v !== undefined).length);
  };
  upd("chart-loss", [S.loss, S.vloss]);
  upd("chart-acc", [S.acc, S.vacc]);
  upd("chart-lr", [S.lr]);
  upd("chart-sps", [S.sps]);
  upd("chart-params", [S.params]);
  const wu = S.charts["chart-widths"];
  if (wu && wu.series.length - 1 !== S.layers.length) buildCharts();
  upd("chart-widths", S.layers.map((n) => S.widths[n]));
  $("chart-widths").dataset.changes = String(widthChanges());
}

window.addEventListener("resize", () => {
  for (const [id, u] of Object.entries(S.charts)) u.setSize({width: chartWidth($(id)), height: 220});
});

// ---- spectrum ------------------------------------------------------------------------------

/* The rank rule's cut for a layer: what the newest pass that looked at it kept. */
function lastCut(name) {
  for (let i = S.events.length - 1; i >= 0; i--)
    for (const c of S.events[i].changes || [])
      if (c.group === name && c.kept) return {kept: c.kept, step: S.events[i].step};
  return null;
}

async function loadSpectrum() {
  const name = $("spec-layer").value;
  if (!name) return;
  try {
    const j = await api("GET", `/v1/layers/${encodeURIComponent(name)}/spectrum`);
    const sv = j.singular_values || [];
    const u = S.charts["chart-spectrum"];
    const cut = lastCut(name);
    u._cut = cut ? cut.kept : 0;
    u.setData([sv.map((_, i) => i + 1), sv.map((v) => (v > 0 ? v : null))]);
    $("chart-spectrum").dataset.points = String(sv.length);
    $("spec-note").textContent = `${sv.length} singular values at step ${j.step}` +
      (cut ? `; the rank rule kept ${cut.kept} at the pass of step ${cut.step}` : "; no adaptation pass has looked at it yet");
  } catch (e) {
    $("spec-note").textContent = String(e.message);
  }
}

// ---- cards, events, policy -------------------------------------------------------------------

function showStatus(st) {
  S.status = st;
  $("state").textContent = st.state;
  $("state").className = "badge " + st.state;
  $("progress").textContent = `step ${int(st.step)} / ${int(st.total_steps)} · epoch ${st.epoch} / ${st.epochs}`;
  $("c-loss").textContent = fmt(st.loss);
  $("c-acc").textContent = pct(st.accuracy);
  $("c-vloss").textContent = fmt(st.val_loss);
  $("c-vacc").textContent = pct(st.val_accuracy);
  $("c-lr").textContent = fmt(st.lr, 3);
  $("c-sps").textContent = int(st.samples_per_second);
  $("c-params").textContent = `${int(st.params)}`;
  $("c-params").title = `initially ${int(st.initial_params)}`;
  $("c-macs").textContent = int(st.macs_per_sample);
  $("c-eta").textContent = st.state === "training" ? dur(st.eta_seconds) : "–";
  $("widths-now").textContent = "widths: " + Object.entries(st.widths || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
  if (st.policy && !S.policyEditing) showPolicy(st.policy);
  updateAuth();
}

function eventItem(kind, step, text) {
  return el("li", {class: kind}, el("span", {class: "kind"}, kind), ` step ${int(step)} · ${text}`);
}

function adaptText(e) {
  const moved = (e.changes || []).filter((c) => c.action !== "keep" && c.action !== "skip");
  const parts = moved.map((c) => `${c.group} ${c.from}→${c.to} ${c.action}` +
                                  (c.rolled_back ? " (rolled back)" : "") + (c.error ? " (failed)" : ""));
  const why = (e.changes || []).filter((c) => c.action === "keep" || c.action === "skip")
    .map((c) => `${c.group}: ${c.reason}`);
  return (parts.length ? parts.join(", ") : "no change") +
         ` · params ${int(e.params_before)}→${int(e.params_after)}` + (why.length ? ` · kept ${why.join(", ")}` : "");
}

function logEvent(kind, step, text) {
  const ol = $("events");
  ol.prepend(eventItem(kind, step, text));
  while (ol.children.length > 300) ol.lastChild.remove();
}

function showEvents() {
  const ol = $("events");
  ol.replaceChildren();
  for (const e of S.events.slice(-300)) ol.prepend(eventItem("adapt", e.step, adaptText(e)));
}

const CHOICES = {mode: ["rotate", "select", "factorize"], grow_mode: ["orthogonal", "gradmax", "mirror"]};

function showPolicy(p) {
  S.policy = p;
  const t = $("policy");
  t.replaceChildren();
  for (const [k, v] of Object.entries(p)) {
    let input;
    if (typeof v === "boolean") {
      input = el("input", {type: "checkbox", name: k});
      input.checked = v;
    } else if (typeof v === "number") {
      input = el("input", {type: "number", step: "any", name: k});
      input.value = String(v);
    } else if (CHOICES[k]) {
      input = el("select", {name: k}, ...CHOICES[k].map((c) => el("option", {value: c}, c)));
      if (!CHOICES[k].includes(v)) input.append(el("option", {value: v}, v));
      input.value = v;
    } else {
      input = el("input", {type: "text", name: k});
      input.value = String(v);
    }
    input.id = "policy-" + k;
    input.disabled = !S.canEdit;
    input.addEventListener("focus", () => { S.policyEditing = true; });
    t.append(el("tr", {}, el("td", {}, k), el("td", {}, input)));
  }
}

function updateAuth() {
  const st = S.status;
  if (!st) return;
  const need = !!st.auth_required;
  S.canEdit = !need || S.tokenOk === true;
  let note;
  if (!need) note = "This daemon has no token (loopback only): the controls below act on the run.";
  else if (S.tokenOk) note = "Token accepted: the controls below act on the run.";
  else if (S.token && S.tokenOk === false) note = "Read-only: the token was refused (401). Paste the one in daemon.token_file.";
  else note = "Read-only: changes need the daemon's token (the file named by daemon.token_file or --token-file). Paste it to enable the controls.";
  $("auth-note").textContent = note;
  $("auth-note").className = "note" + (need && !S.canEdit ? " error" : "");
  $("token-form").style.display = need ? "" : "none";
  for (const b of document.querySelectorAll("[data-action], #policy-apply, #policy input, #policy select"))
    b.disabled = !S.canEdit;
}

async function checkToken() {
  if (!S.token) { S.tokenOk = undefined; updateAuth(); return; }
  try {
    await api("POST", "/v1/auth");
    S.tokenOk = true;
  } catch (e) {
    S.tokenOk = e.status === 401 ? false : undefined;
  }
  updateAuth();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  S.token = $("token").value.trim();
  localStorage.setItem("evowidth-token", S.token);
  checkToken();
});

for (const b of document.querySelectorAll("[data-action]")) {
  b.addEventListener("click", async () => {
    const a = b.dataset.action;
    $("policy-msg").className = "note";
    $("policy-msg").textContent = `${a}…`;
    try {
      const j = await api("POST", "/v1/" + a);
      $("policy-msg").textContent = a === "adapt" ? `adaptation at step ${j.step}: ${j.surgeries_kept} kept`
        : a === "checkpoint" ? `checkpoint at step ${j.step}: ${j.path}` : `${a}: ${j.state}`;
      showStatus(await api("GET", "/v1/status"));
    } catch (e) {
      $("policy-msg").className = "note error";
      $("policy-msg").textContent = e.message;
    }
  });
}

$("policy-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = {};
  for (const [k, v] of Object.entries(S.policy || {})) {
    const input = $("policy-" + k);
    if (!input) continue;
    let nv = typeof v === "boolean" ? input.checked : typeof v === "number" ? Number(input.value) : input.value;
    if (typeof v === "number" && input.value.trim() === "") continue;
    if (nv !== v) body[k] = nv;
  }
  if (!Object.keys(body).length) {
    $("policy-msg").textContent = "nothing changed";
    return;
  }
  try {
    const p = await api("PATCH", "/v1/policy", body);
    S.policyEditing = false;
    showPolicy(p);
    $("policy-msg").className = "note";
    $("policy-msg").textContent = "policy changed: " + JSON.stringify(body);
  } catch (e) {
    $("policy-msg").className = "note error";
    $("policy-msg").textContent = e.message;
  }
});

$("spec-layer").addEventListener("change", loadSpectrum);

// ---- loading and the stream ------------------------------------------------------------------

async function loadAll() {
  const [st, hist, evs] = await Promise.all([api("GET", "/v1/status"), api("GET", "/v1/history?points=2000"),
                                             api("GET", "/v1/events")]);
  S.events = evs.events || [];
  S.layers = (hist.layers && hist.layers.length) ? hist.layers.slice() : Object.keys(st.widths || {});
  resetSeries();
  for (const p of hist.history || []) addPoint(p);
  const sel = $("spec-layer"), prev = sel.value;
  sel.replaceChildren(...S.layers.map((n) => el("option", {value: n}, n)));
  if (S.layers.includes(prev)) sel.value = prev;
  else if (S.layers.length) sel.value = S.layers[0];
  buildCharts();
  showEvents();
  showStatus(st);
  redraw();
  loadSpectrum();
}

function follow() {
  const es = new EventSource("/v1/stream");
  es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "conn live"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "conn"; };
  es.addEventListener("status", (m) => {
    const st = JSON.parse(m.data);
    showStatus(st);
    addPoint({step: st.step, loss: st.loss, accuracy: st.accuracy, lr: st.lr,
              samples_per_second: st.samples_per_second, params: st.params, widths: st.widths});
  });
  es.addEventListener("eval", (m) => {
    const e = JSON.parse(m.data);
    addPoint({step: e.step, eval: true, val_loss: e.val_loss, val_accuracy: e.val_accuracy,
              widths: S.status ? S.status.widths : {}});
    logEvent("eval", e.step, `validation loss ${fmt(e.val_loss)}, accuracy ${pct(e.val_accuracy)}`);
  });
  es.addEventListener("adapt", (m) => {
    const e = JSON.parse(m.data);
    S.events.push(e);
    if (e.widths_after) addPoint({step: e.step, params: e.params_after, widths: e.widths_after});
    logEvent("adapt", e.step, adaptText(e));
    S.dirty = true;
    loadSpectrum();
  });
  es.addEventListener("change", (m) => {
    const c = JSON.parse(m.data);
    logEvent("change", c.step, `${c.route} ${JSON.stringify(c.change)}`);
  });
  es.addEventListener("dropped", (m) => {
    logEvent("change", S.status ? S.status.step : 0, `this page missed ${JSON.parse(m.data).dropped} events; reloading`);
    loadAll().catch(() => {});
  });
}

$("token").value = S.token;
loadAll().then(() => { checkToken(); follow(); }).catch((e) => {
  $("conn").textContent = "cannot load: " + e.message;
  follow();
});
setInterval(redraw, 500);
