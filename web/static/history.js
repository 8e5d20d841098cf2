// The dashboard's history: the last hour of the watched agent in a chart, with its figures
// beside it (GET /verifications/summary), and every verification kept, filtered and page by
// page (GET /verifications). dashboard.js says which agent is watched ("dashboard:agent")
// and when something happened ("dashboard:event").
//
// Every value shown is written with textContent; the chart is SVG drawn here, no library.
"use strict";

(() => {
  const AGENT_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
  const SVG = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 15000; // the last hour, even when nothing happens (minutes move on)
  const SETTLE_MS = 1500; // after an event, wait for its neighbours before asking again
  const PAGE_SIZE = 25;
  const HOUR_SECONDS = 3600;
  // Bottom to top in each bar, with the words the page uses for them.
  const OUTCOMES = [
    ["approved", "verified"],
    ["pending", "waiting"],
    ["expired", "expired"],
    ["max_attempts_reached", "locked"],
    ["canceled", "canceled"],
  ];
  const STATUS_WORDS = new Map([
    ["pending", "Waiting"],
    ["approved", "Verified"],
    ["expired", "Expired"],
    ["max_attempts_reached", "Locked"],
    ["canceled", "Canceled"],
  ]);
  const ORIGINS = new Map([
    ["call", "Call"],
    ["api", "API"],
    ["workflow", "Walkthrough"],
  ]);
  const CHANNELS = new Map([
    ["sms", "text"],
    ["call", "voice call"],
  ]);
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    lastHour: $("last-hour"),
    state: $("last-hour-state"),
    chart: $("last-hour-chart"),
    sent: $("figure-sent"),
    conversion: $("figure-conversion"),
    approved: $("figure-approved"),
    median: $("figure-median"),
    p95: $("figure-p95"),
    countries: $("figure-countries"),
    form: $("history-form"),
    totals: $("history-totals"),
    error: $("history-error"),
    rows: $("history-rows"),
    empty: $("history-empty"),
    newer: $("history-newer"),
    older: $("history-older"),
    page: $("history-page"),
  };
  if (!ui.lastHour || !ui.form) return; // an older page

  const state = {
    agentId: "",
    refreshTimer: null,
    settleTimer: null,
    lastHour: null, // the last summary drawn (redrawn as the chart's width changes)
    asked: 0, // the latest request of each view wins
    cursors: [null], // cursors[n]: where page n starts
    page: 0,
    filters: {},
    listed: 0,
  };

  // -- formatting ---------------------------------------------------------------

  const pad = (number) => String(number).padStart(2, "0");
  const hhmm = (when) => `${pad(when.getHours())}:${pad(when.getMinutes())}`;
  const clock = (when) => `${hhmm(when)}:${pad(when.getSeconds())}`;

  function dateTime(when) {
    const year = when.getFullYear() === new Date().getFullYear() ? "" : ` ${when.getFullYear()}`;
    return `${when.getDate()} ${MONTHS[when.getMonth()]}${year} ${clock(when)}`;
  }

  // A summary's window is whole buckets: UTC days are shown as the days counted, the rest to the minute.
  function windowText(summary) {
    const since = new Date(summary.since);
    const until = new Date(summary.until);
    if (summary.bucket_seconds >= 86400) {
      const last = new Date(until.getTime() - 86400 * 1000);
      const day = (when) => `${when.getUTCDate()} ${MONTHS[when.getUTCMonth()]}`;
      return `${day(since)} to ${day(last)} (UTC days)`;
    }
    const at = (when) => `${when.getDate()} ${MONTHS[when.getMonth()]} ${hhmm(when)}`;
    return `${at(since)} to ${at(until)}`;
  }

  function percent(fraction) {
    return fraction === null || fraction === undefined ? "–" : `${Math.round(fraction * 100)}%`;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 120) return `${value} s`;
    if (value < 7200) return `${Math.round(value / 60)} min`;
    return `${Math.round(value / 3600)} h`;
  }

  function timeElement(iso, text) {
    const element = document.createElement("time");
    element.dateTime = iso;
    element.title = iso;
    element.textContent = text;
    return element;
  }

  function make(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  }

  // -- the API ------------------------------------------------------------------

  async function ask(path, params) {
    const url = new URL(path, window.location.href);
    for (const [name, value] of Object.entries(params)) if (value) url.searchParams.set(name, value);
    const response = await fetch(url, { cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: said below
    }
    if (!response.ok) {
      const message = body && body.error && body.error.message;
      throw new Error(message || `The server answered ${response.status}.`);
    }
    return body;
  }

  // -- the last hour ------------------------------------------------------------

  function scheduleRefresh(delay) {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(refreshLastHour, delay);
  }

  async function refreshLastHour() {
    scheduleRefresh(REFRESH_MS);
    const agentId = state.agentId;
    if (!agentId) return;
    // 59 minutes back: with the minute now running, sixty bars.
    const since = new Date(Date.now() - (HOUR_SECONDS - 60) * 1000).toISOString();
    let summary;
    try {
      summary = await ask("/verifications/summary", { agent_id: agentId, since });
    } catch (error) {
      ui.lastHour.dataset.state = "failed";
      ui.state.textContent = `Could not load: ${error.message}`;
      return;
    }
    if (agentId !== state.agentId) return;
    ui.lastHour.dataset.state = "loaded";
    ui.state.textContent = `Updated ${clock(new Date())}`;
    state.lastHour = summary;
    drawChart(summary);
    showFigures(summary);
  }

  function niceCeiling(value) {
    if (value <= 1) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function svg(tag, attributes, text) {
    const element = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function barTitle(bucket) {
    const start = new Date(bucket.start);
    if (!bucket.sent) return `${hhmm(start)}: nothing sent`;
    const parts = OUTCOMES.filter(([key]) => bucket[key]).map(([key, words]) => `${bucket[key]} ${words}`);
    return `${hhmm(start)}: ${bucket.sent} sent (${parts.join(", ")})`;
  }

  function drawChart(summary) {
    const chart = ui.chart;
    const width = Math.max(240, Math.round(chart.getBoundingClientRect().width) || 600);
    const height = 170;
    const margin = { top: 10, right: 6, bottom: 22, left: 30 };
    const buckets = summary.timeline || [];
    const most = niceCeiling(Math.max(0, ...buckets.map((bucket) => bucket.sent)));
    const plotWidth = width - margin.left - margin.right;
    const plotHeight = height - margin.top - margin.bottom;
    const step = buckets.length ? plotWidth / buckets.length : plotWidth;
    const y = (count) => margin.top + plotHeight - (count / most) * plotHeight;
    chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
    chart.setAttribute("width", String(width));
    chart.setAttribute("height", String(height));
    const parts = [];
    for (const count of [0, most / 2, most]) {
      if (count !== Math.round(count) && count !== 0) continue; // no half codes on the axis
      parts.push(svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(count), y2: y(count) }));
      parts.push(svg("text", { class: "axis", x: margin.left - 6, y: y(count) + 4, "text-anchor": "end" }, count));
    }
    buckets.forEach((bucket, index) => {
      const x = margin.left + index * step;
      const group = svg("g", { class: "bar", "data-start": bucket.start, "data-sent": bucket.sent });
      group.append(svg("title", {}, barTitle(bucket)));
      // The whole column answers hovers, even where nothing was sent.
      group.append(svg("rect", { class: "hover", x, y: margin.top, width: step, height: plotHeight }));
      let below = 0;
      for (const [key] of OUTCOMES) {
        const count = bucket[key] || 0;
        if (!count) continue;
        const top = y(below + count);
        const segment = svg("rect", {
          class: "segment",
          "data-outcome": key,
          x: x + Math.min(1, step * 0.15),
          y: top,
          width: Math.max(1, step - Math.min(2, step * 0.3)),
          height: Math.max(1, y(below) - top),
        });
        group.append(segment);
        below += count;
      }
      parts.push(group);
      const start = new Date(bucket.start);
      if (start.getMinutes() % 10 === 0) {
        parts.push(svg("text", { class: "axis", x: x + step / 2, y: height - 6, "text-anchor": "middle" }, hhmm(start)));
      }
    });
    chart.replaceChildren(...parts);
    chart.dataset.most = String(most);
  }

  function showFigures(summary) {
    ui.sent.textContent = String(summary.sent);
    ui.conversion.textContent = percent(summary.conversion);
    ui.approved.textContent = summary.sent ? `${summary.statuses.approved} of ${summary.sent} codes sent` : "nothing sent";
    const times = summary.time_to_verify;
    ui.median.textContent = times.median_seconds === null ? "–" : `≤ ${seconds(times.median_seconds)}`;
    ui.p95.textContent = times.p95_seconds === null ? "median" : `median; 95% ≤ ${seconds(times.p95_seconds)}`;
    const shown = summary.by_country.slice(0, 4);
    ui.countries.replaceChildren(
      ...shown.map((share) => {
        const item = make("li", "bar-row");
        item.dataset.country = share.country || "";
        const label = make("span", "bar-label", share.country || "?");
        const track = make("span", "bar-track");
        const fill = make("span", "bar-fill");
        fill.style.width = `${Math.round((share.conversion || 0) * 100)}%`;
        track.append(fill);
        const figure = make("span", "bar-figure", `${percent(share.conversion)} of ${share.sent}`);
        item.title = `${share.country || "Unknown country"}: ${share.approved} verified of ${share.sent} sent`;
        item.append(label, track, figure);
        return item;
      }),
    );
    if (!shown.length) ui.countries.append(make("li", "bar-none", "nothing sent"));
  }

  // -- the history --------------------------------------------------------------

  function readFilters() {
    const data = new FormData(ui.form);
    const filters = {};
    for (const name of ["status", "origin", "channel"]) filters[name] = String(data.get(name) || "");
    filters.country = String(data.get("country") || "").trim().toUpperCase();
    for (const name of ["since", "until"]) {
      const value = String(data.get(name) || "");
      // datetime-local is the viewer's local time; the API takes a zone (Z).
      const when = value ? new Date(value) : null;
      filters[name] = when && !Number.isNaN(when.getTime()) ? when.toISOString() : "";
    }
    return filters;
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }

  async function loadPage(page) {
    const agentId = state.agentId;
    if (!agentId) return;
    const asked = ++state.asked;
    const cursor = state.cursors[page];
    ui.newer.disabled = ui.older.disabled = true;
    let answer;
    try {
      answer = await ask("/verifications", { ...state.filters, agent_id: agentId, limit: PAGE_SIZE, cursor });
    } catch (error) {
      if (asked !== state.asked) return;
      showError(error.message);
      ui.newer.disabled = state.page === 0;
      return;
    }
    if (asked !== state.asked) return; // a newer question was asked meanwhile
    showError("");
    state.page = page;
    state.cursors[page + 1] = answer.next;
    state.cursors.length = page + 2;
    renderRows(answer.verifications);
    ui.page.textContent = `Page ${page + 1}`;
    ui.newer.disabled = page === 0;
    ui.older.disabled = !answer.next;
    ui.empty.hidden = answer.verifications.length > 0 || Boolean(answer.next);
  }

  async function showTotals() {
    const agentId = state.agentId;
    const filters = { ...state.filters };
    try {
      const summary = await ask("/verifications/summary", { ...filters, agent_id: agentId });
      if (agentId !== state.agentId || JSON.stringify(filters) !== JSON.stringify(state.filters)) return;
      const median = summary.time_to_verify.median_seconds;
      ui.totals.textContent =
        `${summary.sent} sent, ${percent(summary.conversion)} verified` +
        (median === null ? "" : `, median ≤ ${seconds(median)}`) +
        `, ${windowText(summary)}`;
    } catch {
      ui.totals.textContent = "";
    }
  }

  function statusCell(entry) {
    const td = make("td", "status");
    const badge = make("span", "badge", STATUS_WORDS.get(entry.status) || entry.status);
    badge.dataset.status = entry.status;
    td.append(badge);
    return td;
  }

  function numberCell(entry) {
    const td = make("td", "number");
    td.append(make("span", "to", entry.to));
    const where = [entry.country, CHANNELS.get(entry.channel) || entry.channel].filter(Boolean).join(" · ");
    td.append(make("span", "channel", where));
    return td;
  }

  function originCell(entry) {
    const td = make("td", "origin");
    const tag = make("span", "tag", ORIGINS.get(entry.origin) || entry.origin);
    tag.dataset.origin = entry.origin;
    td.append(tag);
    return td;
  }

  function endedCell(entry) {
    const td = make("td", "ended");
    if (!entry.ended_at) {
      td.textContent = "–";
      td.classList.add("none");
      return td;
    }
    const ended = new Date(entry.ended_at);
    const took = Math.max(0, Math.round((ended - new Date(entry.created_at)) / 1000));
    const words = entry.status === "approved" ? `verified in ${seconds(took)}` : `after ${seconds(took)}`;
    td.append(timeElement(entry.ended_at, words));
    return td;
  }

  function idsCell(entry) {
    const td = make("td", "ids");
    const ids = make("div", "id-grid");
    for (const [label, value, className] of [
      ["Call", entry.call_id, "call"],
      ["Verification", entry.id, "verification"],
    ]) {
      if (!value) continue;
      ids.append(make("span", "id-label", label), make("code", className, value));
    }
    td.append(ids);
    return td;
  }

  function renderRows(entries) {
    ui.rows.replaceChildren(
      ...entries.map((entry) => {
        const tr = document.createElement("tr");
        tr.dataset.historyId = entry.id; // not data-verification-id: that names a row of the live table
        tr.dataset.status = entry.status;
        const sent = make("td", "sent");
        sent.append(timeElement(entry.created_at, dateTime(new Date(entry.created_at))));
        const attempts = make("td", "num attempts", `${entry.attempts} of ${entry.attempts + entry.attempts_left}`);
        tr.append(sent, statusCell(entry), numberCell(entry), originCell(entry), attempts, endedCell(entry), idsCell(entry));
        return tr;
      }),
    );
  }

  function showHistory() {
    state.filters = readFilters();
    state.cursors = [null];
    loadPage(0);
    showTotals();
  }

  // -- wiring -------------------------------------------------------------------

  function watch(agentId) {
    if (!AGENT_ID.test(agentId) || agentId === state.agentId) return;
    state.agentId = agentId;
    state.lastHour = null;
    ui.chart.replaceChildren();
    refreshLastHour();
    showHistory();
  }

  document.addEventListener("dashboard:agent", (event) => watch(event.detail.agentId));
  document.addEventListener("dashboard:event", () => {
    clearTimeout(state.settleTimer);
    state.settleTimer = setTimeout(refreshLastHour, SETTLE_MS);
  });
  ui.form.addEventListener("submit", (submit) => {
    submit.preventDefault();
    if (ui.form.reportValidity()) showHistory();
  });
  ui.form.addEventListener("reset", () => setTimeout(showHistory, 0)); // after the fields are cleared
  ui.newer.addEventListener("click", () => loadPage(Math.max(0, state.page - 1)));
  ui.older.addEventListener("click", () => {
    if (state.cursors[state.page + 1]) loadPage(state.page + 1);
  });
  if (window.ResizeObserver) {
    let width = 0;
    new ResizeObserver(([entry]) => {
      const now = Math.round(entry.contentRect.width);
      if (now !== width && state.lastHour) drawChart(state.lastHour);
      width = now;
    }).observe(ui.chart.parentElement);
  }
  document.addEventListener("DOMContentLoaded", () => {
    // dashboard.js may have started watching before this listened.
    const input = document.getElementById("agent-id");
    if (input && input.value) watch(input.value);
  });
})();
