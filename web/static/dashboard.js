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
  const LABEL = {
    sent: "Sent",
    rejected: "Rejected",
    verified: "Verified",
    expired: "Expired",
    locked: "Locked",
    canceled: "Canceled",
    send_failed: "Send failed",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("agent-form"),
    input: $("agent-id"),
    connection: $("connection"),
    connectionText: $("connection-text"),
    banner: $("banner"),
    rows: $("rows"),
    empty: $("empty"),
    captionAgent: $("caption-agent"),
  };

  const state = {
    agentId: "",
    socket: null,
    retries: 0,
    retryTimer: null,
    countdown: null,
    lostAt: null,
    rows: new Map(), // row key -> {element, status, attemptsLeft, first, last}
    seen: new Set(), // event ids already applied
  };

  // -- rendering ------------------------------------------------------------

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function timeText(iso) {
    const when = new Date(iso);
    return Number.isNaN(when.getTime()) ? String(iso || "") : when.toLocaleTimeString();
  }

  function statusText(row) {
    if (row.status === "rejected" && row.attemptsLeft !== null) {
      return `Rejected (${row.attemptsLeft} left)`;
    }
    return LABEL[row.status] || row.status;
  }

  function render(row) {
    const tr = row.element;
    tr.dataset.status = row.status;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = row.status;
    badge.textContent = statusText(row);
    const status = cell("", "status");
    status.append(badge);
    const first = cell(timeText(row.first));
    first.title = row.first;
    const last = cell(timeText(row.last));
    last.title = row.last;
    tr.replaceChildren(
      status,
      cell(row.to || "–", "mono to"),
      cell(row.channel || "–", "channel"),
      cell(row.attemptsLeft === null ? "–" : String(row.attemptsLeft), "num attempts"),
      first,
      last,
      cell(row.reason || "", "muted reason"),
      cell(row.callId ? row.callId.slice(0, 8) : "–", "mono muted call"),
      cell(row.verificationId ? row.verificationId.slice(0, 8) : "–", "mono muted verification"),
    );
    if (row.callId) tr.cells[7].title = row.callId;
    if (row.verificationId) tr.cells[8].title = row.verificationId;
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

  // -- events ---------------------------------------------------------------

  function apply(event) {
    const status = STATUS_OF[event.type];
    if (!status || event.agent_id !== state.agentId || state.seen.has(event.id)) return;
    state.seen.add(event.id);
    if (state.seen.size > MAX_SEEN) state.seen.delete(state.seen.values().next().value);
    // A failed send has no verification: it gets a row of its own.
    const key = event.verification_id ? `v:${event.verification_id}` : `e:${event.id}`;
    let row = state.rows.get(key);
    if (!row) {
      const element = document.createElement("tr");
      if (event.verification_id) element.dataset.verificationId = event.verification_id;
      else element.dataset.eventId = event.id;
      row = { element, status, first: event.at, last: "", attemptsLeft: null };
      state.rows.set(key, row);
      ui.rows.prepend(element);
      if (state.rows.size > MAX_ROWS) {
        const [oldestKey, oldest] = state.rows.entries().next().value;
        oldest.element.remove();
        state.rows.delete(oldestKey);
      }
    } else if (event.at < row.last) {
      return; // older than what the row shows (caught up after a reconnect)
    }
    row.status = status;
    row.last = event.at;
    if (event.at < row.first) row.first = event.at;
    row.verificationId = event.verification_id || "";
    row.callId = event.call_id || row.callId || "";
    row.to = event.to || row.to || "";
    row.channel = event.channel || row.channel || "";
    row.reason = event.reason || "";
    if (event.attempts_left !== null && event.attempts_left !== undefined) row.attemptsLeft = event.attempts_left;
    render(row);
    renderCounts();
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
        showConnection("live", wasLost ? `Live (reconnected at ${new Date().toLocaleTimeString()})` : "Live");
        showBanner("");
      } else if (data.type === "error") {
        showBanner(`The server refused a request: ${data.message || data.error}`);
      } else {
        apply(data);
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
      `Live updates stopped at ${state.lostAt.toLocaleTimeString()}. What is shown may be out of date until the ` +
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

  const requested = new URL(window.location.href).searchParams.get("agent_id") || "";
  const configured = document.querySelector('meta[name="default-agent-id"]')?.content || "mfa";
  renderCounts();
  watch(AGENT_ID.test(requested) ? requested : configured);
})();
