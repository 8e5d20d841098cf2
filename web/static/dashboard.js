// The live dashboard: one agent's verifications, kept up to date over /websocket.
//
// Every value shown comes from an event and is written with textContent, never
// as HTML. The page reconnects by itself (with backoff) and, on each
// (re)connection, asks for the agent's recent events so nothing missed while
// it was away stays missing; events already shown are recognised by id.
"use strict";

(() => {
  const AGENT_ID = /^[A-Za-z0-9_.:-]{1,64}$/;
  const RETRY_FIRST_MS = 500;
  const RETRY_LONGEST_MS = 15000;
  const MAX_ROWS = 500; // the oldest rows go beyond this, so a page left open for days stays fast
  const MAX_SEEN = 5000; // event ids remembered to skip replayed duplicates (replay is 100 at most)

  // Event type -> the status a verification has after it.
  const STATUS_OF = {
    "mfa.sent": "sent",
    "mfa.rejected": "rejected",
    "mfa.verified": "verified",
    "mfa.expired": "expired",
    "mfa.locked": "locked",
    "mfa.canceled": "canceled",
    "mfa.send_failed": "send_failed",
  };
  // A text's delivery as the carrier reported it (mfa.delivered / mfa.undelivered, whose
  // reason is "undelivered" or "failed"): shown beside the channel, the status unchanged.
  const DELIVERY = new Map([
    ["delivered", "Text delivered"],
    ["undelivered", "Text not delivered"],
    ["failed", "Text not sent"],
  ]);
  // The verification's status on a delivery event, for a row the page has not seen yet.
  const STATUS_FROM_VERIFICATION = {
    pending: "sent",
    approved: "verified",
    expired: "expired",
    max_attempts_reached: "locked",
    canceled: "canceled",
  };
  const LABEL = {
    sent: "Sent",
    rejected: "Rejected",
    verified: "Verified",
    expired: "Expired",
    locked: "Locked",
    canceled: "Canceled",
    send_failed: "Send failed",
  };
  // Which interface started the verification (the event's `origin`).
  const ORIGINS = new Map([
    ["call", "Call"],
    ["api", "API"],
    ["workflow", "Walkthrough"],
  ]);
  // An event's `reason` code, in words. A Map, so a code such as "constructor" finds nothing.
  const REASONS = new Map([
    // The number, checked before anything is sent.
    ["invalid", "Not a valid number"],
    ["region_not_allowed", "Number's country is not allowed"],
    ["premium_rate", "Premium-rate number"],
    ["shared_cost", "Shared-cost number"],
    ["non_geographic", "Satellite or international service number"],
    ["not_a_phone", "Not a mobile or landline number"],
    // A limit refused the send.
    ["call_locked", "This call is locked after too many wrong codes"],
    ["sends_per_call", "This call asked for too many codes"],
    ["sends_per_number_per_hour", "Too many codes sent to this number in the last hour"],
    ["sends_per_agent_per_minute", "This agent is sending too many codes right now"],
    ["sends_per_minute", "The service is sending too many codes right now"],
    ["failures_per_number_per_day", "Too many wrong codes for this number today"],
    // The SMS pumping guard refused the send.
    ["fraud_suspected", "Number's range is held: too few codes entered there"],
    ["new_country_budget", "Country new here: its codes for this hour are used up"],
    ["fraud_blocked", "Number's range or country is blocked (MFA_FRAUD_BLOCK)"],
    // SignalWire could not send it.
    ["server_error", "SignalWire had a server error"],
    ["rate_limited", "SignalWire is rate limiting requests"],
    ["bad_response", "SignalWire gave an unexpected answer"],
    ["connection", "Could not connect to SignalWire"],
    ["timeout", "SignalWire did not answer in time"],
    ["unauthorized", "SignalWire refused the project ID or API token"],
    ["refused", "SignalWire refused the request (token scope or space)"],
    ["circuit_open", "Paused: SignalWire kept failing"],
    // Why a code was locked (mfa.locked) or expired (mfa.expired).
    ["max_attempts", "Too many wrong codes for this code"],
    ["call_failures", "Too many wrong codes on this call"],
    ["number_failures", "Too many wrong codes for this number today"],
    ["provider", "SignalWire no longer had the code"],
    // A new code by a call, after the text was not delivered (or not confirmed in 30 s).
    ["fallback", "The text did not arrive in time: a new code went by a call"],
  ]);
  // `invalid` on a failed send that names a number: the number passed our checks and
  // SignalWire refused it (a refused destination never gets as far as a masked number).
  const PROVIDER_INVALID = "SignalWire refused the number or request as invalid";
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("agent-form"),
    input: $("agent-id"),
    connection: $("connection"),
    connectionText: $("connection-text"),
    banner: $("banner"),
    rows: $("rows"),
    empty: $("empty"),
    emptyText: $("empty-text"),
    emptyHelp: $("empty-help"),
    knownAgents: $("known-agents"),
    captionAgent: $("caption-agent"),
    timeZone: $("time-zone"),
  };

  const state = {
    agentId: "",
    socket: null,
    retries: 0,
    retryTimer: null,
    countdown: null,
    lostAt: null,
    rows: new Map(), // row key -> {element, status, attemptsLeft, first, last, ...}
    seen: new Set(), // event ids already applied
  };

  // -- formatting -----------------------------------------------------------

  const pad = (number) => String(number).padStart(2, "0");

  function clock(when) {
    return `${pad(when.getHours())}:${pad(when.getMinutes())}:${pad(when.getSeconds())}`;
  }

  // "26 Nov 14:05:12" in local time, with the year when it is not this year: a day
  // and month in words read the same in every locale, and 24-hour time needs no am/pm.
  function dateTime(when) {
    const year = when.getFullYear() === new Date().getFullYear() ? "" : ` ${when.getFullYear()}`;
    return `${when.getDate()} ${MONTHS[when.getMonth()]}${year} ${clock(when)}`;
  }

  function sameDay(one, other) {
    return one.toDateString() === other.toDateString();
  }

  function zoneText() {
    const minutes = -new Date().getTimezoneOffset();
    const sign = minutes < 0 ? "-" : "+";
    const offset = `UTC${sign}${pad(Math.floor(Math.abs(minutes) / 60))}:${pad(Math.abs(minutes) % 60)}`;
    const name = Intl.DateTimeFormat().resolvedOptions().timeZone;
    return name && name !== "UTC" ? `Times are local: ${name} (${offset}).` : `Times are local (${offset}).`;
  }

  // A <time> showing an event's `at`, the exact ISO value in its datetime and title.
  function timeElement(iso, text) {
    const element = document.createElement("time");
    element.dateTime = iso;
    element.title = iso;
    element.textContent = text;
    return element;
  }

  function reasonText(row) {
    if (row.reason === "invalid" && row.status === "send_failed" && row.to) return PROVIDER_INVALID;
    return REASONS.get(row.reason);
  }

  // -- rendering ------------------------------------------------------------

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function statusText(row) {
    if (row.status === "rejected" && row.attemptsLeft !== null) {
      return `Rejected (${row.attemptsLeft} left)`;
    }
    return LABEL[row.status] || row.status;
  }

  function statusCell(row) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = row.status;
    badge.textContent = statusText(row);
    const td = cell("", "status");
    td.append(badge);
    return td;
  }

  function originCell(row) {
    const td = cell("", "origin");
    if (!row.origin) {
      td.textContent = "–";
      return td;
    }
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.dataset.origin = row.origin;
    tag.textContent = ORIGINS.get(row.origin) || row.origin;
    td.dataset.origin = row.origin;
    td.append(tag);
    return td;
  }

  function whenCell(row) {
    const td = cell("", "when");
    const last = new Date(row.last);
    if (Number.isNaN(last.getTime())) {
      td.textContent = String(row.last || "");
      return td;
    }
    const latest = timeElement(row.last, dateTime(last));
    latest.className = "last";
    td.append(latest);
    const first = new Date(row.first);
    if (row.first !== row.last && !Number.isNaN(first.getTime())) {
      const since = document.createElement("span");
      since.className = "first";
      since.append("first seen ", timeElement(row.first, sameDay(first, last) ? clock(first) : dateTime(first)));
      td.append(since);
    }
    return td;
  }

  function reasonCell(row) {
    const td = cell("", "reason");
    if (!row.reason) return td;
    td.dataset.reason = row.reason;
    const words = reasonText(row);
    if (words) {
      td.textContent = words;
      td.title = `Reason code: ${row.reason}`;
    } else {
      // A code this page does not know (a newer server, say): shown as it came, as text.
      td.textContent = row.reason;
      td.classList.add("unknown");
      td.title = "A reason code this page has no words for";
    }
    return td;
  }

  // Whole ids, each after its label (laid out as a two-column grid).
  function idsCell(row) {
    const td = cell("", "ids");
    const ids = document.createElement("div");
    ids.className = "id-grid";
    for (const [label, value, className] of [
      ["Call", row.callId, "call"],
      ["Verification", row.verificationId, "verification"],
    ]) {
      if (!value) continue;
      const name = document.createElement("span");
      name.className = "id-label";
      name.textContent = label;
      const code = document.createElement("code");
      code.className = className;
      code.textContent = value;
      ids.append(name, code);
    }
    if (ids.childElementCount) td.append(ids);
    else {
      td.textContent = "–";
      td.classList.add("none");
    }
    return td;
  }

  // The masked number, and the channel the code went by beneath it.
  function numberCell(row) {
    const td = cell("", "number");
    const to = document.createElement("span");
    to.className = row.to ? "to" : "to none";
    to.textContent = row.to || "–";
    const channel = document.createElement("span");
    channel.className = "channel";
    channel.textContent = row.channel || "–";
    td.append(to, channel);
    if (row.delivery) {
      const delivery = document.createElement("span");
      delivery.className = "delivery";
      delivery.dataset.delivery = row.delivery;
      const words = DELIVERY.get(row.delivery) || row.delivery;
      delivery.textContent = row.deliveryError ? `${words} (carrier error ${row.deliveryError})` : words;
      td.append(delivery);
    }
    return td;
  }

  function render(row) {
    const tr = row.element;
    tr.dataset.status = row.status;
    const attempts = cell(row.attemptsLeft === null ? "–" : String(row.attemptsLeft), "num attempts");
    attempts.classList.toggle("none", row.attemptsLeft === null);
    tr.replaceChildren(
      statusCell(row),
      numberCell(row),
      originCell(row),
      attempts,
      whenCell(row),
      reasonCell(row),
      idsCell(row),
    );
    tr.classList.remove("changed");
    void tr.offsetWidth; // restart the highlight animation
    tr.classList.add("changed");
  }

  function renderCounts() {
    const counts = Object.fromEntries(Object.keys(LABEL).map((status) => [status, 0]));
    for (const row of state.rows.values()) counts[row.status] = (counts[row.status] || 0) + 1;
    for (const [status, count] of Object.entries(counts)) {
      const element = $(`count-${status}`);
      if (element) element.textContent = String(count);
    }
    ui.empty.hidden = state.rows.size > 0;
  }

  function clearRows() {
    state.rows.clear();
    state.seen.clear();
    ui.rows.replaceChildren();
    renderCounts();
  }

  // -- the empty page: say whose events are awaited, and which agents have some ------

  function showEmpty(hint, agentIds) {
    const unknown = hint === "unknown-agent";
    ui.empty.dataset.hint = hint;
    ui.emptyText.replaceChildren();
    if (unknown) {
      const name = document.createElement("strong");
      name.textContent = `“${state.agentId}”`;
      ui.emptyText.append("No events for agent ", name, " yet. Its verifications appear here as they happen.");
    } else {
      ui.emptyText.textContent = "No verifications seen yet for this agent. They appear here as they happen.";
    }
    ui.emptyHelp.hidden = !unknown;
    ui.knownAgents.replaceChildren();
    ui.knownAgents.hidden = !unknown;
    if (!unknown) return;
    const others = agentIds.filter((id) => id !== state.agentId);
    if (!others.length) {
      ui.knownAgents.textContent = "No agent has had events on this server since it started.";
      return;
    }
    ui.knownAgents.append("Agents with recent events: ");
    for (const agentId of others) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "agent-choice";
      button.dataset.agentId = agentId;
      button.textContent = agentId;
      ui.knownAgents.append(button, " ");
    }
  }

  // Called once subscribed. The server names the agents whose recent events it keeps
  // (what a replay starts from): if the watched one is not among them, it has none.
  async function checkAgent(agentId) {
    let agentIds;
    try {
      const response = await fetch("/dashboard/agents", { cache: "no-store" });
      if (!response.ok) return;
      const answer = await response.json();
      agentIds = Array.isArray(answer.agent_ids) ? answer.agent_ids.filter((id) => AGENT_ID.test(id)) : [];
    } catch {
      return; // an older server, or gone again: the plain empty text stays
    }
    if (agentId !== state.agentId) return; // watching another agent by now
    showEmpty(agentIds.includes(agentId) ? "waiting" : "unknown-agent", agentIds);
  }

  // -- events ---------------------------------------------------------------

  // mfa.delivered / mfa.undelivered: the text's delivery on its verification's row.
  function applyDelivery(event) {
    const key = `v:${event.verification_id}`;
    let row = state.rows.get(key);
    if (!row) {
      const status = STATUS_FROM_VERIFICATION[event.status] || "sent";
      row = addRow(key, event, status);
      row.last = event.at;
      row.statusSeen = false; // the status events it missed may still come, older than this one
      row.verificationId = event.verification_id;
      row.callId = event.call_id || "";
      row.to = event.to || "";
      row.channel = event.channel || "";
      row.origin = event.origin || "";
      row.reason = "";
    }
    row.delivery = event.type === "mfa.delivered" ? "delivered" : event.reason || "undelivered";
    row.deliveryError = typeof event.error_code === "string" ? event.error_code : "";
    render(row);
    renderCounts();
  }

  function addRow(key, event, status) {
    const element = document.createElement("tr");
    if (event.verification_id) element.dataset.verificationId = event.verification_id;
    else element.dataset.eventId = event.id;
    const row = { element, status, first: event.at, last: "", attemptsLeft: null };
    state.rows.set(key, row);
    ui.rows.prepend(element);
    if (state.rows.size > MAX_ROWS) {
      const [oldestKey, oldest] = state.rows.entries().next().value;
      oldest.element.remove();
      state.rows.delete(oldestKey);
    }
    return row;
  }

  function apply(event) {
    const status = STATUS_OF[event.type];
    const delivery = (event.type === "mfa.delivered" || event.type === "mfa.undelivered") && event.verification_id;
    if ((!status && !delivery) || event.agent_id !== state.agentId || state.seen.has(event.id)) return;
    state.seen.add(event.id);
    if (state.seen.size > MAX_SEEN) state.seen.delete(state.seen.values().next().value);
    if (delivery) {
      applyDelivery(event);
      return;
    }
    // A failed send has no verification: it gets a row of its own.
    const key = event.verification_id ? `v:${event.verification_id}` : `e:${event.id}`;
    let row = state.rows.get(key);
    if (!row) {
      row = addRow(key, event, status);
    } else if (event.at < row.last && row.statusSeen !== false) {
      return; // older than what the row shows (caught up after a reconnect)
    }
    row.statusSeen = true;
    row.status = status;
    row.last = event.at;
    if (event.at < row.first) row.first = event.at;
    row.verificationId = event.verification_id || "";
    row.callId = event.call_id || row.callId || "";
    row.to = event.to || row.to || "";
    row.channel = event.channel || row.channel || "";
    row.origin = event.origin || row.origin || "";
    row.reason = event.reason || "";
    if (event.attempts_left !== null && event.attempts_left !== undefined) row.attemptsLeft = event.attempts_left;
    render(row);
    renderCounts();
    // For history.js: the last hour's chart catches up when something happens.
    document.dispatchEvent(new CustomEvent("dashboard:event", { detail: { type: event.type } }));
  }

  // -- connection -----------------------------------------------------------

  function showConnection(mode, text) {
    ui.connection.dataset.state = mode;
    ui.connectionText.textContent = text;
    document.body.classList.toggle("stale", mode === "reconnecting");
  }

  function showBanner(text) {
    ui.banner.textContent = text;
    ui.banner.hidden = !text;
  }

  function send(message) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
  }

  function connect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdown);
    state.retryTimer = null;
    const url = new URL("/websocket", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    showConnection(state.retries ? "reconnecting" : "connecting", state.retries ? "Reconnecting…" : "Connecting…");
    const socket = new WebSocket(url);
    state.socket = socket;
    socket.addEventListener("open", () => {
      send({ type: "subscribe", agent_id: state.agentId, replay: true });
    });
    socket.addEventListener("message", (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      if (data.type === "subscribed" && data.agent_id === state.agentId) {
        const wasLost = state.lostAt;
        state.retries = 0;
        state.lostAt = null;
        showConnection("live", wasLost ? `Live (reconnected at ${clock(new Date())})` : "Live");
        showBanner("");
        checkAgent(data.agent_id);
      } else if (data.type === "error") {
        showBanner(`The server refused a request: ${data.message || data.error}`);
      } else {
        apply(data);
        // For the other panels (holds.js): every event as it arrives.
        document.dispatchEvent(new CustomEvent("mfa:event", { detail: data }));
      }
    });
    socket.addEventListener("close", () => {
      if (state.socket !== socket) return; // replaced on purpose
      state.socket = null;
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (!state.lostAt) state.lostAt = new Date();
    state.retries += 1;
    const step = Math.min(RETRY_LONGEST_MS, RETRY_FIRST_MS * 2 ** (state.retries - 1));
    const delay = Math.round(step * (0.5 + Math.random() / 2));
    const retryAt = Date.now() + delay;
    const attempt = state.retries;
    const countdown = () => {
      const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      showConnection("reconnecting", `Disconnected, retrying in ${seconds} s (attempt ${attempt})`);
    };
    countdown();
    clearInterval(state.countdown);
    state.countdown = setInterval(countdown, 1000);
    showBanner(
      `Live updates stopped at ${dateTime(state.lostAt)}. What is shown may be out of date until the ` +
        "connection comes back.",
    );
    state.retryTimer = setTimeout(connect, delay);
  }

  function watch(agentId) {
    if (agentId === state.agentId && state.socket) return;
    const previous = state.agentId;
    state.agentId = agentId;
    ui.input.value = agentId;
    ui.captionAgent.textContent = agentId;
    document.title = `Phone verifications · ${agentId}`;
    const url = new URL(window.location.href);
    url.searchParams.set("agent_id", agentId);
    window.history.replaceState(null, "", url);
    clearRows();
    showEmpty("waiting", []);
    // For history.js: the chart and the history follow the agent watched.
    document.dispatchEvent(new CustomEvent("dashboard:agent", { detail: { agentId } }));
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      if (previous) send({ type: "unsubscribe", agent_id: previous });
      showConnection("connecting", "Subscribing…");
      send({ type: "subscribe", agent_id: agentId, replay: true });
    } else if (!state.socket && !state.retryTimer) {
      connect();
    } // else: connecting or waiting to retry; the next open subscribes to this agent
  }

  ui.form.addEventListener("submit", (submit) => {
    submit.preventDefault();
    const agentId = ui.input.value.trim();
    if (AGENT_ID.test(agentId)) watch(agentId);
    else ui.input.reportValidity();
  });

  ui.knownAgents.addEventListener("click", (click) => {
    const choice = click.target.closest("button[data-agent-id]");
    if (choice && AGENT_ID.test(choice.dataset.agentId)) watch(choice.dataset.agentId);
  });

  const requested = new URL(window.location.href).searchParams.get("agent_id") || "";
  const configured = document.querySelector('meta[name="default-agent-id"]')?.content || "mfa";
  ui.timeZone.textContent = zoneText();
  renderCounts();
  watch(AGENT_ID.test(requested) ? requested : configured);
})();
