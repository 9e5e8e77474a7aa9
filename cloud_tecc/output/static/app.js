// Dashboard of released results. Plain JS, no external code: the plant may be offline.
"use strict";
(() => {
  const POINTS = 600; // the server merges windows beyond this many per chart
  const state = {
    sensor: "", windows: [], alerts: [], units: {}, latestNs: 0, detector: "", eventsOk: false,
    rangeS: 900, custom: null, role: "viewer", inc: { gateway: "", sensor: "", detector: "" }, deliveryDenied: false,
  };
  const $ = (id) => document.getElementById(id);
  const fmtTime = (ns) => new Date(ns / 1e6).toLocaleTimeString();
  const fmtDate = (ns) => new Date(ns / 1e6).toLocaleString();
  const fmt = (v, d = 3) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
  const key = (s) => `${s.gateway}/${s.sensor}`;
  // The time range: a preset is anchored at the newest released window (replayed or delayed
  // data shows too); a custom range is what the user typed.
  function range() {
    if (state.custom) return state.custom;
    const until = state.latestNs ? state.latestNs / 1e9 + 3600 : Date.now() / 1000;
    const anchor = state.latestNs ? state.latestNs / 1e9 : Date.now() / 1000;
    return { since: anchor - state.rangeS, until };
  }
  const q = (params) => Object.entries(params).filter(([, v]) => v !== "" && v !== undefined)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store", credentials: "same-origin" });
    if (r.status === 401) { location.assign("/auth/signin"); throw new Error("signed out"); }
    if (!r.ok) throw Object.assign(new Error(`${path.split("?")[0]}: HTTP ${r.status}`), { status: r.status });
    return r.json();
  }
  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function fillTable(id, rows, render) {
    const body = $(id).querySelector("tbody");
    body.replaceChildren();
    for (const row of rows) {
      const tr = document.createElement("tr");
      render(tr, row);
      body.appendChild(tr);
    }
  }
  function addOptions(sel, values) {
    const have = new Set([...sel.options].map((o) => o.value));
    for (const v of values) {
      if (have.has(v)) continue;
      have.add(v);
      const o = document.createElement("option");
      o.value = o.textContent = v;
      sel.appendChild(o);
    }
  }

  async function loadMe() {
    const me = await getJSON("auth/me");
    state.role = me.role;
    $("whoami").textContent = `${me.subject} (${me.role})`;
  }

  async function loadClusters() {
    const clusters = await getJSON("api/v1/clusters");
    const box = $("clusters");
    box.replaceChildren();
    for (const c of clusters) {
      const card = document.createElement("div");
      card.className = "card";
      card.dataset.service = c.service_id;
      const title = document.createElement("div");
      title.innerHTML = "<strong></strong> — <span class='state'></span>";
      title.querySelector("strong").textContent = `P${c.party} ${c.service_id}`;
      const st = title.querySelector(".state");
      st.textContent = c.attested ? "verified" : "not verified";
      st.className = "state " + (c.attested ? "verified" : "refused");
      const m = document.createElement("div");
      m.innerHTML = "measurement <code></code>";
      m.querySelector("code").textContent = c.measurement || "—";
      const when = document.createElement("div");
      when.textContent = c.checked_ns ? `checked by the output service at ${fmtTime(c.checked_ns)}` : "not checked yet";
      const shards = document.createElement("div");
      shards.className = "shards";
      const all = c.shards || [];
      const released = all.filter((s) => s.last_epoch_ns !== null && s.last_epoch_ns !== undefined);
      shards.dataset.shards = released.map((s) => `${s.shard}:${s.last_epoch_ns}`).join(",");
      shards.textContent = released.length
        ? `shards: ${released.map((s) => `#${s.shard} released ${fmtTime(s.last_epoch_ns)}`).join(", ")}`
        : "shards: no results released since the output service started";
      const workers = workerTable(c.workers || [], all);
      card.classList.add("with-workers");
      const detail = document.createElement("div");
      detail.className = "summary";
      detail.textContent = c.detail || "";
      card.append(title, m, when, shards, workers, detail);
      box.appendChild(card);
    }
  }

  // One row per shard (its owner, standbys, lag) and one per process of the party
  // (workers, standbys, frontends); a long list scrolls inside the card.
  const sec = (v) => (v === null || v === undefined ? "—" : `${fmt(v, 1)} s`);
  const num = (v) => (v === null || v === undefined ? "—" : String(v));
  function workerTable(workers, shards) {
    const box = document.createElement("details");
    box.className = "workers";
    box.open = workers.length <= 12;
    const sum = document.createElement("summary");
    const up = workers.filter((w) => w.reachable).length;
    sum.textContent = `${workers.length} processes (${up} answering), ${shards.length} shards`;
    box.appendChild(sum);
    const wrap = document.createElement("div");
    wrap.className = "scroll";
    const t = document.createElement("table");
    t.className = "worker-rows";
    t.innerHTML = "<thead><tr><th>shard</th><th>worker</th><th>role</th><th>lease owner</th>"
      + "<th>lease age</th><th>pending parts</th><th>lag</th><th>readings waiting</th><th>epoch</th><th>behind</th></tr></thead><tbody></tbody>";
    const body = t.querySelector("tbody");
    for (const s of shards) {
      const tr = document.createElement("tr");
      tr.className = "shard-row";
      tr.dataset.shard = String(s.shard);
      tr.dataset.owner = s.owner || "";
      cell(tr, `#${s.shard}`); cell(tr, `${s.workers} worker${s.workers === 1 ? "" : "s"}, ${s.standbys} standby`); cell(tr, "shard");
      cell(tr, s.owner || "none", s.owner ? "" : "bad"); cell(tr, sec(s.lease_age_s));
      cell(tr, num(s.pending_parts)); cell(tr, sec(s.lag_s)); cell(tr, num(s.readings_waiting));
      cell(tr, s.watermark_ns ? fmtTime(s.watermark_ns) : "—"); cell(tr, num(s.epochs_behind), s.epochs_behind ? "bad" : "");
      body.appendChild(tr);
    }
    for (const w of workers) {
      const tr = document.createElement("tr");
      tr.className = "worker-row";
      tr.dataset.url = w.url;
      tr.dataset.role = w.role || "";
      tr.dataset.worker = w.worker_id || "";
      cell(tr, w.shard === null || w.shard === undefined ? "—" : `#${w.shard}`);
      const host = (() => { try { return new URL(w.url).host; } catch (e) { return w.url; } })();
      cell(tr, w.worker_id || (w.kind === "frontend" ? `frontend ${host}` : host)).title = w.url;
      if (!w.reachable) {
        cell(tr, "unreachable", "bad");
        cell(tr, w.detail || "").colSpan = 6;
      } else {
        cell(tr, w.role || w.kind, w.role === "owner" ? "verified" : "");
        cell(tr, w.kind === "frontend" ? (w.log_connected ? "log connected" : "log not connected") : (w.owner || "—"),
          w.kind === "frontend" && !w.log_connected ? "bad" : "");
        cell(tr, sec(w.lease_age_s)); cell(tr, num(w.pending_parts)); cell(tr, sec(w.lag_s));
        cell(tr, num(w.readings_waiting));
        cell(tr, w.watermark_ns ? fmtTime(w.watermark_ns) : "—");
      }
      cell(tr, num(w.epochs_behind), w.epochs_behind ? "bad" : "");
      body.appendChild(tr);
    }
    wrap.appendChild(t);
    box.appendChild(wrap);
    return box;
  }

  async function loadSensors() {
    const sensors = await getJSON("api/v1/sensors");
    for (const s of sensors) {
      state.latestNs = Math.max(state.latestNs, s.last_start_ns || 0);
      state.units[key(s)] = s.unit || "";
    }
    const sel = $("sensor");
    const have = new Set([...sel.options].map((o) => o.value));
    for (const s of sensors) {
      if (!have.has(key(s))) {
        const o = document.createElement("option");
        o.value = key(s);
        o.textContent = `${s.sensor} @ ${s.gateway}`;
        sel.appendChild(o);
      }
    }
    if (!state.sensor && sel.options.length) {
      state.sensor = sel.value = new URLSearchParams(location.search).get("sensor") || sel.options[0].value;
    }
    addOptions($("inc-gateway"), [...new Set(sensors.map((s) => s.gateway))]);
    addOptions($("inc-sensor"), [...new Set(sensors.map((s) => s.sensor))]);
  }

  function split(k) {
    const [gateway, ...rest] = k.split("/");
    return { gateway, sensor: rest.join("/") };
  }

  async function loadWindows() {
    if (!state.sensor) return;
    const { gateway, sensor } = split(state.sensor);
    const { since, until } = range();
    const rows = await getJSON(`api/v1/windows?${q({ sensor, gateway, since, until, points: POINTS })}`);
    state.windows = rows.filter((r) => r.gateway === gateway && r.sensor === sensor);
    fillTable("chart-data", state.windows, (tr, r) => {
      tr.dataset.start = String(r.start_ns);
      cell(tr, fmtDate(r.start_ns)); cell(tr, String(r.count)); cell(tr, fmt(r.mean)); cell(tr, fmt(r.std));
      cell(tr, fmt(r.min)); cell(tr, fmt(r.max));
    });
    draw();
  }

  async function loadAlerts() {
    const { since, until } = range();
    state.alerts = await getJSON(`api/v1/alerts?${q({ since, until })}`);
    addOptions($("detector"), state.alerts.map((a) => a.detector));
    addOptions($("inc-detector"), state.alerts.map((a) => a.detector));
    const shown = state.alerts.filter((a) => !state.detector || a.detector === state.detector).slice(-300).reverse();
    fillTable("alerts", shown, (tr, a) => {
      tr.dataset.sensor = a.sensor;
      tr.dataset.detector = a.detector;
      tr.dataset.ts = String(a.ts_ns);
      cell(tr, fmtTime(a.ts_ns)); cell(tr, a.gateway); cell(tr, a.sensor); cell(tr, a.detector, "bad");
    });
    draw();
  }

  async function acknowledge(id) {
    const r = await fetch(`api/v1/incidents/${id}/acknowledge`, { method: "POST", credentials: "same-origin" });
    if (!r.ok) { $("live").textContent = `error: acknowledge: HTTP ${r.status}`; return; }
    await loadIncidents();
  }

  async function drill(i) {
    const flags = await getJSON(`api/v1/incidents/${i.id}/flags?limit=1000`);
    $("drill").hidden = false;
    $("drill-h").textContent = `Flagged readings of incident ${i.id} (${i.sensor} @ ${i.gateway}, ${i.detector}): `
      + `${flags.length} kept of ${i.flags}`;
    fillTable("incident-flags", flags, (tr, a) => {
      tr.dataset.ts = String(a.ts_ns);
      cell(tr, fmtTime(a.ts_ns)); cell(tr, a.gateway); cell(tr, a.sensor); cell(tr, a.detector, "bad");
    });
  }

  async function loadIncidents() {
    const { since, until } = range();
    const rows = await getJSON(`api/v1/incidents?${q({ ...state.inc, since, until, limit: 200 })}`);
    addOptions($("inc-detector"), rows.map((i) => i.detector));
    fillTable("incidents", rows, (tr, i) => {
      tr.dataset.id = String(i.id);
      tr.dataset.state = i.state;
      cell(tr, i.state, i.state === "closed" ? "" : "bad"); cell(tr, i.gateway); cell(tr, i.sensor); cell(tr, i.detector);
      cell(tr, fmtTime(i.start_ns)); cell(tr, i.state === "closed" ? fmtTime(i.end_ns) : "ongoing");
      const n = cell(tr, "");
      const more = document.createElement("button");
      more.type = "button"; more.textContent = String(i.flags); more.className = "drill";
      more.title = "show the flagged readings";
      more.addEventListener("click", () => drill(i).catch((e) => { $("live").textContent = `error: ${e.message}`; }));
      n.appendChild(more);
      const w = i.worst_window;
      cell(tr, w ? `mean ${fmt(w.mean, 2)}, max ${fmt(w.max, 2)} (${i.worst_window_flags} flags)` : "—");
      const td = cell(tr, i.acknowledged_by ? `ack: ${i.acknowledged_by}` : "");
      if (!i.acknowledged_by && state.role !== "viewer") {
        const b = document.createElement("button");
        b.type = "button"; b.textContent = "Acknowledge"; b.className = "ack";
        b.addEventListener("click", () => acknowledge(i.id));
        td.appendChild(b);
      }
    });
  }

  async function loadFleet() {
    const { since, until } = range();
    const [fleet, windows] = await Promise.all([
      getJSON(`api/v1/fleet?${q({ since, until })}`), getJSON(`api/v1/windows?${q({ since, until })}`)]);
    const deviating = new Map();
    for (const w of windows) {
      if (w.deviates_from_fleet) {
        const k = `${w.start_ns}`;
        deviating.set(k, [...(deviating.get(k) || []), `${w.gateway}:${w.sensor}`]);
      }
    }
    fillTable("fleet", fleet.slice(-60).reverse(), (tr, f) => {
      tr.dataset.start = String(f.start_ns);
      tr.dataset.class = f.class;
      cell(tr, f.class); cell(tr, fmtTime(f.start_ns)); cell(tr, String(f.count));
      cell(tr, fmt(f.mean)); cell(tr, fmt(f.std));
      const d = deviating.get(`${f.start_ns}`) || [];
      cell(tr, d.length ? d.join(", ") : "none", d.length ? "bad wrap" : "");
    });
  }

  async function loadGateways() {
    let gws = [];
    try { gws = await getJSON("api/v1/gateways"); } catch (e) { gws = []; }
    fillTable("gateways", gws, (tr, g) => {
      cell(tr, g.gateway_id || "?");
      cell(tr, g.reachable === false ? g.status || "unreachable" : g.status || "ok", g.reachable === false || g.status !== "ok" ? "bad" : "");
      cell(tr, num(g.spool_depth));
      cell(tr, num(g.backlog));
      cell(tr, g.clusters ? `${g.clusters_attested}/${g.clusters}` : "—", g.clusters && g.clusters_attested < g.clusters ? "bad" : "");
    });
  }

  // Delivery status is for operators: a 403 says so once, and the page stops asking.
  async function loadDeliveries() {
    if (state.deliveryDenied) return;
    let stats;
    try { stats = await getJSON("api/v1/deliveries"); } catch (e) {
      if (e.status !== 403) throw e;
      state.deliveryDenied = true;
      $("delivery-note").textContent = "operator role needed to see delivery status";
      $("delivery-note").hidden = false;
      $("deliveries").hidden = true;
      $("delivery-section").hidden = false;
      return;
    }
    const rows = Object.entries(stats);
    $("delivery-section").hidden = rows.length === 0;
    fillTable("deliveries", rows, (tr, [target, s]) => {
      tr.dataset.target = target;
      const dead = s.dead_letters && s.dead_letters.length ? s.dead_letters[0] : null;
      cell(tr, target); cell(tr, String(s.pending ?? 0), s.pending ? "bad" : "");
      cell(tr, String(s.delivered ?? 0)); cell(tr, String(s.dead ?? 0), s.dead ? "bad" : "");
      const td = cell(tr, dead ? dead.last_error || "—" : "—", dead ? "wrap" : "");
      if (dead) td.title = `${dead.key} (${dead.transition}), ${dead.attempts} attempts, ${fmtDate(dead.updated_ns)}`;
    });
  }

  function draw() {
    const canvas = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 900, h = canvas.clientHeight || 300;
    canvas.width = w * dpr; canvas.height = h * dpr;
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const rows = state.windows.filter((r) => r.mean !== null && r.mean !== undefined);
    const css = getComputedStyle(document.documentElement);
    const color = (n) => css.getPropertyValue(n).trim();
    const pad = { l: 64, r: 12, t: 10, b: 34 };
    const unit = state.units[state.sensor] || "";
    canvas.dataset.points = String(rows.length);
    canvas.dataset.unit = unit;
    if (!rows.length) {
      g.fillStyle = color("--muted"); g.fillText("no released windows in this time range", pad.l, h / 2);
      $("chart-summary").textContent = "";
      canvas.dataset.alerts = "0";
      return;
    }
    const t0 = rows[0].start_ns, t1 = rows[rows.length - 1].start_ns + rows[rows.length - 1].window_ns;
    let lo = Infinity, hi = -Infinity;
    for (const r of rows) {
      lo = Math.min(lo, r.min ?? r.mean - (r.std || 0), r.mean - (r.std || 0));
      hi = Math.max(hi, r.max ?? r.mean + (r.std || 0), r.mean + (r.std || 0));
    }
    if (hi === lo) { hi += 1; lo -= 1; }
    const span = hi - lo; lo -= span * 0.05; hi += span * 0.05;
    const X = (t) => pad.l + ((t - t0) / Math.max(1, t1 - t0)) * (w - pad.l - pad.r);
    const Y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (h - pad.t - pad.b);
    const mid = (r) => r.start_ns + r.window_ns / 2;
    g.strokeStyle = color("--line"); g.fillStyle = color("--muted"); g.lineWidth = 1; g.font = "11px system-ui";
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4, y = Y(v);
      g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
      g.fillText(v.toFixed(2), 4, y + 4);
    }
    g.save(); g.translate(12, pad.t + (h - pad.t - pad.b) / 2); g.rotate(-Math.PI / 2);
    g.fillText(unit ? `value [${unit}]` : "value", -20, 0); g.restore();
    g.fillText(fmtTime(t0), pad.l, h - 18);
    g.fillText(fmtTime(t1), w - pad.r - 60, h - 18);
    g.fillText("time (local)", w / 2 - 30, h - 4);
    g.fillStyle = color("--band"); g.beginPath();
    rows.forEach((r, i) => { const p = [X(mid(r)), Y(r.mean + (r.std || 0))]; i ? g.lineTo(...p) : g.moveTo(...p); });
    [...rows].reverse().forEach((r) => g.lineTo(X(mid(r)), Y(r.mean - (r.std || 0))));
    g.closePath(); g.fill();
    g.setLineDash([4, 3]); g.strokeStyle = color("--minmax");
    for (const field of ["min", "max"]) {
      g.beginPath();
      rows.forEach((r, i) => { if (r[field] === null) return; const p = [X(mid(r)), Y(r[field])]; i ? g.lineTo(...p) : g.moveTo(...p); });
      g.stroke();
    }
    g.setLineDash([]); g.strokeStyle = color("--mean"); g.lineWidth = 2; g.beginPath();
    rows.forEach((r, i) => { const p = [X(mid(r)), Y(r.mean)]; i ? g.lineTo(...p) : g.moveTo(...p); });
    g.stroke();
    const { gateway, sensor } = split(state.sensor);
    const marks = state.alerts.filter((a) => a.sensor === sensor && a.gateway === gateway && a.ts_ns >= t0 && a.ts_ns <= t1
      && (!state.detector || a.detector === state.detector));
    g.fillStyle = color("--alert");
    for (const a of marks) {
      const r = rows.find((x) => a.ts_ns >= x.start_ns && a.ts_ns < x.start_ns + x.window_ns);
      const y = r ? Y(r.max ?? r.mean) - 8 : pad.t + 6;
      g.beginPath(); g.arc(X(a.ts_ns), y, 4, 0, 2 * Math.PI); g.fill();
    }
    canvas.dataset.alerts = String(marks.length);
    const last = rows[rows.length - 1];
    const u = unit ? ` ${unit}` : "";
    $("chart-summary").textContent =
      `${rows.length} points; last: mean ${fmt(last.mean)}${u}, std ${fmt(last.std)}${u}, min ${fmt(last.min)}${u}, max ${fmt(last.max)}${u} over ${last.count} readings; ${marks.length} flags shown`;
  }

  async function refresh() {
    try {
      await Promise.all([loadClusters(), loadSensors(), loadGateways(), loadDeliveries()]);
      await Promise.all([loadWindows(), loadAlerts(), loadFleet(), loadIncidents()]);
      const { since, until } = range();
      document.body.dataset.since = String(since);
      document.body.dataset.until = String(until);
      $("live").textContent = `${state.eventsOk ? "live" : "polling"} · updated ${new Date().toLocaleTimeString()}`;
      $("live").className = "";
    } catch (e) {
      $("live").textContent = `error: ${e.message}`;
      $("live").className = "bad";
    }
  }

  $("sensor").addEventListener("change", (e) => { state.sensor = e.target.value; loadWindows(); });
  $("detector").addEventListener("change", (e) => { state.detector = e.target.value; loadAlerts(); });
  // changing the chart's sensor or range is a refresh of everything that depends on it
  $("range").addEventListener("change", (e) => {
    const custom = e.target.value === "custom";
    $("custom-range").hidden = !custom;
    if (!custom) { state.custom = null; state.rangeS = Number(e.target.value); refresh(); }
  });
  $("range-apply").addEventListener("click", () => {
    const from = Date.parse($("range-from").value), to = Date.parse($("range-to").value);
    if (!(from < to)) { $("live").textContent = "error: the custom range needs from < to"; return; }
    state.custom = { since: from / 1000, until: to / 1000 };
    refresh();
  });
  for (const f of ["gateway", "sensor", "detector"]) {
    $(`inc-${f}`).addEventListener("change", (e) => { state.inc[f] = e.target.value; loadIncidents(); });
  }
  window.addEventListener("resize", draw);

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; refresh(); }, 200);
  }
  if (window.EventSource) {
    const es = new EventSource("api/v1/events");
    es.addEventListener("update", () => { state.eventsOk = true; schedule(); });
    es.onerror = () => { state.eventsOk = false; };
  }
  // Results arrive as events; attestation, gateway health and delivery change without one.
  setInterval(() => {
    if (!state.eventsOk) { refresh(); return; }
    Promise.all([loadClusters(), loadGateways(), loadDeliveries()]).catch((e) => {
      $("live").textContent = `error: ${e.message}`; $("live").className = "bad";
    });
  }, 5000);
  loadMe().catch(() => {}).finally(refresh);
})();
