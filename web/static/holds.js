// The pumping guard's panel: the prefixes it holds now. Pictures first (how few of the codes
// sent there were entered, how much of the hold is left, as bars), the numbers beside them.
//
// Read from /dashboard/holds when the page opens, every 30 s, and at once when an
// mfa.fraud_suspected event arrives on the live connection (dashboard.js hands every event
// on as an "mfa:event"). Holds are the deployment's, not one agent's: the panel shows all.
// Every value is written with textContent, never as HTML.
"use strict";

(() => {
  const REFRESH_MS = 30000;
  const TICK_MS = 10000; // the time left, redrawn between refreshes
  const PREFIX = /^\+[1-9][0-9]{0,7}$/;
  const REGION = /^[A-Z]{2}$/;

  const $ = (id) => document.getElementById(id);
  const ui = { panel: $("holds"), list: $("holds-list"), stale: $("holds-stale") };
  if (!ui.panel || !ui.list) return;

  const state = { holds: [], refreshing: null };

  let regionNames = null;
  try {
    regionNames = new Intl.DisplayNames(["en"], { type: "region" });
  } catch {
    // an old browser: the ISO code alone
  }

  const pad = (number) => String(number).padStart(2, "0");
  const clock = (when) => `${pad(when.getHours())}:${pad(when.getMinutes())}`;

  function countryName(region) {
    try {
      return (regionNames && regionNames.of(region)) || region;
    } catch {
      return region;
    }
  }

  function minutesLeft(until, now) {
    const minutes = Math.ceil((until - now) / 60000);
    if (minutes >= 60) return "1 h left";
    return minutes <= 1 ? "less than a minute left" : `${minutes} min left`;
  }

  // A hold as the server sent it, or null if any field is not what the API documents.
  function valid(hold) {
    if (!hold || typeof hold !== "object") return null;
    const since = new Date(hold.since);
    const until = new Date(hold.until);
    const counts = [hold.sends, hold.approved].every((value) => Number.isInteger(value) && value >= 0);
    if (!PREFIX.test(hold.prefix) || !REGION.test(hold.country) || !counts) return null;
    if (Number.isNaN(since.getTime()) || Number.isNaN(until.getTime()) || until <= since) return null;
    return { prefix: hold.prefix, country: hold.country, since, until, sends: hold.sends, approved: hold.approved };
  }

  function element(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined) made.textContent = text;
    return made;
  }

  // A bar (role img, so it is read as its label) filled to `share` (0..1), with words beside it.
  function bar(kind, share, label, words) {
    const row = element("div", `hold-row ${kind}`);
    const track = element("div", "hold-bar");
    track.setAttribute("role", "img");
    track.setAttribute("aria-label", label);
    const fill = element("span", "fill");
    fill.style.width = `${Math.round(Math.min(1, Math.max(0, share)) * 100)}%`;
    track.append(fill);
    row.append(track, element("span", "words", words));
    return row;
  }

  function card(hold, now) {
    const item = element("li", "hold");
    item.dataset.prefix = hold.prefix;
    const name = countryName(hold.country);
    // The country's ISO code as a badge: flags as emoji are boxes or letters on many systems.
    const mark = element("abbr", "region", hold.country);
    mark.title = name;
    const title = element("div", "hold-title");
    title.append(element("span", "prefix", hold.prefix), element("span", "country", name));

    const entered = hold.sends ? hold.approved / hold.sends : 0;
    const codes = `${hold.approved} of ${hold.sends} codes entered`;
    const total = hold.until - hold.since;
    const left = Math.max(0, hold.until - now);
    const ends = `until ${clock(hold.until)}, ${minutesLeft(hold.until, now)}`;
    item.append(
      mark,
      title,
      bar("entered", entered, codes, codes),
      bar("left", total ? left / total : 0, `Held ${ends}`, `Held ${ends}`),
    );
    item.title = `Held since ${hold.since.toISOString()} until ${hold.until.toISOString()}`;
    return item;
  }

  function render() {
    const now = new Date();
    state.holds = state.holds.filter((hold) => hold.until > now);
    ui.list.replaceChildren(...state.holds.map((hold) => card(hold, now)));
    ui.panel.hidden = state.holds.length === 0;
  }

  async function refresh() {
    if (state.refreshing) return state.refreshing;
    state.refreshing = (async () => {
      try {
        const response = await fetch("/dashboard/holds", { cache: "no-store" });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const answer = await response.json();
        const holds = Array.isArray(answer.holds) ? answer.holds.map(valid).filter(Boolean) : [];
        state.holds = holds.sort((one, other) => other.since - one.since);
        if (ui.stale) ui.stale.hidden = true;
      } catch {
        // Gone for a moment (the live connection says so too): keep what is shown.
        if (ui.stale) ui.stale.hidden = state.holds.length === 0;
      } finally {
        state.refreshing = null;
      }
      render();
    })();
    return state.refreshing;
  }

  document.addEventListener("mfa:event", (event) => {
    if (event.detail && event.detail.type === "mfa.fraud_suspected") refresh();
  });
  setInterval(refresh, REFRESH_MS);
  setInterval(render, TICK_MS);
  refresh();
})();
