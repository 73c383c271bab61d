// The live view's page: polls api/state and redraws. No framework, no build step, no CDN.
// Everything from the server is written with textContent (never parsed as HTML).
"use strict";
(function () {
  const INTERVAL_MS = 1000;
  const query = new URLSearchParams(window.location.search);
  const token = query.get("token");
  const filters = { thunk: query.get("thunk") || "", actor: query.get("actor") || "",
                    event: query.get("event") || "" };
  let updates = 0;
  let timer = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("data-")) node.setAttribute(name, String(value));
      else if (name === "width") node.style.width = value;  // CSSOM: allowed by the page's CSP
      else node[name] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const fmt = (v, digits) => (v === null || v === undefined ? "–" :
    (typeof v === "number" ? v.toFixed(digits === undefined ? 1 : digits) : String(v)));
  const stateClass = (s) => "state-" + String(s || "").toLowerCase();

  function summary(state) {
    const streams = state.streams || [];
    const running = streams.filter((s) => s.outcome === null);
    const tokens = running.reduce((a, s) => a + (s.tokens || 0), 0);
    const rate = running.reduce((a, s) => a + (s.tokens_per_s || 0), 0);
    const ended = streams.filter((s) => s.outcome !== null);
    const failed = ended.filter((s) => s.outcome === "failed").length;
    const open = Object.values(state.breakers || {}).filter(Boolean).length;
    const cards = [["streams running", running.length], ["tokens (running)", tokens],
                   ["tokens/s", rate.toFixed(1)], ["recently ended", ended.length],
                   ["failed", failed], ["breakers open", open], ["log records", state.seq]];
    const box = document.getElementById("summary");
    box.replaceChildren(...cards.map(([name, value]) =>
      el("div", { class: "card", "data-name": name }, el("b", {}, value), name)));
  }

  function streamsTable(state) {
    const streams = state.streams || [];
    const max = Math.max(1, ...streams.map((s) => s.tokens || 0));
    const rows = streams.map((s) => {
      const v = s.verdicts || {};
      const verdicts = v.validators ? `${v.validators} validators · fail ${v.fail} · fault ${v.fault}` +
        (v.checked && v.checked.some((c) => c !== null) ? ` · checked ${v.checked.join("/")}` : "") : "–";
      return el("tr", { class: "stream " + stateClass(s.state), "data-thunk": s.thunk,
                        "data-state": s.state, "data-tokens": s.tokens },
        el("td", {}, s.thunk),
        el("td", { class: stateClass(s.state) }, s.state),
        el("td", {}, s.host || "–"),
        el("td", { class: "num" }, s.tokens,
           el("span", { class: "bar", width: `${Math.round(60 * (s.tokens || 0) / max)}px` })),
        el("td", { class: "num" }, fmt(s.tokens_per_s)),
        el("td", { class: "num" }, fmt(s.age_s) + " s"),
        el("td", { class: "num" }, s.ttfc_s === null ? "–" : fmt(s.ttfc_s * 1000, 0) + " ms"),
        el("td", { class: "num" }, s.restarts + (s.failovers ? ` (+${s.failovers} failover)` : "")),
        el("td", {}, verdicts),
        el("td", {}, s.stream_actor || "–"),
        el("td", { class: "reason" }, s.reason || ""));
    });
    document.querySelector("#streams tbody").replaceChildren(...rows);
    const running = streams.filter((s) => s.outcome === null).length;
    document.getElementById("streams-count").textContent =
      `${running} running, ${streams.length - running} recently ended`;
  }

  function treeNode(node, counter) {
    counter.n += 1;
    const children = (node.children || []).filter((c) => c && typeof c === "object");
    const shown = children.slice(0, 300);
    const extra = [];
    if (node.host && node.kind !== "host") extra.push("host " + node.host);
    if (node.restarts) extra.push("restarts " + node.restarts);
    if (node.in_flight !== undefined) extra.push(`in flight ${node.in_flight}/${node.capacity}`);
    const item = el("li", { class: "actor", "data-kind": node.kind, "data-id": node.id,
                            "data-state": node.state },
      el("span", { class: "id" }, node.id),
      el("span", { class: "kind" }, node.kind),
      el("span", { class: stateClass(node.state) }, node.state || ""),
      extra.length ? el("span", { class: "dim" }, " · " + extra.join(" · ")) : null);
    if (shown.length) {
      item.append(el("ul", {}, ...shown.map((c) => treeNode(c, counter))));
      if (children.length > shown.length)
        item.lastChild.append(el("li", { class: "dim" }, `… ${children.length - shown.length} more`));
    }
    return item;
  }

  function tree(state) {
    const counter = { n: 0 };
    const root = state.tree ? treeNode(state.tree, counter) : el("li", {}, "no tree");
    document.getElementById("tree").replaceChildren(root);
    document.getElementById("actors-count").textContent = `${counter.n} nodes`;
  }

  function hosts(state) {
    const breakers = state.breakers || {};
    const known = new Map((state.hosts || []).map((h) => [h.url, h]));
    for (const host of Object.keys(breakers)) if (!known.has(host)) known.set(host, { url: host });
    const rows = [...known.values()].map((h) => {
      const open = breakers[h.url];
      const breaker = open === undefined ? "–" : (open ? "open" : "closed");
      return el("tr", { class: "host", "data-host": h.url },
        el("td", {}, h.url), el("td", { class: stateClass(h.state) }, h.state || "–"),
        el("td", { class: stateClass(breaker) }, breaker),
        el("td", { class: "num" }, h.in_flight === undefined ? "–" : h.in_flight),
        el("td", { class: "num" }, h.capacity === undefined ? "–" : h.capacity));
    });
    document.querySelector("#hosts tbody").replaceChildren(...rows);
  }

  const WARN = new Set(["generator_restarting", "generator_restarted", "failover", "stream_retry",
                        "breaker_probe_failed", "validator_stuck", "host_state"]);
  const BAD = new Set(["actor_crashed", "generation_failed", "escalated", "breaker_opened",
                       "verdict_fail", "validator_failed", "child_crashed"]);

  function log(state) {
    const rows = (state.events || []).slice().reverse().map((r) =>
      el("tr", { class: "record " + (BAD.has(r.event) ? "bad" : WARN.has(r.event) ? "warn" : ""),
                 "data-event": r.event, "data-seq": r.seq },
        el("td", { class: "num" }, r.seq),
        el("td", {}, new Date(r.ts * 1000).toISOString().slice(11, 23)),
        el("td", {}, r.event), el("td", {}, r.actor), el("td", {}, r.kind),
        el("td", {}, r.thunk || ""), el("td", { class: "reason" }, r.reason || "")));
    document.querySelector("#log tbody").replaceChildren(...rows);
    const names = document.getElementById("event-names");
    names.replaceChildren(...(state.event_names || []).map((n) => el("option", { value: n })));
  }

  function render(state) {
    document.getElementById("system").textContent = state.system;
    summary(state); streamsTable(state); tree(state); hosts(state); log(state);
    updates += 1;
    const counter = document.getElementById("updates");
    counter.textContent = String(updates);
    counter.setAttribute("data-updates", String(updates));
    document.getElementById("last-update").textContent = new Date().toISOString().slice(11, 19);
  }

  function connection(ok, text) {
    const badge = document.getElementById("connection");
    badge.textContent = text;
    badge.className = "badge " + (ok ? "live" : "down");
  }

  async function poll() {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) params.set(k, v);
    params.set("limit", "100");
    const headers = token ? { Authorization: "Bearer " + token } : {};
    try {
      const response = await fetch("api/state?" + params.toString(), { headers, cache: "no-store" });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        connection(false, `HTTP ${response.status}: ${body.error || response.statusText}`);
      } else {
        render(await response.json());
        connection(true, "live");
      }
    } catch (err) {
      connection(false, "disconnected (the system closed?)");
    }
    timer = setTimeout(poll, INTERVAL_MS);
  }

  if (token) {  // the footer's links to the API: with the token, as the page got it
    for (const link of document.querySelectorAll("footer a")) {
      link.href = link.getAttribute("href") + "?token=" + encodeURIComponent(token);
    }
  }
  const form = document.getElementById("filters");
  for (const [k, v] of Object.entries(filters)) form.elements[k].value = v;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const k of Object.keys(filters)) filters[k] = form.elements[k].value.trim();
    const next = new URLSearchParams(window.location.search);
    for (const [k, v] of Object.entries(filters)) { if (v) next.set(k, v); else next.delete(k); }
    window.history.replaceState(null, "", "?" + next.toString());
    clearTimeout(timer); poll();
  });
  form.addEventListener("reset", () => {
    for (const k of Object.keys(filters)) filters[k] = "";
    setTimeout(() => form.requestSubmit(), 0);
  });
  poll();
})();
