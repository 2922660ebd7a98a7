/* The box page: live charts over the people websocket, history from the telemetry API, and
   refreshing the server-rendered fragments (status, events, commands, configuration state) when
   the websocket says something changed. The database stays the truth: fragments are re-read. */
(function () {
  "use strict";

  var root = document.getElementById("box-root");
  if (!root) { return; }
  var boxId = root.dataset.box;
  var LIVE_POINTS = 360;
  var PALETTE = ["#0a66c2", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#5c940d", "#1864ab", "#e67700"];

  function fmtBps(value) {
    if (value === null || value === undefined || isNaN(value)) { return "–"; }
    var units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
    var v = Number(value);
    var i = 0;
    while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
    return (i === 0 || Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(Math.abs(v) < 10 ? 2 : 1)) + " " + units[i];
  }
  function fmtNumber(value, digits, unit) {
    if (value === null || value === undefined || isNaN(value)) { return "–"; }
    return Number(value).toFixed(digits) + " " + unit;
  }

  // Render the bit rates the server wrote as raw numbers.
  function humanizeBps(scope) {
    (scope || document).querySelectorAll("[data-bps]").forEach(function (el) {
      el.textContent = fmtBps(Number(el.dataset.bps));
    });
    ["agg-rx", "agg-tx"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el && /^\d+$/.test(el.textContent.trim())) { el.textContent = fmtBps(Number(el.textContent)); }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Charts (uPlot). A chart is rebuilt when the set of series changes (a new WAN link appears).
  function Chart(elementId, valueFormatter) {
    this.el = document.getElementById(elementId);
    this.format = valueFormatter;
    this.names = [];
    this.plot = null;
    this.data = [[]];
  }
  Chart.prototype.width = function () {
    return Math.max(this.el.clientWidth || this.el.parentNode.clientWidth || 300, 240);
  };
  // Times on the charts: the portal's one format (portal.js) in the legend, its time (or its day,
  // for ranges over two days) on the axis; the viewer's time zone, as everywhere.
  var TICK_SECONDS = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  var TICK_TIME = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  var TICK_DAY = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short" });
  function formatWhen(date) {
    return window.otb && window.otb.formatWhen ? window.otb.formatWhen(date) : date.toISOString();
  }
  function timeAxis() {
    return {
      space: 72,  // pixels between ticks: room for "12:18:33"
      values: function (u, ticks) {
        var span = ticks.length > 1 ? ticks[ticks.length - 1] - ticks[0] : 0;
        var format = span > 2 * 86400 ? TICK_DAY : span > 600 ? TICK_TIME : TICK_SECONDS;
        return ticks.map(function (t) { return format.format(new Date(t * 1000)); });
      },
    };
  }
  var TIME_SERIES = { label: "Time", value: function (u, v) { return v === null || v === undefined ? "–" : formatWhen(new Date(v * 1000)); } };

  Chart.prototype.build = function () {
    if (!window.uPlot || !this.el) { return; }
    if (this.plot) { this.plot.destroy(); }
    var format = this.format;
    var styles = this.styles || {};
    var series = [TIME_SERIES].concat(this.names.map(function (name, index) {
      var style = styles[name] || {};
      return {
        label: name,
        stroke: style.stroke || (name === "aggregate" ? "#111827" : name === "sum of links" ? "#9aa8b8" : PALETTE[index % PALETTE.length]),
        width: name === "aggregate" ? 2.5 : 1.6,
        dash: style.dash || (name === "sum of links" ? [6, 4] : undefined),
        value: function (u, v) { return v === null || v === undefined ? "–" : format(v); },
        spanGaps: Boolean(style.spanGaps),
        points: style.points,
      };
    }));
    this.plot = new window.uPlot({
      width: this.width(),
      height: this.height || 200,
      series: series,
      axes: [timeAxis(), { values: function (u, ticks) { return ticks.map(format); }, size: 92 }],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    }, this.data, this.el);
  };
  Chart.prototype.set = function (names, data) {
    var rebuild = names.join("|") !== this.names.join("|") || !this.plot;
    this.names = names.slice();
    this.data = data;
    if (rebuild) { this.build(); } else if (this.plot) { this.plot.setData(this.data); }
  };
  Chart.prototype.resize = function () {
    if (this.plot) { this.plot.setSize({ width: this.width(), height: this.height || 200 }); }
  };

  // ---------------------------------------------------------------------------------------------
  // Live: one ring of points per metric, one series per WAN link.
  var live = {
    times: [],
    rows: [],   // [{ts, aggregate_rx, wans: {iface: {...}}}]
    ifaces: [],
    charts: {
      throughput: new Chart("chart-throughput", fmtBps),
      rtt: new Chart("chart-rtt", function (v) { return fmtNumber(v, 1, "ms"); }),
      loss: new Chart("chart-loss", function (v) { return fmtNumber(v, 1, "%"); }),
    },
    count: 0,
    backfilled: 0,
  };

  function liveRedraw() {
    var ifaces = live.ifaces;
    var times = live.rows.map(function (row) { return row.ts; });
    function column(fn) { return live.rows.map(fn); }
    var throughputNames = ifaces.concat(["sum of links", "aggregate"]);
    var throughput = [times].concat(ifaces.map(function (iface) {
      return column(function (row) { var w = row.wans[iface]; return w ? w.rx_bps : null; });
    })).concat([
      column(function (row) { return row.sum_rx; }),
      column(function (row) { return row.aggregate_rx; }),
    ]);
    live.charts.throughput.set(throughputNames, throughput);
    live.charts.rtt.set(ifaces, [times].concat(ifaces.map(function (iface) {
      return column(function (row) { var w = row.wans[iface]; return w && w.up ? w.rtt_ms : null; });
    })));
    live.charts.loss.set(ifaces, [times].concat(ifaces.map(function (iface) {
      return column(function (row) { var w = row.wans[iface]; return w && w.up ? w.loss_pct : null; });
    })));
  }

  function knowIface(iface) {
    if (live.ifaces.indexOf(iface) === -1) { live.ifaces.push(iface); live.ifaces.sort(); }
  }

  function showTotals(row) {
    setText("agg-rx", fmtBps(row.aggregate_rx));
    setText("agg-tx", fmtBps(row.aggregate_tx));
    setText("sum-rx", fmtBps(row.sum_rx));
    setText("sum-tx", fmtBps(row.sum_tx));
    setText("efficiency", row.sum_rx > 0 && row.aggregate_rx !== null && row.aggregate_rx !== undefined
      ? (100 * row.aggregate_rx / row.sum_rx).toFixed(1) + " %" : "–");
  }

  function liveCounter() {
    var counter = document.getElementById("live-points");
    if (!counter) { return; }
    counter.dataset.count = String(live.count);
    counter.dataset.backfill = String(live.backfilled);
    var parts = [];
    if (live.backfilled) { parts.push(live.backfilled + " point" + (live.backfilled === 1 ? "" : "s") + " from the last hour"); }
    parts.push(live.count + " live update" + (live.count === 1 ? "" : "s") + " received");
    counter.textContent = parts.join(", then ");
  }

  function onTelemetry(p) {
    var ts = p.ts ? Date.parse(p.ts) / 1000 : Date.now() / 1000;
    var row = { ts: ts, aggregate_rx: p.rx_bps, aggregate_tx: p.tx_bps, wans: {}, sum_rx: 0, sum_tx: 0 };
    (p.wans || []).forEach(function (wan) {
      row.wans[wan.iface] = wan;
      knowIface(wan.iface);
      if (wan.up) { row.sum_rx += Number(wan.rx_bps || 0); row.sum_tx += Number(wan.tx_bps || 0); }
      updateWanRow(wan);
    });
    if (live.rows.length && ts <= live.rows[live.rows.length - 1].ts) { return; }
    live.rows.push(row);
    if (live.rows.length > LIVE_POINTS) { live.rows.shift(); }
    live.count += 1;
    liveRedraw();
    showTotals(row);
    var up = (p.wans || []).filter(function (w) { return w.up; }).length;
    setText("wans-up", up + " of " + (p.wans || []).length);
    liveCounter();
    setText("live-updated", "updated " + formatWhen(new Date(ts * 1000)));
  }

  // Back-fill: the last hour from the telemetry API, so the live charts are full on arrival; the
  // websocket's points then follow (a point is drawn once: the back-fill stops where they start).
  function backfillLive() {
    var seconds = Number(root.dataset.liveWindow || 3600);
    var end = new Date();
    var start = new Date(end.getTime() - seconds * 1000);
    var query = "?resolution=raw&max_points=" + LIVE_POINTS + "&from=" + encodeURIComponent(start.toISOString()) +
      "&to=" + encodeURIComponent(end.toISOString());
    return fetch(root.dataset.telemetryUrl + query, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (body) {
      var rows = historyRows(body);
      var firstLive = live.rows.length ? live.rows[0].ts : Infinity;
      rows = rows.filter(function (row) { return row.ts < firstLive; });
      live.rows = rows.concat(live.rows).slice(-LIVE_POINTS);
      live.backfilled = rows.length;
      if (rows.length && !live.count) { showTotals(rows[rows.length - 1]); }
      liveRedraw();
      liveCounter();
    }).catch(function (error) {
      setText("live-points", "The last hour could not be loaded (" + error.message + "); live updates follow.");
    });
  }

  // Rows of the live charts from a telemetry API answer (box points and per-link points by time).
  function historyRows(body) {
    var byTs = {};
    function rowAt(ts) {
      var t = Date.parse(ts) / 1000;
      if (!byTs[t]) { byTs[t] = { ts: t, aggregate_rx: null, aggregate_tx: null, wans: {}, sum_rx: 0, sum_tx: 0 }; }
      return byTs[t];
    }
    (body.box || []).forEach(function (point) {
      var row = rowAt(point.ts);
      row.aggregate_rx = point.rx_bps;
      row.aggregate_tx = point.tx_bps;
    });
    (body.wans || []).forEach(function (series) {
      knowIface(series.iface);
      (series.points || []).forEach(function (point) {
        var row = rowAt(point.ts);
        var up = point.up_ratio === null || point.up_ratio === undefined ? true : point.up_ratio >= 0.5;
        row.wans[series.iface] = { iface: series.iface, up: up, rx_bps: point.rx_bps, tx_bps: point.tx_bps,
          rtt_ms: point.rtt_ms, loss_pct: point.loss_pct };
        row.sum_rx += Number(point.rx_bps || 0);
        row.sum_tx += Number(point.tx_bps || 0);
      });
    });
    return Object.keys(byTs).map(Number).sort(function (a, b) { return a - b; }).map(function (t) { return byTs[t]; });
  }

  // ---------------------------------------------------------------------------------------------
  // Speed tests: download (solid) and upload (dashed) per target, from the commands fragment's data.
  var speedChart = new Chart("chart-speed", function (v) { return fmtBps(v * 1e6); });
  speedChart.height = 180;
  function drawSpeed() {
    speedChart.el = document.getElementById("chart-speed");
    if (!speedChart.el || !speedChart.el.dataset.points) { return; }
    var points;
    try { points = JSON.parse(speedChart.el.dataset.points); } catch (e) { return; }
    var targets = [];
    points.forEach(function (point) { if (targets.indexOf(point.target) === -1) { targets.push(point.target); } });
    targets.sort();
    var times = points.map(function (point) { return Date.parse(point.ts) / 1000; });
    var names = [];
    var columns = [];
    speedChart.styles = {};
    targets.forEach(function (target, index) {
      var label = target || "tunnel";
      var colour = target ? PALETTE[(index + 1) % PALETTE.length] : "#111827";
      ["down", "up"].forEach(function (direction) {
        var name = (direction === "down" ? "↓ " : "↑ ") + label;
        names.push(name);
        speedChart.styles[name] = { stroke: colour, dash: direction === "up" ? [6, 4] : undefined, spanGaps: true,
          points: { show: true, size: 6 } };
        columns.push(points.map(function (point) {
          return point.target === target ? point[direction + "_mbps"] : null;
        }));
      });
    });
    speedChart.plot = null;  // the fragment was swapped: a new element
    speedChart.set(names, [times].concat(columns));
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }

  function updateWanRow(wan) {
    var row = document.querySelector('#wan-table tr[data-iface="' + CSS.escape(wan.iface) + '"]');
    if (!row) { refreshStatus(); return; }  // a link the table does not show yet: re-read it
    var cells = {
      rtt_ms: fmtNumber(wan.rtt_ms, 1, "ms"),
      loss_pct: fmtNumber(wan.loss_pct, 1, "%"),
      rx_bps: fmtBps(wan.rx_bps),
      tx_bps: fmtBps(wan.tx_bps),
    };
    Object.keys(cells).forEach(function (metric) {
      var cell = row.querySelector('[data-metric="' + metric + '"]');
      if (cell) { cell.textContent = cells[metric]; }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Fragments re-read from the server (debounced: many events may arrive together).
  var pending = {};
  function refresh(name, url, target) {
    if (!window.htmx || pending[name]) { return; }
    pending[name] = setTimeout(function () {
      pending[name] = null;
      window.htmx.ajax("GET", url, { target: target, swap: "innerHTML" }).then(function () {
        humanizeBps(document.querySelector(target));
      });
    }, 400);
  }
  function refreshStatus() { refresh("status", root.dataset.statusUrl, "#status-panel"); }
  function refreshEvents() { refresh("events", root.dataset.eventsUrl, "#events-panel"); }
  function refreshCommands() { refresh("commands", root.dataset.commandsUrl, "#commands-panel"); }

  function setPresence(online) {
    var badge = document.getElementById("presence");
    if (badge) {
      badge.innerHTML = online ? '<span class="badge ok">Online</span>' : '<span class="badge bad">Offline</span>';
    }
  }

  function onMessage(raw) {
    var message;
    try { message = JSON.parse(raw); } catch (e) { return; }
    var p = message.payload || message;
    var kind = p.kind || message.kind || message.type;
    var messageBox = p.box_id || (typeof p.box === "string" ? p.box : null);
    if (messageBox && messageBox !== boxId) { return; }
    if (kind === "telemetry") {
      onTelemetry(p);
    } else if (kind === "presence") {
      setPresence(Boolean(p.online));
      refreshStatus();
    } else if (kind === "event") {
      var eventKind = (p.event && p.event.kind) || p.event_kind || "";
      refreshEvents();
      if (eventKind.indexOf("config") === 0) { document.body.dispatchEvent(new CustomEvent("otb:config")); }
      if (eventKind === "command_finished") { refreshCommands(); }
      if (eventKind.indexOf("wan_") === 0 || eventKind.indexOf("box_") === 0 || eventKind === "firmware_changed") {
        refreshStatus();
      }
    } else if (kind === "command") {
      refreshCommands();
    } else if (kind === "config") {
      document.body.dispatchEvent(new CustomEvent("otb:config"));
    } else if (kind === "unsubscribed" && message.reason === "access_revoked") {
      // The server dropped this box from the socket: say why the charts stopped, and do not retry.
      stopped = "You no longer have access to this box: live updates stopped.";
      liveState(false, stopped);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The websocket, reconnecting with backoff.
  var socket = null;
  var retry = 0;
  var stopped = null;  // why live updates ended for good (access revoked, signed out): no reconnect
  function liveState(connected, label) {
    var dot = document.getElementById("live-dot");
    if (dot) { dot.classList.toggle("on", connected); }
    setText("live-label", label);
  }
  function connect() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + window.location.host + (root.dataset.ws || "/ws/live/"));
    } catch (e) {
      scheduleReconnect();
      return;
    }
    socket.addEventListener("open", function () {
      retry = 0;
      socket.send(JSON.stringify({ type: "subscribe", box: boxId }));
      liveState(true, "live");
    });
    socket.addEventListener("message", function (event) { onMessage(event.data); });
    socket.addEventListener("close", function (event) {
      if (event.code === 4001) { stopped = "Your session ended: sign in again for live updates."; }
      if (stopped) {
        liveState(false, stopped);
        return;
      }
      liveState(false, "reconnecting…");
      scheduleReconnect();
    });
  }
  function scheduleReconnect() {
    retry = Math.min(retry + 1, 6);
    setTimeout(function () {
      // A fresh page state after a gap: re-read what may have changed meanwhile.
      refreshStatus(); refreshEvents(); refreshCommands();
      document.body.dispatchEvent(new CustomEvent("otb:config"));
      connect();
    }, Math.min(30000, 500 * Math.pow(2, retry)) * (0.75 + Math.random() / 2));
  }

  // ---------------------------------------------------------------------------------------------
  // History from the telemetry API (the same API customers' scripts use).
  var history = {
    throughput: new Chart("history-throughput", fmtBps),
    rtt: new Chart("history-rtt", function (v) { return fmtNumber(v, 1, "ms"); }),
    loss: new Chart("history-loss", function (v) { return fmtNumber(v, 1, "%"); }),
  };
  function loadHistory(range) {
    document.querySelectorAll("[data-range]").forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    });
    setText("history-status", "Loading " + range + "…");
    var seconds = { hour: 3600, day: 86400, week: 7 * 86400, month: 30 * 86400 }[range] || 3600;
    var end = new Date();
    var start = new Date(end.getTime() - seconds * 1000);
    var query = "?resolution=auto&from=" + encodeURIComponent(start.toISOString()) +
      "&to=" + encodeURIComponent(end.toISOString());
    fetch(root.dataset.telemetryUrl + query, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (body) {
      drawHistory(body, range);
    }).catch(function (error) {
      setText("history-status", "History is not available (" + error.message + ").");
    });
  }
  function drawHistory(body, range) {
    // Shape: {"box": {...points...}, "wans": {iface: [{ts, rtt_ms, loss_pct, rx_bps, tx_bps}]}} or
    // {"points": [{ts, rx_bps, tx_bps, wans: [...]}]}: both are accepted.
    var boxPoints = body.box || body.points || [];
    var wans = body.wans || {};
    if (Array.isArray(wans)) {
      var byIface = {};
      wans.forEach(function (series) { byIface[series.iface] = series.points || []; });
      wans = byIface;
    }
    var ifaces = Object.keys(wans).sort();
    var timeSet = {};
    boxPoints.forEach(function (point) { timeSet[Date.parse(point.ts) / 1000] = true; });
    ifaces.forEach(function (iface) {
      wans[iface].forEach(function (point) { timeSet[Date.parse(point.ts) / 1000] = true; });
    });
    var times = Object.keys(timeSet).map(Number).sort(function (a, b) { return a - b; });
    if (times.length < 2) {
      setText("history-status", "Not enough data for the last " + range + " yet: history fills in as the box reports.");
      return;
    }
    var index = {};
    times.forEach(function (t, i) { index[t] = i; });
    function series(points, key) {
      var out = times.map(function () { return null; });
      points.forEach(function (point) {
        var value = point[key];
        if (value === undefined) { value = point[key + "_avg"]; }
        out[index[Date.parse(point.ts) / 1000]] = value === undefined ? null : value;
      });
      return out;
    }
    history.throughput.set(ifaces.concat(["aggregate"]),
      [times].concat(ifaces.map(function (i) { return series(wans[i], "rx_bps"); })).concat([series(boxPoints, "rx_bps")]));
    history.rtt.set(ifaces, [times].concat(ifaces.map(function (i) { return series(wans[i], "rtt_ms"); })));
    history.loss.set(ifaces, [times].concat(ifaces.map(function (i) { return series(wans[i], "loss_pct"); })));
    setText("history-status", times.length ? times.length + " points over the last " + range + (body.resolution ? " (" + body.resolution + ")" : "") + "." : "No data for the last " + range + " yet.");
  }

  document.addEventListener("DOMContentLoaded", function () {
    humanizeBps(document);
    document.querySelectorAll("[data-range]").forEach(function (button) {
      button.addEventListener("click", function () { loadHistory(button.dataset.range); });
    });
    loadHistory("hour");
    liveRedraw();
    backfillLive();
    drawSpeed();
    connect();
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () {
        Object.keys(live.charts).forEach(function (k) { live.charts[k].resize(); });
        Object.keys(history).forEach(function (k) { history[k].resize(); });
        speedChart.resize();
      }, 150);
    });
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    humanizeBps(event.target);
    if (document.getElementById("chart-speed") && !document.querySelector("#chart-speed .uplot")) {
      drawSpeed();
    }
  });
})();
