// Dashboard of released results. Plain JS, no external code: the plant may be offline.
"use strict";
(() => {
  const HISTORY_S = 15 * 60;
  const state = { sensor: "", windows: [], alerts: [], latestNs: 0, detector: "", eventsOk: false, updates: 0 };
  // History is anchored at the newest released window, so replayed or delayed data shows too.
  const sinceS = () => (state.latestNs ? state.latestNs / 1e9 : Date.now() / 1000) - HISTORY_S;
  const $ = (id) => document.getElementById(id);
  const fmtTime = (ns) => new Date(ns / 1e6).toLocaleTimeString();
  const fmt = (v, d = 3) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
  const key = (s) => `${s.gateway}/${s.sensor}`;

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
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
      when.textContent = c.checked_ns
        ? `checked by the output service at ${fmtTime(c.checked_ns)}`
        : "not checked yet";
      const detail = document.createElement("div");
      detail.className = "summary";
      detail.textContent = c.detail || "";
      card.append(title, m, when, detail);
      box.appendChild(card);
    }
  }

  async function loadSensors() {
    const sensors = await getJSON("api/v1/sensors");
    for (const s of sensors) state.latestNs = Math.max(state.latestNs, s.last_start_ns || 0);
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
  }

  async function loadWindows() {
    if (!state.sensor) return;
    const [gateway, ...rest] = state.sensor.split("/");
    const sensor = rest.join("/");
    const since = sinceS();
    state.windows = await getJSON(
      `api/v1/windows?sensor=${encodeURIComponent(sensor)}&gateway=${encodeURIComponent(gateway)}&since=${since}`);
    draw();
  }

  async function loadAlerts() {
    const since = sinceS();
    state.alerts = await getJSON(`api/v1/alerts?since=${since}`);
    const dsel = $("detector");
    const known = new Set([...dsel.options].map((o) => o.value));
    for (const a of state.alerts) {
      if (!known.has(a.detector)) {
        known.add(a.detector);
        const o = document.createElement("option");
        o.value = o.textContent = a.detector;
        dsel.appendChild(o);
      }
    }
    const shown = state.alerts.filter((a) => !state.detector || a.detector === state.detector).slice(-300).reverse();
    fillTable("alerts", shown, (tr, a) => {
      tr.dataset.sensor = a.sensor;
      tr.dataset.detector = a.detector;
      cell(tr, fmtTime(a.ts_ns)); cell(tr, a.gateway); cell(tr, a.sensor); cell(tr, a.detector, "bad");
    });
    draw();
  }

  async function loadFleet() {
    const since = sinceS();
    const [fleet, windows] = await Promise.all([getJSON(`api/v1/fleet?since=${since}`), getJSON(`api/v1/windows?since=${since}`)]);
    const deviating = new Map();
    for (const w of windows) {
      if (w.deviates_from_fleet) {
        const k = `${w.start_ns}`;
        deviating.set(k, [...(deviating.get(k) || []), `${w.gateway}:${w.sensor}`]);
      }
    }
    fillTable("fleet", fleet.slice(-60).reverse(), (tr, f) => {
      cell(tr, f.class); cell(tr, fmtTime(f.start_ns)); cell(tr, String(f.count));
      cell(tr, fmt(f.mean)); cell(tr, fmt(f.std));
      const d = deviating.get(`${f.start_ns}`) || [];
      cell(tr, d.length ? d.join(", ") : "none", d.length ? "bad" : "");
    });
  }

  async function loadGateways() {
    let gws = [];
    try { gws = await getJSON("api/v1/gateways"); } catch (e) { gws = []; }
    fillTable("gateways", gws, (tr, g) => {
      cell(tr, g.gateway_id || g.gateway || "?");
      cell(tr, g.reachable === false ? "unreachable" : (g.status || "ok"), g.reachable === false ? "bad" : "");
      cell(tr, String(g.spool_depth ?? "—"));
      cell(tr, g.spool_oldest_age_s === undefined || g.spool_oldest_age_s === null ? "—" : `${fmt(g.spool_oldest_age_s, 1)} s`);
      const rej = g.rejected || {};
      cell(tr, Object.keys(rej).length ? Object.entries(rej).map(([k, v]) => `${k}: ${v}`).join(", ") : "none");
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
    const pad = { l: 56, r: 12, t: 10, b: 24 };
    if (!rows.length) {
      g.fillStyle = color("--muted"); g.fillText("waiting for released windows…", pad.l, h / 2);
      $("chart-summary").textContent = "";
      canvas.dataset.points = "0";
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
    g.fillText(fmtTime(t0), pad.l, h - 6);
    g.fillText(fmtTime(t1), w - pad.r - 60, h - 6);
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
    const [gateway, ...rest] = state.sensor.split("/");
    const sensor = rest.join("/");
    const marks = state.alerts.filter((a) => a.sensor === sensor && a.gateway === gateway && a.ts_ns >= t0 && a.ts_ns <= t1);
    g.fillStyle = color("--alert");
    for (const a of marks) {
      const r = rows.find((q) => a.ts_ns >= q.start_ns && a.ts_ns < q.start_ns + q.window_ns);
      const y = r ? Y(r.max ?? r.mean) - 8 : pad.t + 6;
      g.beginPath(); g.arc(X(a.ts_ns), y, 4, 0, 2 * Math.PI); g.fill();
    }
    canvas.dataset.points = String(rows.length);
    canvas.dataset.alerts = String(marks.length);
    const last = rows[rows.length - 1];
    $("chart-summary").textContent =
      `${rows.length} windows; last: mean ${fmt(last.mean)}, std ${fmt(last.std)}, min ${fmt(last.min)}, max ${fmt(last.max)} over ${last.count} readings; ${marks.length} alerts shown`;
  }

  async function refresh() {
    try {
      await Promise.all([loadClusters(), loadSensors(), loadGateways()]);
      await Promise.all([loadWindows(), loadAlerts(), loadFleet()]);
      state.updates += 1;
      $("live").textContent = `${state.eventsOk ? "live" : "polling"} · updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      $("live").textContent = `error: ${e.message}`;
    }
  }

  $("sensor").addEventListener("change", (e) => { state.sensor = e.target.value; loadWindows(); });
  $("detector").addEventListener("change", (e) => { state.detector = e.target.value; loadAlerts(); });
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
  setInterval(() => { if (!state.eventsOk) refresh(); }, 5000);
  refresh();
})();
