// Gateway enrolment: every gateway's state in every cluster; approve / revoke for admins.
// An action is MACed here with that cluster's operator key (HMAC-SHA256, WebCrypto) and
// relayed by the output service; the cluster checks the MAC against its own keys. The
// key stays in this page's memory: it is never sent, stored or shown again.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const hex = (buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const fromHex = (s) => new Uint8Array(s.match(/../g).map((h) => parseInt(h, 16)));
  const when = (ns) => (ns ? new Date(ns / 1e6).toLocaleTimeString() : "—");
  let view = { clusters: [], gateways: [] };
  let role = "viewer";

  function cliHint(c, action, gid) {
    return `on ${c.service_id}'s host: tecc-cluster admin --config <${c.service_id} config> ${action} ${gid}`;
  }

  function say(text, bad) {
    const out = $("enrolment-result");
    out.textContent = text;
    out.className = bad ? "summary bad" : "summary";
  }

  function keyInputs() {
    const box = $("operator-keys");
    if (role !== "admin") { box.hidden = true; return; }
    box.hidden = false;
    for (const c of view.clusters) {
      if ($(`opname-${c.party}`)) continue;
      const row = document.createElement("div");
      row.className = "controls";
      row.dataset.party = String(c.party);
      const label = document.createElement("span");
      label.textContent = `P${c.party} ${c.service_id} operator`;
      const name = document.createElement("input");
      name.id = `opname-${c.party}`; name.placeholder = "key name"; name.autocomplete = "off";
      name.setAttribute("aria-label", `${c.service_id} operator key name`);
      const key = document.createElement("input");
      key.id = `opkey-${c.party}`; key.type = "password"; key.placeholder = "teccop_…"; key.autocomplete = "off";
      key.setAttribute("aria-label", `${c.service_id} operator key`);
      row.append(label, name, key);
      box.appendChild(row);
    }
  }

  async function act(gid, c, action) {
    const rec = (view.gateways.find((g) => g.gateway_id === gid) || { clusters: {} }).clusters[String(c.party)] || {};
    const name = $(`opname-${c.party}`).value.trim();
    const keyText = $(`opkey-${c.party}`).value.trim();
    if (!name || !/^teccop_[0-9a-f]{64}$/.test(keyText)) {
      say(`${c.service_id}: enter one of its operator keys (name and teccop_… key), or ${cliHint(c, action, gid)}`, true);
      return;
    }
    const identity = rec.identity_key || "";
    const issued = Date.now();
    const nonce = hex(crypto.getRandomValues(new Uint8Array(16)));
    const statement = ["tecc-gateway-admin/v1", c.service_id, action, gid, identity, String(issued), nonce].join("\n");
    const key = await crypto.subtle.importKey("raw", fromHex(keyText.slice(7)), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const mac = hex(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(statement)));
    const r = await fetch(`api/v1/enrolment/${c.party}/${action}`, {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ gateway_id: gid, identity_key: identity, operator: name, issued_ms: issued, nonce, mac }),
    });
    const body = await r.json().catch(() => ({}));
    if (r.ok) say(`${c.service_id}: ${gid} is ${body.gateway.state} (${body.gateway.reason})`, false);
    else say(`${c.service_id} refused ${action} of ${gid} (HTTP ${r.status}): ${body.error || body.reason || "?"}`, true);
    await load();
  }

  function render() {
    const head = $("enrolment").querySelector("thead tr");
    head.replaceChildren();
    for (const t of ["gateway", ...view.clusters.map((c) => `P${c.party} ${c.service_id}`)]) {
      const th = document.createElement("th"); th.textContent = t; head.appendChild(th);
    }
    const body = $("enrolment").querySelector("tbody");
    body.replaceChildren();
    for (const g of view.gateways) {
      const tr = document.createElement("tr");
      tr.dataset.gateway = g.gateway_id;
      const name = document.createElement("td"); name.textContent = g.gateway_id; tr.appendChild(name);
      for (const c of view.clusters) {
        const rec = g.clusters[String(c.party)];
        const td = document.createElement("td");
        td.dataset.party = String(c.party);
        td.className = "wrap";
        const st = document.createElement("span");
        st.className = `gstate st-${rec ? rec.state : "unknown"}`;
        st.textContent = rec ? rec.state : (c.reachable ? "unknown here" : "not answered");
        const detail = document.createElement("div");
        detail.className = "summary";
        detail.textContent = rec ? `${rec.reason || ""}${rec.last_quote_ns ? ` · quoted ${when(rec.last_quote_ns)}` : ""}` : "";
        td.append(st, detail);
        if (role === "admin" && rec) {
          const actions = [];
          if (rec.state === "pending" || rec.state === "suspended") actions.push("approve");
          if (rec.state !== "revoked") actions.push("revoke");
          for (const a of actions) {
            const b = document.createElement("button");
            b.type = "button"; b.textContent = a === "approve" ? "Approve" : "Revoke"; b.className = `act-${a}`;
            b.addEventListener("click", () => act(g.gateway_id, c, a).catch((e) => say(`${a}: ${e.message}`, true)));
            td.appendChild(b);
          }
        }
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    const down = view.clusters.filter((c) => !c.reachable);
    $("enrolment-clusters").textContent = down.length
      ? `not answering: ${down.map((c) => `${c.service_id} (${c.error})`).join("; ")}` : "";
  }

  async function load() {
    const r = await fetch("api/v1/enrolment", { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) return;
    view = await r.json();
    keyInputs();
    render();
    document.body.dataset.enrolment = String(Date.now());
  }

  fetch("auth/me", { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : { role: "viewer" }))
    .then((me) => { role = me.role; }).catch(() => {}).finally(() => {
      load().catch(() => {});
      setInterval(() => load().catch(() => {}), 2000);
    });
})();
