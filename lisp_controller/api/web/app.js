// The status page: polls the REST API and renders bridges, endpoints and
// the map-cache. Plain JS, no build step, no third-party code.
//
// Speed with a million mappings: the page asks the controller for one page
// of the map-cache, filtered and sorted there (GET /v1/mappings with limit,
// offset, sort, order and q), with counters for those rows only; the
// browser never holds more than a page. A page is turned into HTML in one
// innerHTML write, skipped when nothing changed. Clicks are handled by one
// delegated listener per table, never per row.
"use strict";

(() => {
  const POLL_MS = 2000;          // between the end of one poll and the next
  const TIMEOUT_MS = 5000;       // a read taking longer means "not answering"
  const TOKEN_KEY = "lisp-controller-token";  // sessionStorage: this tab only
  const ARM_MS = 4000;           // a delete button waits this long for its confirmation

  const $ = (id) => document.getElementById(id);
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
  // A port or bridge name: cut with an ellipsis where it does not fit, the
  // whole name in the tooltip. Names have at most 15 bytes (IFNAMSIZ - 1),
  // but a store written by an earlier version may hold longer ones: those
  // are "long", and a table cell wraps them anywhere instead of widening.
  const nameHtml = (v) => `<span class="name${String(v).length > 15 ? " long" : ""}" title="${esc(v)}">${esc(v)}</span>`;
  const num = new Intl.NumberFormat("en-US");

  const state = {
    datapaths: null, conflicts: [], endpoints: [], rows: [], total: 0, inMapCache: 0, countersAt: null,
    sites: [], lisp: null, listed: null, instances: null,
    lastOk: null, failingSince: null, lastError: "",
    sort: { key: "iid", dir: 1 }, query: "", page: 0, pageSize: 100,
    armed: null, armTimer: null, seen: null, fresh: new Set(), downSince: new Map(),
    html: { bridges: "", rows: "", summary: "", sites: "", conflicts: "", lisp: "" },
  };

  // -- formatting ----------------------------------------------------------
  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n / 1024, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }
  const clock = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  function span(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return `${seconds} s`;
    const m = Math.floor(seconds / 60);
    if (m < 60) return `${m} min ${seconds % 60} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} days`;
  }
  const since = (d) => span((Date.now() - d.getTime()) / 1000);
  const millis = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);

  // -- the API -------------------------------------------------------------
  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token && method !== "GET") headers.Authorization = `Bearer ${token}`;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), method === "GET" ? TIMEOUT_MS : 120000);
    try {
      const resp = await fetch(path, {
        method, headers, cache: "no-store", signal: abort.signal,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      let data = null;
      try { data = await resp.json(); } catch { /* not JSON: data stays null */ }
      return { status: resp.status, ok: resp.ok, data };
    } finally {
      clearTimeout(timer);
    }
  }

  const why = (e) => (e.name === "AbortError" ? `no answer within ${TIMEOUT_MS / 1000} s` : "connection failed");

  // A change: on 401 the token is asked for (once per tab) and the call retried.
  async function write(method, path, body) {
    let r = await call(method, path, body);
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      renderToken();
      const token = await askToken(r.data?.error?.message);
      if (token) r = await call(method, path, body);
    }
    return r;
  }

  // -- polling -------------------------------------------------------------
  async function poll() {
    try {
      const [dp, ep, mp, lp, ins] = await Promise.all([
        call("GET", "/v1/datapaths"), call("GET", "/v1/endpoints"), listMappings(), call("GET", "/v1/lisp"),
        call("GET", "/v1/instances"),
      ]);
      const bad = [dp, ep, mp, lp, ins].find((r) => r && !r.ok);
      if (bad) throw new Error(`HTTP ${bad.status}${bad.data?.error ? `: ${bad.data.error.message}` : ""}`);
      state.datapaths = dp.data.datapaths;
      state.conflicts = dp.data.conflicts || [];
      state.endpoints = ep.data.endpoints;
      if (mp) setMappings(mp);
      state.sites = await sites();
      state.lisp = lp.data;
      state.instances = ins.data;
      state.lastOk = new Date();
      state.failingSince = null;
      render();
    } catch (e) {
      state.failingSince = state.failingSince || new Date();
      state.lastError = e instanceof TypeError || e.name === "AbortError" ? why(e) : e.message;
      renderLive();
    }
  }

  // Each site with its registrations (few sites; one request each).
  async function sites() {
    const list = await call("GET", "/v1/sites");
    if (!list.ok) throw new Error(`HTTP ${list.status}`);
    const full = await Promise.all(list.data.sites.map((s) => call("GET", `/v1/sites/${encodeURIComponent(s.name)}`)));
    return full.filter((r) => r.ok).map((r) => r.data.site);
  }

  let pollTimer = null;
  async function loop() {
    clearTimeout(pollTimer);
    await poll();
    pollTimer = setTimeout(loop, POLL_MS);
  }

  // -- the map-cache, a page at a time --------------------------------------
  // Table columns and the API's sort keys (GET /v1/mappings?sort=).
  const SORT_PARAM = { iid: "prefix", eid: "eid", rlocs: "rlocs", ttl: "ttl", action: "action", source: "source",
    packets: "packets", bytes: "bytes" };
  let listing = 0;  // the latest request for a page: older answers are dropped

  function listPath() {
    const p = new URLSearchParams({ counters: "true", limit: state.pageSize, offset: state.page * state.pageSize,
      sort: SORT_PARAM[state.sort.key], order: state.sort.dir > 0 ? "asc" : "desc" });
    const q = state.query.trim();
    if (q) p.set("q", q);
    return `/v1/mappings?${p}`;
  }

  // The page the table shows now, or null if a newer request was made meanwhile.
  async function listMappings() {
    const mine = ++listing, path = listPath();
    const r = await call("GET", path);
    if (mine !== listing) return null;
    r.path = path;
    return r;
  }

  // Asked for at once when the user sorts, searches or turns a page.
  async function refreshTable() {
    try {
      const r = await listMappings();
      if (!r) return;
      if (!r.ok) throw new Error(`HTTP ${r.status}${r.data?.error ? `: ${r.data.error.message}` : ""}`);
      setMappings(r);
      renderSummary();
      renderTable();
    } catch (e) {
      state.failingSince = state.failingSince || new Date();
      state.lastError = e instanceof TypeError || e.name === "AbortError" ? why(e) : e.message;
      renderLive();
    }
  }

  function setMappings(r) {
    const data = r.data;
    const pages = Math.max(1, Math.ceil(data.total / state.pageSize));
    if (state.page > pages - 1) {  // the map-cache shrank under this page: show the last one
      state.page = pages - 1;
      refreshTable();
    }
    // Rows new since the last poll of the same view are highlighted.
    const view = r.path.replace(/counters=true&/, "");
    const fresh = new Set(), seen = new Set();
    state.rows = data.mappings.map((m) => {
      const key = `${m.iid}|${m.eid}`;
      seen.add(key);
      if (state.seen && state.listed === view && !state.seen.has(key)) fresh.add(key);
      return {
        m, key,
        packets: m.counters ? m.counters.packets : -1,
        bytes: m.counters ? m.counters.bytes : -1,
      };
    });
    state.listed = view;
    state.seen = seen;
    state.fresh = fresh;
    state.total = data.total;
    state.inMapCache = data.in_map_cache;
    state.countersAt = data.counters_at ? new Date(data.counters_at) : null;
  }

  // -- rendering: header and banner ---------------------------------------
  function renderLive() {
    const live = $("live"), banner = $("offline");
    const offline = state.failingSince !== null;
    live.dataset.state = offline ? "offline" : state.lastOk ? "ok" : "loading";
    document.body.classList.toggle("stale", offline);
    if (offline) {
      const last = state.lastOk ? `last data from ${clock(state.lastOk)} (${since(state.lastOk)} ago)` : "no data yet";
      $("live-text").textContent = `Not answering · ${last}`;
      banner.hidden = false;
      banner.innerHTML = `<strong>The controller is not answering</strong> since ${clock(state.failingSince)}
        (${esc(state.lastError)}). Retrying every ${POLL_MS / 1000} s; what you see is ${esc(last)}.`;
    } else {
      banner.hidden = true;
      $("live-text").innerHTML = state.lastOk
        ? `Live · updated <time id="last-updated">${clock(state.lastOk)}</time> <span class="ago">(${since(state.lastOk)} ago)</span>`
        : "Connecting…";
    }
  }

  // Datapath ID claims refused or sessions displaced (docs/reliability.rst,
  // "OpenFlow admission"): a second switch with a bridge's ID, or one
  // speaking for another, is news an operator must not miss.
  const CONFLICT_TEXT = { duplicate: "refused: the ID is held by a live session",
    certificate: "refused: not the bridge's certificate", displaced: "took over from a silent session" };
  function renderConflicts() {
    const items = state.conflicts.map((c) => `<li data-dpid="${esc(c.datapath_id)}" data-reason="${esc(c.reason)}">
      <strong class="mono">${esc(c.datapath_id)}</strong>${c.bridge && c.bridge !== c.datapath_id ? ` (bridge ${esc(c.bridge)})` : ""}:
      <span class="mono">${esc(c.claimant)}</span> ${esc(CONFLICT_TEXT[c.reason] || c.reason)}${c.holder ? ` <span class="mono">${esc(c.holder)}</span>` : ""}
      · ${c.count}× · last ${clock(new Date(c.last))}</li>`).join("");
    const html = items ? `<strong>Datapath ID conflicts</strong><ul>${items}</ul>` : "";
    if (html === state.html.conflicts) return;
    const box = $("conflicts");
    box.innerHTML = state.html.conflicts = html;
    box.hidden = !html;
  }

  function renderSummary() {
    const dps = state.datapaths || [];
    const configured = dps.filter((d) => d.configured);
    const up = configured.filter((d) => d.connected).length;
    const troubled = dps.filter((d) => d.connected && (d.degraded || d.missing_ports.length)).length;
    const pills = [
      `<span class="pill ${up === configured.length ? "good" : "bad"}">${up}/${configured.length} bridges up</span>`,
      `<span class="pill">${num.format(state.inMapCache)} mappings</span>`,
      `<span class="pill">${num.format(state.endpoints.length)} endpoints</span>`,
    ];
    if (troubled) pills.push(`<span class="pill warn">${troubled} with problems</span>`);
    // Several controllers on one etcd store (docs/etcd.rst): the instances
    // alive, how many bridges each masters, and which one answers here.
    const ins = state.instances;
    if (ins && ins.shared) {
      pills.push(`<span class="pill ${ins.lease_problem ? "bad" : ""}" id="instances-pill" title="${esc(ins.lease_problem || "controller instances with a live etcd lease")}">${ins.instances.length} instance${ins.instances.length === 1 ? "" : "s"} alive</span>`);
      for (const i of ins.instances) {
        pills.push(`<span class="pill instance${i.self ? " self" : ""}" data-instance="${esc(i.instance)}" title="${i.self ? "this instance; " : ""}connected: ${i.connected.length} bridges">${esc(i.instance)}${i.self ? " (here)" : ""} · masters ${i.masters}</span>`);
      }
    }
    const html = pills.join("");
    if (html !== state.html.summary) $("summary").innerHTML = state.html.summary = html;
  }

  function renderToken() {
    const has = Boolean(sessionStorage.getItem(TOKEN_KEY));
    const b = $("token-button");
    b.textContent = has ? "Token set ✓" : "API token";
    b.classList.toggle("has-token", has);
  }

  // -- rendering: bridges --------------------------------------------------
  function bridgeState(d) {
    if (!d.connected) return "down";
    if (d.degraded) return "degraded";
    if (d.role === "slave") return "up";  // another instance programs it (docs/etcd.rst)
    if (d.missing_ports.length || d.flows_desired !== d.flows_installed || !d.configured) return "warning";
    if ((d.groups_desired ?? 0) !== (d.groups_installed ?? 0)) return "warning";
    return "up";
  }
  const STATE_TEXT = { up: "up", down: "down", degraded: "errors", warning: "check" };

  function bridgeCard(d, eps) {
    const st = bridgeState(d);
    if (st === "down") {
      if (!state.downSince.has(d.bridge)) state.downSince.set(d.bridge, new Date());
    } else {
      state.downSince.delete(d.bridge);
    }
    const fact = (label, value, cls = "") => `<div class="${cls}"><dt>${label}</dt><dd>${value}</dd></div>`;
    const facts = [];
    if (d.connected) {
      const t = new Date(d.connected_since);
      facts.push(fact("Connected", `since ${clock(t)} <span class="muted">(${since(t)})</span>`));
    } else {
      facts.push(fact("Connected", `<strong class="bad-text">no</strong> <span class="muted">· seen down at ${clock(state.downSince.get(d.bridge))}</span>`));
    }
    if (d.connected && d.role !== "equal") {
      // docs/etcd.rst: etcd names one master per bridge; this instance's role.
      const here = d.role === "master" ? "this instance" : `this instance: ${esc(d.role)}`;
      facts.push(fact("Master", d.master ? `<span class="mono master">${esc(d.master)}</span> <span class="muted">· ${here}${d.generation !== null ? ` · generation ${d.generation}` : ""}</span>`
        : `<strong class="warn-text">none yet</strong> <span class="muted">· ${here}</span>`));
    }
    facts.push(fact("RLOC", `<span class="mono">${esc(d.rloc ?? "—")}</span>`));
    facts.push(fact("Tunnel", `${esc(d.tunnel_profile ?? "—")} <span class="muted">on</span> ${esc(d.tunnel_port ?? "—")}`));
    if (d.tunnel_mtu) {
      // docs/mtu.rst: the largest inner packet, by the RLOC's family.
      facts.push(fact("Tunnel MTU", `${d.tunnel_mtu.ipv4_rloc} <span class="muted">(IPv4 RLOCs; ${d.tunnel_mtu.ipv6_rloc} IPv6) · underlay ${d.underlay_mtu}</span>`));
      const tb = d.too_big;
      const answered = tb.icmp + tb.fragmented;
      const parts = [`${answered} answered`];
      if (tb.dropped) parts.push(`${num.format(tb.dropped)} dropped (no DF)`);
      if (tb.over_rate) parts.push(`${num.format(tb.over_rate)} over the meter's rate`);
      facts.push(fact("Too big", tb.packets === null ? `<span class="muted">not read yet · ${parts.join(" · ")}</span>`
        : `<span class="${tb.packets ? "warn-text" : ""}">${num.format(tb.packets)} packets</span> <span class="muted">· ${parts.join(" · ")}</span>`));
    }
    if (d.connected && d.role === "slave") {
      facts.push(fact("Flows", `${num.format(d.flows_installed ?? 0)} of ours when this instance read it <span class="muted">· its master keeps them</span>`));
      facts.push(fact("From", `<span class="mono">${esc(d.address)}</span>`));
    } else if (d.connected) {
      const same = d.flows_desired === d.flows_installed;
      facts.push(fact("Flows", `<span class="${same ? "" : "warn-text"}">${num.format(d.flows_installed)} installed / ${num.format(d.flows_desired)} desired</span>`));
      if (d.groups_desired || d.groups_installed) {
        const sameGroups = d.groups_desired === d.groups_installed;
        facts.push(fact("RLOC sets", `<span class="${sameGroups ? "" : "warn-text"}" title="OpenFlow select groups, one per RLOC set">${num.format(d.groups_installed)} group${d.groups_installed === 1 ? "" : "s"} installed / ${num.format(d.groups_desired)} desired</span> <span class="muted">· ${num.format(d.group_mods_sent)} group-mods sent</span>`));
      }
      const when = d.last_reconcile ? `${clock(new Date(d.last_reconcile))} <span class="muted">· took ${millis(d.last_reconcile_ms)} · ${num.format(d.flow_mods_sent)} flow-mods sent</span>` : "not yet";
      facts.push(fact("Reconciled", when));
      facts.push(fact("From", `<span class="mono">${esc(d.address)}</span>`));
    }
    const epPorts = new Set(eps.map((e) => e.port));
    const ports = Object.entries(d.ports).map(([name, no]) => {
      const kind = name === d.tunnel_port ? "tunnel" : epPorts.has(name) ? "vm" : "other";
      return `<span class="port ${kind}">${nameHtml(name)}<b title="${kind === "tunnel" ? "tunnel port" : kind === "vm" ? "VM port" : "port"} number">${no}</b></span>`;
    });
    for (const name of d.missing_ports) ports.push(`<span class="port missing">${nameHtml(name)}<b title="configured, not on the bridge">missing</b></span>`);
    const epRows = eps.map((e) => `<tr><td class="mono ep-port">${nameHtml(e.port)}${d.ports[e.port] !== undefined ? ` <span class="muted">#${d.ports[e.port]}</span>` : ""}</td>
      <td class="mono">${esc(e.mac)}</td><td>${e.iid}</td><td class="mono">${e.eids.map(esc).join("<br>")}</td>
      <td><span class="src src-${esc(e.source)}">${esc(e.source)}</span></td></tr>`).join("");
    const endpoints = eps.length
      ? `<table class="eps"><thead><tr><th>Port</th><th>MAC</th><th>IID</th><th>EIDs</th><th>Source</th></tr></thead><tbody>${epRows}</tbody></table>`
      : `<p class="muted small">No local endpoints.</p>`;
    const errors = d.errors.length
      ? `<div class="errors"><h4>OpenFlow errors (${d.errors.length})</h4><ul>${d.errors.slice(-3).reverse().map((e) => `<li>${esc(e)}</li>`).join("")}</ul></div>`
      : "";
    const title = d.name || d.bridge;
    const subtitle = [d.datapath_id, d.bridge].filter((x, i, all) => x && x !== title && all.indexOf(x) === i);
    return `<article class="card bridge state-${st}" data-bridge="${esc(d.bridge)}" data-dpid="${esc(d.datapath_id ?? "")}" data-state="${st}">
      <header><h3 title="${esc(title)}">${esc(title)}</h3><span class="badge">${STATE_TEXT[st]}</span></header>
      <div class="dpid mono" title="datapath ID">${subtitle.map(esc).join(" · ") || "&nbsp;"}</div>
      <dl class="facts">${facts.join("")}</dl>
      ${ports.length ? `<div class="ports">${ports.join("")}</div>` : ""}
      ${errors}
      <h4>Local endpoints</h4>${endpoints}
    </article>`;
  }

  function renderBridges() {
    const byBridge = new Map();
    for (const e of state.endpoints) {
      if (!byBridge.has(e.bridge)) byBridge.set(e.bridge, []);
      byBridge.get(e.bridge).push(e);
    }
    const dps = state.datapaths;
    const html = dps.length ? dps.map((d) => bridgeCard(d, byBridge.get(d.bridge) || [])).join("")
      : `<p class="placeholder">No bridges configured.</p>`;
    if (html !== state.html.bridges) $("bridges").innerHTML = state.html.bridges = html;
  }

  // -- rendering: the Map-Server's sites -------------------------------------
  function siteCard(s) {
    const prefixes = s.prefixes.map((p) => `<span class="mono">${esc(p.iid)}:${esc(p.eid)}</span>${p.accept_more_specifics ? " <small class=\"muted\">and more specific</small>" : ""}`).join(", ");
    const keys = s.keys.map((k) => `key-id ${esc(k.key_id)} (${esc(k.alg)})`).join(", ");
    const rows = s.registrations.map((r) => `<tr data-eid="${esc(r.eid)}">
        <td data-label="EID" class="mono">${esc(r.iid)}:${esc(r.eid)}</td>
        <td data-label="RLOCs">${r.rlocs.length ? r.rlocs.map((x) => `<span class="rloc">${esc(x.address)}<small>${x.priority}/${x.weight}</small></span>`).join("") : `<span class="muted">${esc(r.action)}</span>`}</td>
        <td data-label="xTR" class="mono">${esc(r.xtr)}</td>
        <td data-label="Last registered">${esc(clock(new Date(r.last_registered)))}</td>
        <td data-label="Expires in">${span(r.expires_in)}</td>
        <td data-label="Notes">${r.proxy_reply ? "proxy reply" : ""}${r.hidden_by ? ` <span class="hidden-by">hidden by ${esc(r.hidden_by)}</span>` : ""}</td>
      </tr>`).join("");
    const table = s.registrations.length ? `<div class="table-wrap"><table class="regs">
        <thead><tr><th>EID</th><th>RLOCs</th><th>xTR</th><th>Last registered</th><th>Expires in</th><th>Notes</th></tr></thead>
        <tbody>${rows}</tbody></table></div>` : `<p class="muted">Nothing registered.</p>`;
    return `<article class="card site" data-site="${esc(s.name)}">
      <header><h3>${esc(s.name)}</h3><span class="badge">${num.format(s.registered)} of ${num.format(s.max_registrations)}</span></header>
      <dl class="facts"><dt>Prefixes</dt><dd>${prefixes}</dd><dt>Keys</dt><dd>${keys}</dd>
        <dt>Proxy reply</dt><dd>${s.proxy_reply ? "always" : "when the ETR asks"}</dd></dl>
      ${table}
    </article>`;
  }

  function renderSites() {
    $("sites-section").hidden = !state.sites.length;
    const html = state.sites.map(siteCard).join("");
    if (html !== state.html.sites) $("sites").innerHTML = state.html.sites = html;
  }

  // -- rendering: the LISP control plane ----------------------------------
  const REG_CLASS = { registered: "good", registering: "", failing: "bad", withdrawing: "warn" };

  function renderLisp() {
    const l = state.lisp;
    $("lisp-section").hidden = !l || !l.enabled;
    if (!l || !l.enabled) return;
    const parts = [`<p class="small">Control address <span class="mono">${esc(l.control_address)}</span>
      · register every ${l.register_interval} s · proxy-reply ${l.proxy_reply ? "on" : "off"}
      · want-map-notify ${l.want_map_notify ? "on" : "off"} · LISP-GPE advertised ${l.advertise_gpe ? "yes" : "no"}</p>`];
    if (l.map_servers.length) {
      const rows = (l.registrations || []).map((r) => `<tr data-eid="${esc(r.eid)}" data-ms="${esc(r.map_server)}" data-state="${esc(r.state)}">
        <td class="mono">${esc(r.map_server)}</td><td>${r.iid}</td><td class="mono">${esc(r.eid)}</td>
        <td class="mono">${esc(r.rloc)} <span class="muted">${esc(r.bridge)}</span></td>
        <td><span class="reg ${REG_CLASS[r.state] ?? ""}">${esc(r.state)}</span></td>
        <td>${r.registered_at ? clock(new Date(r.registered_at)) : '<span class="muted">never</span>'}</td>
        <td class="small">${r.error ? esc(r.error) : ""}</td></tr>`).join("");
      parts.push(`<h4>Registrations <span class="muted">(${(l.registrations || []).length} EID × map-server)</span></h4>` + (rows
        ? `<table class="eps regs"><thead><tr><th>Map-Server</th><th>IID</th><th>EID</th><th>RLOC</th><th>State</th><th>Last confirmed</th><th>Problem</th></tr></thead><tbody>${rows}</tbody></table>`
        : `<p class="muted small">No local EIDs to register.</p>`));
    }
    if (l.map_resolvers.length) {
      const r = l.resolver || {};
      const mrs = l.map_resolvers.map((a) => `<span class="mono">${esc(a)}</span>${a === r.preferred_map_resolver ? ' <span class="muted">(asked first)</span>' : ""}`).join(", ");
      const n = (k) => num.format(r[k] || 0);
      parts.push(`<h4>Resolution</h4><p class="small">Map-resolvers ${mrs}<br>
        ${n("requests_sent")} Map-Requests sent (${n("retries")} retries, ${n("failovers")} fail-overs, ${n("requests_failed")} unanswered),
        ${num.format(r.pending || 0)} waiting · ${n("replies_accepted")} Map-Replies learned, ${n("replies_negative")} negative,
        ${num.format((r.replies_unknown_nonce || 0) + (r.replies_bad_record || 0))} dropped · ${n("refreshes")} refreshes</p>`);
    }
    const dropped = Object.entries(l.received || {}).filter(([k]) => !k.endsWith("_accepted"));
    if (dropped.length) {
      parts.push(`<p class="small muted">Dropped control messages: ${dropped.map(([k, v]) => `${esc(k.replaceAll("_", " "))} ${num.format(v)}`).join(" · ")}</p>`);
    }
    const html = parts.join("");
    if (html !== state.html.lisp) $("lisp").innerHTML = state.html.lisp = html;
  }

  // -- rendering: the map-cache -------------------------------------------
  function rowHtml(r) {
    const m = r.m;
    const usable = m.rlocs.some((x) => x.priority < 255);
    // Traffic per RLOC: an RLOC set's select group counts per bucket, for
    // every mapping sharing the set; one RLOC carries the flow's traffic.
    const perRloc = new Map(((m.counters && m.counters.rlocs) || []).map((x) => [x.address, x]));
    const group = m.counters && m.counters.group;
    const rlocs = m.rlocs.length
      ? m.rlocs.map((x) => {
        const c = perRloc.get(x.address);
        const sent = c && c.packets != null
          ? `<small class="rloc-count" data-rloc-packets="${c.packets}">${num.format(c.packets)} pkts</small>` : "";
        const shared = group ? `, traffic counted by group ${group.group_id} for ${group.mappings} mapping${group.mappings === 1 ? "" : "s"}` : "";
        return `<span class="rloc${x.priority === 255 ? " unused" : ""}${c ? " used" : ""}" title="priority ${x.priority}, weight ${x.weight}${c && c.packets != null ? `: ${num.format(c.packets)} packets, ${fmtBytes(c.bytes)}${shared}` : ""}">${esc(x.address)}<small>${x.priority}/${x.weight}</small>${sent}</span>`;
      }).join("")
      : `<span class="muted">none</span>`;
    const ttl = m.ttl == null ? `<span class="muted">static</span>`
      : `${span(m.expires_in ?? 0)} <small class="muted">of ${m.ttl} min</small>`;
    const counted = m.counters != null;
    const armed = state.armed === r.key;
    const del = m.source === "api"
      ? `<button type="button" class="del${armed ? " armed" : ""}" data-del="${esc(r.key)}" aria-label="Delete ${esc(m.iid)}:${esc(m.eid)}">${armed ? "Confirm" : "Delete"}</button>` : "";
    return `<tr data-key="${esc(r.key)}"${state.fresh.has(r.key) ? ' class="fresh"' : ""}>
      <td data-label="IID" class="c-iid">${m.iid}</td>
      <td data-label="EID prefix" class="c-eid mono">${esc(m.eid)}</td>
      <td data-label="RLOCs" class="c-rlocs">${rlocs}</td>
      <td data-label="TTL left" class="c-ttl">${ttl}</td>
      <td data-label="Action" class="c-action"><span class="act act-${esc(m.action)}${usable ? " quiet" : ""}" title="${usable ? "used only when no RLOC is usable" : "negative entry"}">${esc(m.action)}</span></td>
      <td data-label="Source" class="c-source"><span class="src src-${esc(m.source)}">${esc(m.source)}</span></td>
      <td data-label="Packets" class="c-packets num" data-v="${r.packets}">${counted ? (r.packets ? num.format(r.packets) : '<span class="muted">0</span>') : "—"}</td>
      <td data-label="Bytes" class="c-bytes num" data-v="${r.bytes}"${counted ? ` title="${num.format(r.bytes)} bytes"` : ""}>${counted ? (r.bytes ? fmtBytes(r.bytes) : '<span class="muted">0 B</span>') : "—"}</td>
      <td class="c-del">${del}</td>
    </tr>`;
  }

  function renderTable() {
    const rows = state.rows, size = state.pageSize;
    const pages = Math.max(1, Math.ceil(state.total / size));
    const start = state.page * size;
    const html = rows.length ? rows.map(rowHtml).join("")
      : `<tr class="empty"><td colspan="9">${state.inMapCache ? `No mapping matches “${esc(state.query)}”.` : "The map-cache is empty."}</td></tr>`;
    if (html !== state.html.rows) $("rows").innerHTML = state.html.rows = html;
    const filtered = state.total !== state.inMapCache ? ` (filtered from ${num.format(state.inMapCache)})` : "";
    $("shown").textContent = rows.length
      ? `${num.format(start + 1)}–${num.format(start + rows.length)} of ${num.format(state.total)}${filtered}`
      : `0 of ${num.format(state.inMapCache)}`;
    $("page-info").textContent = `page ${num.format(state.page + 1)} of ${num.format(pages)}`;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    for (const th of document.querySelectorAll("#mappings th[data-sort]")) {
      if (th.dataset.sort === state.sort.key) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    $("counters-at").textContent = state.countersAt
      ? `counters read from the switches at ${clock(state.countersAt)}` : "counters: waiting for the switches";
  }

  function render() {
    renderLive();
    renderConflicts();
    renderSummary();
    renderBridges();
    renderSites();
    renderLisp();
    renderTable();
  }

  // -- the form, deleting, the token ---------------------------------------
  const FIELD_INPUT = { iid: "f-iid", eid: "f-eid", rlocs: "f-rlocs", ttl: "f-ttl", action: "f-action" };

  function showMessage(kind, html, field) {
    const box = $("form-message");
    box.hidden = false;
    box.className = `form-message ${kind}`;
    box.innerHTML = html;
    for (const id of Object.values(FIELD_INPUT)) $(id).removeAttribute("aria-invalid");
    const name = field && field.split(/[.[]/)[1];
    if (name && FIELD_INPUT[name]) $(FIELD_INPUT[name]).setAttribute("aria-invalid", "true");
  }

  function showError(r) {
    const err = r.data?.error || { status: r.status, field: null, message: "unexpected answer from the controller" };
    showMessage("error", `<strong>Error ${esc(err.status)}</strong>${err.field ? ` <code>${esc(err.field)}</code>` : ""} ${esc(err.message)}`, err.field);
  }

  function bridgesText(bridges) {
    const bad = bridges.some((b) => b.status !== "confirmed");
    const list = bridges.map((b) => `${esc(b.bridge)} <span class="st-${esc(b.status)}">${esc(b.status)}</span>`).join(", ");
    return { bad, text: bridges.length ? `bridges: ${list}` : "no bridges configured" };
  }

  // Numbers typed as digits are sent as numbers; anything else is sent as
  // typed, so the API (the one validator) names the field and the problem.
  const asNumber = (text) => (/^\d+$/.test(text) ? Number(text) : text);
  function rlocsFrom(text) {
    return text.split(/[\s;]+/).filter(Boolean).map((item) => {
      const [address, priority, weight] = item.split(",");
      const r = { address };
      if (priority !== undefined) r.priority = asNumber(priority);
      if (weight !== undefined) r.weight = asNumber(weight);
      return r;
    });
  }

  async function submitForm(ev) {
    ev.preventDefault();
    const body = {};
    const iid = $("f-iid").value.trim(), eid = $("f-eid").value.trim();
    const rlocs = $("f-rlocs").value.trim(), ttl = $("f-ttl").value.trim(), action = $("f-action").value;
    if (iid) body.iid = asNumber(iid);
    body.eid = eid;
    if (rlocs) body.rlocs = rlocsFrom(rlocs);
    if (ttl) body.ttl = asNumber(ttl);
    if (action) body.action = action;
    const button = $("f-submit");
    button.disabled = true;
    button.textContent = "Adding…";
    try {
      const r = await write("POST", "/v1/mappings", body);
      if (r.ok) {
        const { bad, text } = bridgesText(r.data.bridges);
        showMessage(bad ? "warn" : "ok", `Added <code>${esc(r.data.mapping.iid)}:${esc(r.data.mapping.eid)}</code> · ${text}`);
        $("f-eid").value = "";
        $("f-rlocs").value = "";
      } else {
        showError(r);
      }
    } catch (e) {
      showMessage("error", `<strong>Not sent</strong> the controller is not answering (${esc(why(e))}).`);
    } finally {
      button.disabled = false;
      button.textContent = "Add mapping";
      loop();
    }
  }

  async function deleteMapping(key) {
    const [iid, eid] = key.split("|");
    try {
      const r = await write("DELETE", `/v1/mappings/${iid}/${eid}`);
      if (r.ok) {
        const { bad, text } = bridgesText(r.data.bridges);
        showMessage(bad ? "warn" : "ok", `Deleted <code>${esc(iid)}:${esc(eid)}</code> · ${text}`);
      } else {
        showError(r);
      }
    } catch (e) {
      showMessage("error", `<strong>Not deleted</strong> the controller is not answering (${esc(why(e))}).`);
    }
    loop();
  }

  function onRowsClick(ev) {
    const button = ev.target.closest("button[data-del]");
    if (!button) return;
    const key = button.dataset.del;
    clearTimeout(state.armTimer);
    if (state.armed === key) {
      state.armed = null;
      button.disabled = true;
      deleteMapping(key);
    } else {
      state.armed = key;  // first click arms; a second within ARM_MS deletes
      state.armTimer = setTimeout(() => { state.armed = null; renderTable(); }, ARM_MS);
    }
    renderTable();
  }

  // The token dialog resolves with the saved token, or null if cancelled.
  let tokenResolve = null;
  function askToken(reason) {
    const dialog = $("token-dialog");
    $("token-why").textContent = reason
      ? `The controller says: ${reason}. The token is kept in this browser tab only.`
      : "Changes need the controller's API token. It is kept in this browser tab only.";
    $("token-input").value = sessionStorage.getItem(TOKEN_KEY) || "";
    if (!dialog.open) dialog.showModal();
    $("token-input").focus();
    return new Promise((resolve) => { tokenResolve = resolve; });
  }
  function closeToken(token) {
    const dialog = $("token-dialog");
    if (dialog.open) dialog.close();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    renderToken();
    if (tokenResolve) tokenResolve(token);
    tokenResolve = null;
  }

  function wire() {
    $("add-form").addEventListener("submit", submitForm);
    $("rows").addEventListener("click", onRowsClick);
    document.querySelector("#mappings thead").addEventListener("click", (ev) => {
      const th = ev.target.closest("th[data-sort]");
      if (!th) return;
      const key = th.dataset.sort;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : (key === "packets" || key === "bytes" ? -1 : 1) };
      state.page = 0;
      refreshTable();
    });
    let debounce = null;
    $("search").addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        state.query = $("search").value;
        state.page = 0;
        refreshTable();
      }, 150);
    });
    $("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); refreshTable(); });
    $("next").addEventListener("click", () => { state.page++; refreshTable(); });
    $("page-size").addEventListener("change", () => {
      state.pageSize = Number($("page-size").value);
      state.page = 0;
      refreshTable();
    });
    $("token-button").addEventListener("click", () => askToken(null));
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      closeToken($("token-input").value.trim() || null);
    });
    $("token-cancel").addEventListener("click", () => closeToken(null));
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      closeToken(null);
    });
    $("token-dialog").addEventListener("cancel", () => closeToken(null));
    setInterval(renderLive, 1000);  // keeps "n s ago" honest between polls
  }

  wire();
  renderToken();
  loop();
})();
