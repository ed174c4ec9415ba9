// tickflow dashboard: renders the snapshot of /api/state, live from /events (Server-Sent
// Events), falling back to polling /api/state. No dependencies: the machine may be offline.
"use strict";

(function () {
  const HISTORY = 120; // snapshots kept for the charts
  const COLORS = ["#4e9af1", "#f5a623", "#7ed321", "#d0021b", "#bd10e0", "#50e3c2", "#b8e986"];
  const history = [];
  const colorOf = {};
  let updates = 0;
  let lastState = null;

  const $ = (id) => document.getElementById(id);

  function isNum(v) {
    return typeof v === "number" && isFinite(v);
  }

  function fmt(v, digits) {
    if (!isNum(v)) return "n/a";
    const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
    return v.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
  }

  function age(ms) {
    if (!isNum(ms)) return "n/a";
    if (ms < 10000) return fmt(ms, 0) + " ms";
    if (ms < 120000) return fmt(ms / 1000, 1) + " s";
    if (ms < 7200000) return fmt(ms / 60000, 1) + " min";
    return fmt(ms / 3600000, 1) + " h";
  }

  function text(id, value) {
    const el = $(id);
    if (el) el.textContent = value;
  }

  function cell(row, value, testid, cls) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined || value === "" ? "–" : String(value);
    if (testid) td.setAttribute("data-testid", testid);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function replaceRows(tbody, rows, emptyText, columns) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, emptyText, null, "empty");
      td.colSpan = columns;
      tbody.appendChild(tr);
      return;
    }
    rows.forEach((tr) => tbody.appendChild(tr));
  }

  function color(exchange) {
    if (!(exchange in colorOf)) colorOf[exchange] = COLORS[Object.keys(colorOf).length % COLORS.length];
    return colorOf[exchange];
  }

  function sum(obj) {
    if (!obj) return null;
    return Object.values(obj).reduce((a, v) => a + (isNum(v) ? v : 0), 0);
  }

  function pill(id, ok, label, detail) {
    const el = $(id);
    el.textContent = label + (ok ? " up" : " down");
    el.className = "pill " + (ok ? "ok" : "bad");
    el.setAttribute("data-up", ok ? "1" : "0");
    el.title = detail || "";
  }

  function quantiles(q, keys) {
    if (!q) return "n/a";
    return keys.map((k) => fmt(q[k])).join(" / ");
  }

  function renderExchanges(state) {
    const frames = state.rates.connector_frames_per_s; // null: Prometheus down
    const writes = state.rates.book_writes_per_s || {};
    const exLatency = state.latency.exchange_ms; // null: Prometheus down
    const redisLatency = state.latency.redis_ms || {};
    const names = new Set(Object.keys(writes));
    Object.keys(frames || {}).forEach((e) => names.add(e));
    Object.keys(exLatency || {}).forEach((e) => names.add(e));
    Object.keys(redisLatency).forEach((e) => e !== "all" && names.add(e));
    state.books.forEach((b) => names.add(b.exchange));
    const rows = Array.from(names).sort().map((ex) => {
      const tr = document.createElement("tr");
      tr.setAttribute("data-testid", "exchange-row");
      tr.setAttribute("data-exchange", ex);
      const name = cell(tr, ex, null, "name");
      name.style.borderLeft = "4px solid " + color(ex);
      cell(tr, frames ? fmt(frames[ex] !== undefined ? frames[ex] : null, 1) : "n/a", "rate-" + ex, "num");
      cell(tr, fmt(writes[ex] !== undefined ? writes[ex] : 0, 1), "book-writes-" + ex, "num");
      cell(tr, quantiles(exLatency ? exLatency[ex] : null, ["p50", "p90", "p99"]), "exchange-latency-" + ex, "num");
      const r = redisLatency[ex];
      cell(tr, r && r.count ? quantiles(r, ["p50", "p90", "p99", "max"]) : "n/a", "redis-latency-" + ex, "num");
      cell(tr, r ? r.count : 0, "redis-latency-" + ex + "-count", "num");
      return tr;
    });
    replaceRows($("exchange-rows"), rows, "no exchange seen yet", 6);
  }

  function renderBooks(state) {
    const rows = state.books.map((b) => {
      const id = "book-" + b.exchange + ":" + b.symbol;
      const tr = document.createElement("tr");
      tr.setAttribute("data-testid", "book-row");
      tr.setAttribute("data-exchange", b.exchange);
      tr.setAttribute("data-symbol", b.symbol);
      tr.setAttribute("data-status", b.status);
      cell(tr, b.exchange, null, "name");
      cell(tr, b.symbol, id + "-symbol");
      cell(tr, b.instrument);
      cell(tr, b.status, id + "-status", "status " + String(b.status).toLowerCase());
      cell(tr, b.reason, id + "-reason", "reason");
      cell(tr, b.best_bid ? b.best_bid[1] : null, id + "-bid-size", "num");
      cell(tr, b.best_bid ? b.best_bid[0] : null, id + "-bid", "num bid");
      cell(tr, b.best_ask ? b.best_ask[0] : null, id + "-ask", "num ask");
      cell(tr, b.best_ask ? b.best_ask[1] : null, id + "-ask-size", "num");
      cell(tr, b.spread, id + "-spread", "num");
      cell(tr, b.seq, id + "-seq", "num");
      cell(tr, fmt(b.writes_per_s, 1), id + "-writes", "num");
      cell(tr, fmt(b.e2e_ms), id + "-e2e", "num");
      cell(tr, age(b.age_ms), id + "-age", "num");
      return tr;
    });
    replaceRows($("book-rows"), rows, "no books in Redis under this prefix", 14);
  }

  function renderNbbo(state) {
    const rows = state.nbbo.map((n) => {
      const id = "nbbo-" + n.instrument;
      const tr = document.createElement("tr");
      tr.setAttribute("data-testid", "nbbo-row");
      tr.setAttribute("data-instrument", n.instrument);
      cell(tr, n.instrument, id + "-instrument", "name");
      cell(tr, n.quote, id + "-quote");
      cell(tr, n.bid_size, id + "-bid-size", "num");
      cell(tr, n.bid_price, id + "-bid", "num bid");
      cell(tr, n.bid_venues.join(", "), id + "-bid-venues", "venues");
      cell(tr, n.ask_price, id + "-ask", "num ask");
      cell(tr, n.ask_size, id + "-ask-size", "num");
      cell(tr, n.ask_venues.join(", "), id + "-ask-venues", "venues");
      cell(tr, n.spread, id + "-spread", "num");
      const flags = [n.locked ? "LOCKED" : "", n.crossed ? "CROSSED" : ""].filter(Boolean).join(" ");
      cell(tr, flags, id + "-flags", flags ? "status bad" : "");
      cell(tr, (n.venues || []).join(", "), id + "-venues", "venues");
      const excluded = Object.entries(n.excluded || {}).map(([v, why]) => v + ": " + why);
      cell(tr, excluded.join("; "), id + "-excluded", "reason");
      cell(tr, age(n.age_ms), id + "-age", "num");
      return tr;
    });
    replaceRows($("nbbo-rows"), rows, "no NBBO in Redis under this prefix", 13);
  }

  function renderAlerts(state) {
    let firing = 0;
    const rows = state.alerts.map((a) => {
      if (a.status === "firing") firing += 1;
      const tr = document.createElement("tr");
      tr.setAttribute("data-testid", "alert-row");
      tr.setAttribute("data-status", a.status);
      tr.setAttribute("data-name", a.name);
      cell(tr, a.status, "alert-" + a.name + "-status", "status " + a.status);
      cell(tr, a.name, null, "name");
      cell(tr, a.severity);
      cell(tr, a.summary, null, "reason");
      cell(tr, a.startsAt);
      cell(tr, a.status === "resolved" ? a.endsAt : "");
      cell(tr, a.source);
      return tr;
    });
    replaceRows($("alert-rows"), rows, "no alerts", 7);
    text("alerts-firing", String(firing));
    $("alerts-firing").className = "value" + (firing ? " bad" : "");
  }

  function drawChart(canvas, series, unit) {
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const w = canvas.width;
    const h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    let max = 0;
    series.forEach((s) => s.values.forEach((v) => { if (isNum(v) && v > max) max = v; }));
    max = max > 0 ? max * 1.15 : 1;
    ctx.strokeStyle = "#333a45";
    ctx.fillStyle = "#8a93a3";
    ctx.font = "11px sans-serif";
    for (let i = 0; i <= 4; i++) {
      const y = h - 14 - ((h - 24) * i) / 4;
      ctx.beginPath();
      ctx.moveTo(40, y);
      ctx.lineTo(w, y);
      ctx.stroke();
      ctx.fillText(fmt((max * i) / 4), 0, y + 4);
    }
    ctx.fillText(unit, w - 40, 10);
    series.forEach((s) => {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      s.values.forEach((v, i) => {
        if (!isNum(v)) { started = false; return; }
        const x = 40 + ((w - 44) * i) / Math.max(1, HISTORY - 1);
        const y = h - 14 - ((h - 24) * v) / max;
        if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        started = true;
      });
      ctx.stroke();
    });
  }

  function legend(id, series) {
    const el = $(id);
    while (el.firstChild) el.removeChild(el.firstChild);
    series.forEach((s) => {
      const span = document.createElement("span");
      span.style.color = s.color;
      span.textContent = "■ " + s.name + " ";
      el.appendChild(span);
    });
  }

  function renderCharts(state) {
    history.push(state);
    while (history.length > HISTORY) history.shift();
    const exchanges = new Set();
    history.forEach((s) => Object.keys(s.rates.book_writes_per_s || {}).forEach((e) => exchanges.add(e)));
    const rates = Array.from(exchanges).sort().map((ex) => ({
      name: ex,
      color: color(ex),
      values: history.map((s) => (s.rates.book_writes_per_s || {})[ex] || 0),
    }));
    drawChart($("chart-rates"), rates, "/s");
    legend("legend-rates", rates);
    const lat = [
      { name: "p50", color: "#4e9af1", values: history.map((s) => (s.latency.redis_ms.all || {}).p50) },
      { name: "p99", color: "#f5a623", values: history.map((s) => (s.latency.redis_ms.all || {}).p99) },
      { name: "max", color: "#d0021b", values: history.map((s) => (s.latency.redis_ms.all || {}).max) },
    ];
    drawChart($("chart-latency"), lat, "ms");
    legend("legend-latency", lat);
  }

  function render(state) {
    if (!state || !state.rates) return;
    lastState = state;
    updates += 1;
    text("updates-received", String(updates));
    text("prefix", state.prefix);
    text("last-update", new Date(state.generated_at_ms).toLocaleTimeString("en-GB"));
    $("last-update").setAttribute("data-ms", String(state.generated_at_ms));
    pill("redis-status", state.redis.up, "Redis", state.redis.error);
    const prom = state.prometheus;
    pill("prometheus-status", prom.up, "Prometheus", prom.error);
    text(
      "prometheus-detail",
      prom.url ? "Prometheus " + prom.url + (prom.up ? "" : " — " + (prom.error || "down")) : "no Prometheus"
    );

    const writes = sum(state.rates.book_writes_per_s);
    text("book-writes-total", fmt(writes, 1));
    const frames = state.rates.connector_frames_per_s;
    text("connector-frames-total", frames ? fmt(sum(frames), 1) : "n/a");
    const all = state.latency.redis_ms.all || {};
    text("redis-latency-all-p99", all.count ? fmt(all.p99) + " ms" : "n/a");
    text("consumer-lag", isNum(state.consumer_lag_ms) ? fmt(state.consumer_lag_ms, 0) + " ms" : "n/a");
    text("books-not-live", isNum(state.books_not_live) ? fmt(state.books_not_live, 0) : "n/a");
    text("nbbo-updates", fmt(state.rates.nbbo_updates_per_s, 1));
    text("books-live", String(state.books_summary.LIVE || 0));
    text("books-total", String(state.books_summary.total || 0));

    renderExchanges(state);
    renderNbbo(state);
    renderBooks(state);
    renderAlerts(state);
    renderCharts(state);
  }

  function stream(mode) {
    const el = $("stream-status");
    el.textContent = mode;
    el.className = "pill " + (mode === "disconnected" ? "bad" : "ok");
    el.setAttribute("data-mode", mode);
  }

  function poll() {
    fetch("/api/state", { cache: "no-store" })
      .then((r) => r.json())
      .then((s) => { render(s); stream("polling"); })
      .catch(() => stream("disconnected"))
      .finally(() => setTimeout(poll, 1000 * ((lastState && lastState.interval_s) || 1)));
  }

  function start() {
    const initial = $("initial-state");
    if (initial) {
      try { render(JSON.parse(initial.textContent)); } catch (e) { /* the stream will fill in */ }
    }
    // polling by default: an open event stream keeps a page "loading" for headless browsers
    // (a screenshot's virtual time never advances); ?stream=sse follows /events instead
    const wantSse = /[?&]stream=sse\b/.test(window.location.search);
    if (wantSse && "EventSource" in window) {
      const es = new EventSource("/events");
      let opened = false;
      es.addEventListener("open", () => { opened = true; stream("live"); });
      es.addEventListener("state", (e) => { render(JSON.parse(e.data)); stream("live"); });
      es.addEventListener("error", () => {
        if (!opened || es.readyState === EventSource.CLOSED) {
          es.close();
          poll();
        } else {
          stream("reconnecting");
        }
      });
    } else {
      poll();
    }
  }

  start();
})();
